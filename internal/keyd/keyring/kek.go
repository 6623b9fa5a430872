package keyring

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/podkey/podkey/internal/keyd/hsm"
)

// The key-encryption key has generations like the other root keys:
//
//	podkey/kek       generation 1 (as 'podkey hsm init' creates it)
//	podkey/kek/g<N>  generation N >= 2 ('podkey hsm rotate kek')
//
// A value wrapped under generation 1 is iv || ciphertext || tag, as it
// always was; under a later one it starts with "PKW2" and the generation
// (4 bytes, big-endian). A token object wrapped under generation N >= 2 is
// stored beside the label it belongs to as "<label>#kek<N>", since token
// data objects cannot be changed in place; readers take the newest copy.
// Additional data is always the base label (or the secret's), so a copy
// moved to another label fails.

const wrapMagic = "PKW2"

// genLabel is the label of generation gen of a single-key root key: the
// base label for generation 1, base/g<N> after (the KEK, the audit key).
func genLabel(base string, gen int) string {
	if gen <= 1 {
		return base
	}
	return fmt.Sprintf("%s/g%d", base, gen)
}

func kekLabel(gen int) string { return genLabel(KEKLabel, gen) }

// labelGenerations lists the generations of a single-key root key on the
// token (secret keys labelled as genLabel makes them), oldest first.
func labelGenerations(ctx context.Context, tok *hsm.Token, base string) ([]int, error) {
	objs, err := tok.List(ctx, base)
	if err != nil {
		return nil, err
	}
	return labelGenerationsIn(objs, base), nil
}

// labelGenerationsIn is labelGenerations among objs, a listing of the
// token.
func labelGenerationsIn(objs []hsm.Object, base string) []int {
	var gens []int
	for _, o := range objs {
		if o.Class != hsm.SecretKey {
			continue
		}
		if o.Label == base {
			gens = append(gens, 1)
		} else if rest, ok := strings.CutPrefix(o.Label, base+"/g"); ok {
			if g, err := strconv.Atoi(rest); err == nil && g >= 2 && genLabel(base, g) == o.Label {
				gens = append(gens, g)
			}
		}
	}
	sort.Ints(gens)
	return gens
}

// kekGenerations lists the KEK generations on the token, oldest first.
func kekGenerations(ctx context.Context, tok *hsm.Token) ([]int, error) {
	return labelGenerations(ctx, tok, KEKLabel)
}

// wrapUnder encrypts under KEK generation gen.
func wrapUnder(ctx context.Context, tok *hsm.Token, gen int, plaintext, aad []byte) ([]byte, error) {
	blob, err := tok.EncryptGCM(ctx, kekLabel(gen), plaintext, aad)
	if err != nil || gen <= 1 {
		return blob, err
	}
	out := make([]byte, 0, len(wrapMagic)+4+len(blob))
	out = append(out, wrapMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(gen))
	return append(out, blob...), nil
}

// wrappedGeneration is the KEK generation a value names (1 for the
// original format).
func wrappedGeneration(blob []byte) (int, []byte) {
	if len(blob) > len(wrapMagic)+4 && bytes.HasPrefix(blob, []byte(wrapMagic)) {
		if g := int(binary.BigEndian.Uint32(blob[len(wrapMagic):])); g >= 2 {
			return g, blob[len(wrapMagic)+4:]
		}
	}
	return 1, blob
}

// unwrapAny decrypts a value wrapped under any generation still on the
// token. A generation-1 value that happens to begin like a later one is
// tried as generation 1 too.
func unwrapAny(ctx context.Context, tok *hsm.Token, blob, aad []byte) ([]byte, error) {
	gen, body := wrappedGeneration(blob)
	pt, err := tok.DecryptGCM(ctx, kekLabel(gen), body, aad)
	if err != nil && gen > 1 {
		if pt1, err1 := tok.DecryptGCM(ctx, KEKLabel, blob, aad); err1 == nil {
			return pt1, nil
		}
	}
	return pt, err
}

