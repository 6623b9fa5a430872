// Package keyring owns podkey's root keys on the HSM token: creating them
// (hsm init), finding every generation of each, rotating, and the
// operations that use them. International-suite keys are native token keys;
// SM keys that the token cannot hold exist on the token only wrapped under
// its key-encryption key and are unwrapped into locked memory.
//
// Labels:
//
//	podkey/kek                      AES-256 key-encryption key
//	podkey/audit                    HMAC-SHA256 key chaining the audit log
//	podkey/<purpose>/<suite>/g<N>   mac, derive, ca, jwt keys, generation N
//	podkey/ca/<suite>/g<N>/cert     the CA's self-signed certificate (public)
package keyring

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/pkg/suite"
)

// Purpose names what a root key is for.
type Purpose string

const (
	MAC    Purpose = "mac"    // access-key secrets
	Derive Purpose = "derive" // derivedKey masters
	CA     Purpose = "ca"     // certificate authority
	JWT    Purpose = "jwt"    // token signing
)

// Purposes lists the generational purposes in a stable order.
var Purposes = []Purpose{MAC, Derive, CA, JWT}

const (
	KEKLabel   = "podkey/kek"
	AuditLabel = "podkey/audit"
	prefix     = "podkey/"
	caValidity = 10 * 365 * 24 * time.Hour
)

// Label is the token label of a generational root key.
func Label(p Purpose, s suite.Name, gen int) string {
	return fmt.Sprintf("podkey/%s/%s/g%d", p, s, gen)
}

func certLabel(p Purpose, s suite.Name, gen int) string { return Label(p, s, gen) + "/cert" }

// parseLabel reverses Label.
func parseLabel(l string) (Purpose, suite.Name, int, bool) {
	parts := strings.Split(l, "/")
	if len(parts) != 4 || parts[0] != "podkey" || !strings.HasPrefix(parts[3], "g") {
		return "", "", 0, false
	}
	gen, err := strconv.Atoi(parts[3][1:])
	if err != nil || gen < 1 {
		return "", "", 0, false
	}
	s, err := suite.Parse(parts[2])
	if err != nil || parts[2] == "" {
		return "", "", 0, false
	}
	p := Purpose(parts[1])
	for _, q := range Purposes {
		if p == q {
			return p, s, gen, true
		}
	}
	return "", "", 0, false
}

type slot struct {
	p Purpose
	s suite.Name
}

// key is one loaded generation. Exactly one of the fields applies.
type key struct {
	label  string
	native bool           // a token key used by label
	sym    *secmem.Buffer // unwrapped symmetric key (gm mac/derive)
	signer crypto.Signer  // ca, jwt
	ca     *ca.CA
}

// ErrNoGeneration is returned for a generation that does not exist.
var ErrNoGeneration = errors.New("key generation not found")

// Keyring is the set of loaded root keys.
type Keyring struct {
	tok *hsm.Token

	mu     sync.RWMutex
	kek    int // KEK generation new values are wrapped under
	audit  int // audit key generation new batch keys come from
	keys   map[slot]map[int]*key
	images map[string]*imageKey
	// imageMisses are image key ids found missing on the token, and when;
	// imageIDs the ids the token listed at imageIDsAt.
	imageMisses map[string]time.Time
	imageIDs    map[string]bool
	imageIDsAt  time.Time
	// refreshed is when Refresh last read the token (unix ns).
	refreshed atomic.Int64
}

// Init creates whatever root keys are missing (generation 1 of each purpose
// and suite) and returns the labels it created. Existing keys are never
// touched, so Init is safe to run again.
func Init(ctx context.Context, tok *hsm.Token) ([]string, error) {
	var created []string
	add := func(label string, err error) error {
		if errors.Is(err, hsm.ErrObjectExists) {
			return nil
		}
		if err == nil {
			created = append(created, label)
		}
		return err
	}
	keks, err := kekGenerations(ctx, tok)
	if err != nil {
		return created, err
	}
	kek := 1
	if len(keks) > 0 { // possibly rotated: generation 1 is gone then
		kek = keks[len(keks)-1]
	} else if err := add(KEKLabel, tok.GenerateKEK(ctx, KEKLabel)); err != nil {
		return created, err
	}
	if err := add(AuditLabel, generateAuditKey(ctx, tok, 1)); err != nil {
		return created, err
	}
	existing, err := generations(ctx, tok)
	if err != nil {
		return created, err
	}
	for _, p := range Purposes {
		for _, s := range suite.All {
			if len(existing[slot{p, s}]) > 0 {
				continue
			}
			if err := createGeneration(ctx, tok, kek, p, s, 1); err != nil {
				return created, err
			}
			created = append(created, Label(p, s, 1))
		}
	}
	return created, nil
}