// copyLabel is the label of a token object's copy under KEK generation gen.
func copyLabel(label string, gen int) string {
	if gen <= 1 {
		return label
	}
	return fmt.Sprintf("%s#kek%d", label, gen)
}

var copySuffixRE = regexp.MustCompile(`#kek[0-9]+$`)

// baseLabel strips a copy's suffix.
func baseLabel(label string) string { return copySuffixRE.ReplaceAllString(label, "") }

// LeaseAAD binds a database lease's wrapped password to the lease and
// its login.
func LeaseAAD(key, role string) []byte { return SecretAAD("podkey:lease", key+"/"+role) }

// SecretAAD binds an enrolled secret's wrapped value to its namespace and
// name.
func SecretAAD(namespace, name string) []byte {
	return []byte("podkey-secret-v1\x00" + namespace + "\x00" + name)
}

// currentKEK is the generation new values are wrapped under.
func (kr *Keyring) currentKEK() int {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return kr.kek
}

// refreshKEK re-reads the newest KEK generation (another keyd replica may
// have rotated it).
func (kr *Keyring) refreshKEK(ctx context.Context) error {
	gens, err := kekGenerations(ctx, kr.tok)
	if err != nil {
		return err
	}
	if len(gens) == 0 {
		return fmt.Errorf("keyring: no key-encryption key on token %q", kr.tok.Label())
	}
	kr.mu.Lock()
	kr.kek = gens[len(gens)-1]
	kr.mu.Unlock()
	return nil
}

// wrap encrypts under the current KEK, re-reading the generation once if
// it is gone (rotated and destroyed through another replica).
func (kr *Keyring) wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	blob, err := wrapUnder(ctx, kr.tok, kr.currentKEK(), plaintext, aad)
	if errors.Is(err, hsm.ErrObjectNotFound) {
		if rerr := kr.refreshKEK(ctx); rerr != nil {
			return nil, rerr
		}
		blob, err = wrapUnder(ctx, kr.tok, kr.currentKEK(), plaintext, aad)
	}
	return blob, err
}

// putWrapped stores a wrapped private value as a token data object under
// generation gen's copy label.
func putWrapped(ctx context.Context, tok *hsm.Token, gen int, label string, plaintext []byte) error {
	blob, err := wrapUnder(ctx, tok, gen, plaintext, []byte(label))
	if err != nil {
		return err
	}
	return tok.PutData(ctx, copyLabel(label, gen), blob, true)
}

// readWrapped returns the newest copy of a wrapped token object, decrypted.
func readWrapped(ctx context.Context, tok *hsm.Token, label string) ([]byte, error) {
	gens, err := kekGenerations(ctx, tok)
	if err != nil {
		return nil, err
	}
	for i := len(gens) - 1; i >= 0; i-- {
		blob, err := tok.GetData(ctx, copyLabel(label, gens[i]))
		if errors.Is(err, hsm.ErrObjectNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		pt, err := unwrapAny(ctx, tok, blob, []byte(label))
		if err != nil {
			return nil, fmt.Errorf("keyring: unwrap %s: %w", copyLabel(label, gens[i]), err)
		}
		return pt, nil
	}
	return nil, fmt.Errorf("keyring: %s: %w", label, hsm.ErrObjectNotFound)
}

// wrappedObjects lists the base labels of the token's wrapped private
// values (SM root keys, SM image keys), with the copies each has.
// Wrapped reports whether a podkey data object holds a value wrapped
// under the KEK; the others are public: CA certificates (/cert), image
// keys' public halves (/pub), audit key markers (/hmac-sm3).
func Wrapped(label string) bool {
	for _, public := range []string{"/cert", "/pub", "/hmac-sm3"} {
		if strings.HasSuffix(label, public) {
			return false
		}
	}
	return true
}

func wrappedObjects(ctx context.Context, tok *hsm.Token) (map[string][]string, error) {
	objs, err := tok.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, o := range objs {
		if o.Class != hsm.Data || !Wrapped(o.Label) {
			continue
		}
		b := baseLabel(o.Label)
		out[b] = append(out[b], o.Label)
	}
	return out, nil
}