// generations lists the generations present on the token.
func generations(ctx context.Context, tok *hsm.Token) (map[slot][]int, error) {
	objs, err := tok.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return generationsIn(objs), nil
}

// generationsIn is generations among objs, a listing of the token.
func generationsIn(objs []hsm.Object) map[slot][]int {
	seen := map[slot]map[int]bool{}
	for _, o := range objs {
		if !strings.HasPrefix(o.Label, prefix) {
			continue
		}
		p, s, gen, ok := parseLabel(baseLabel(o.Label))
		if !ok || o.Class == hsm.PublicKey {
			continue
		}
		if seen[slot{p, s}] == nil {
			seen[slot{p, s}] = map[int]bool{}
		}
		seen[slot{p, s}][gen] = true
	}
	out := map[slot][]int{}
	for k, gens := range seen {
		for g := range gens {
			out[k] = append(out[k], g)
		}
		sort.Ints(out[k])
	}
	return out
}

// Open loads every generation of every root key. The token must have been
// initialised with Init.
func Open(ctx context.Context, tok *hsm.Token) (*Keyring, error) {
	ok, err := tok.Exists(ctx, hsm.SecretKey, AuditLabel)
	if err != nil {
		return nil, err
	}
	keks, kerr := kekGenerations(ctx, tok)
	if kerr != nil {
		return nil, kerr
	}
	if !ok || len(keks) == 0 {
		return nil, fmt.Errorf("keyring: root keys (audit key, key-encryption key) missing on token %q: run 'podkey hsm init'", tok.Label())
	}
	auditGen, err := auditGeneration(ctx, tok)
	if err != nil {
		return nil, err
	}
	kr := &Keyring{tok: tok, kek: keks[len(keks)-1], audit: max(auditGen, 1), keys: map[slot]map[int]*key{}, images: map[string]*imageKey{}, imageMisses: map[string]time.Time{}}
	gens, err := generations(ctx, tok)
	if err != nil {
		return nil, err
	}
	for _, p := range Purposes {
		for _, s := range suite.All {
			if len(gens[slot{p, s}]) == 0 {
				kr.Close()
				return nil, fmt.Errorf("keyring: no %s key for suite %s on token %q: run 'podkey hsm init'", p, s, tok.Label())
			}
			for _, g := range gens[slot{p, s}] {
				if err := kr.load(ctx, p, s, g); err != nil {
					kr.Close()
					return nil, err
				}
			}
		}
	}
	return kr, nil
}

// Current is the newest generation of a purpose and suite, used to issue.
func (kr *Keyring) Current(p Purpose, s suite.Name) int {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	cur := 0
	for g := range kr.keys[slot{p, s}] {
		cur = max(cur, g)
	}
	return cur
}

// Generations lists the loaded generations of a purpose and suite.
func (kr *Keyring) Generations(p Purpose, s suite.Name) []int {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	var out []int
	for g := range kr.keys[slot{p, s}] {
		out = append(out, g)
	}
	sort.Ints(out)
	return out
}

func (kr *Keyring) get(p Purpose, s suite.Name, gen int) (*key, error) {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	k, ok := kr.keys[slot{p, s}][gen]
	if !ok {
		return nil, fmt.Errorf("keyring: %s: %w", Label(p, s, gen), ErrNoGeneration)
	}
	return k, nil
}

// Rotate creates the next generation of a root key and loads it. Older
// generations stay loaded so credentials they issued keep verifying until
// they expire.
func (kr *Keyring) Rotate(ctx context.Context, p Purpose, s suite.Name) (int, error) {
	gen := kr.Current(p, s) + 1
	if err := createGeneration(ctx, kr.tok, kr.currentKEK(), p, s, gen); err != nil {
		return 0, err
	}
	if err := kr.load(ctx, p, s, gen); err != nil {
		return 0, err
	}
	return gen, nil
}

// ErrCurrentGeneration refuses to retire the generation in use.
var ErrCurrentGeneration = errors.New("keyring: the current generation cannot be retired")

// Retire destroys generation gen of a root key on the token (its key, its
// wrapped copies, its CA certificate) and forgets it; other keyrings on
// the token drop it at their next Refresh. The current generation is
// refused.
func (kr *Keyring) Retire(ctx context.Context, p Purpose, s suite.Name, gen int) error {
	if _, err := kr.get(p, s, gen); err != nil {
		return err
	}
	if gen == kr.Current(p, s) {
		return fmt.Errorf("%w (%s): rotate first", ErrCurrentGeneration, Label(p, s, gen))
	}
	objs, err := kr.tok.List(ctx, Label(p, s, gen))
	if err != nil {
		return err
	}
	label := Label(p, s, gen)
	for _, o := range objs {
		if o.Label == label || strings.HasPrefix(o.Label, label+"/") {
			if err := kr.tok.Destroy(ctx, o.Class, o.Label); err != nil {
				return fmt.Errorf("keyring: destroy %s: %w", o.Label, err)
			}
		}
	}
	kr.forget(p, s, gen)
	return nil
}

// forget drops a loaded generation; its key material is zeroed a little
// later, once operations that took it before finish.
func (kr *Keyring) forget(p Purpose, s suite.Name, gen int) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if k, ok := kr.keys[slot{p, s}][gen]; ok {
		delete(kr.keys[slot{p, s}], gen)
		time.AfterFunc(forgetGrace, k.destroy)
	}
}

// forgetGrace is how long a forgotten key stays usable by operations that
// already hold it.
const forgetGrace = 30 * time.Second

// Refresh loads generations created on the token since Open (for example
// by 'podkey hsm rotate' while keyd runs) and forgets those retired.
func (kr *Keyring) Refresh(ctx context.Context) error {
	// One listing of the token serves every question below: it is a
	// lookup and an attribute read per object, twice a second.
	objs, err := kr.tok.List(ctx, "")
	if err != nil {
		return err
	}
	gens := generationsIn(objs)
	for _, p := range Purposes {
		for _, s := range suite.All {
			for _, g := range kr.Generations(p, s) {
				if !slices.Contains(gens[slot{p, s}], g) && len(gens[slot{p, s}]) > 0 {
					kr.forget(p, s, g)
				}
			}
		}
	}
	for k, gs := range gens {
		for _, g := range gs {
			if _, err := kr.get(k.p, k.s, g); err == nil {
				continue
			}
			if err := kr.load(ctx, k.p, k.s, g); err != nil {
				return err
			}
		}
	}
	// The KEK and audit generations new wraps and batch keys use: the
	// newest on the token (a rotation through another replica).
	keks := labelGenerationsIn(objs, KEKLabel)
	auditGen := 0
	if a := labelGenerationsIn(objs, AuditLabel); len(a) > 0 {
		auditGen = a[len(a)-1]
	}
	kr.mu.Lock()
	if len(keks) > 0 {
		kr.kek = keks[len(keks)-1]
	}
	kr.audit = max(kr.audit, auditGen)
	kr.mu.Unlock()
	kr.refreshed.Store(time.Now().UnixNano())
	return nil
}

// refreshSoon refreshes for a generation a caller named that this keyring
// has not loaded (a rotation through another replica moments ago), at
// most every refreshGap: an unknown generation in a forged credential
// costs the token one listing per gap, not one per call.
func (kr *Keyring) refreshSoon(ctx context.Context) error {
	last := kr.refreshed.Load()
	if time.Since(time.Unix(0, last)) < refreshGap || !kr.refreshed.CompareAndSwap(last, time.Now().UnixNano()) {
		return ErrNoGeneration
	}
	return kr.Refresh(ctx)
}

// refreshGap bounds on-demand refreshes.
const refreshGap = 200 * time.Millisecond

// Close zeroes every unwrapped key.
func (kr *Keyring) Close() {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	for _, gens := range kr.keys {
		for _, k := range gens {
			k.destroy()
		}
	}
	kr.keys = map[slot]map[int]*key{}
	for _, k := range kr.images {
		zeroSM2(k.gm)
	}
	kr.images = map[string]*imageKey{}
}

// Token is the HSM token the keyring lives on.
func (kr *Keyring) Token() *hsm.Token { return kr.tok }
