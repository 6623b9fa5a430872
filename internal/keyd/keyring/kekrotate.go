package keyring

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/store"
)

// KEKRotation says what RotateKEK did.
type KEKRotation struct {
	Generation      int // the KEK generation everything is wrapped under now
	TokenObjects    int // token values re-wrapped by this run
	Secrets         int // enrolled secrets re-wrapped by this run
	Leases          int // database leases' passwords re-wrapped by this run
	DestroyedKEKs   []int
	DestroyedCopies int // superseded token copies destroyed
}

// SecretStore is what RotateKEK needs of keyd's store.
type SecretStore interface {
	Secrets(ctx context.Context, namespace string) ([]store.Secret, error)
	Secret(ctx context.Context, namespace, name string) (store.Secret, error)
	RewrapSecret(ctx context.Context, namespace, name string, oldWrapped, newWrapped []byte) error
	// Database leases hold their logins' passwords wrapped (LeaseAAD).
	ListLeases(ctx context.Context, podUID string) ([]store.Lease, error)
	Lease(ctx context.Context, key string) (store.Lease, error)
	UpdateLease(ctx context.Context, l store.Lease) (store.Lease, error)
}

// rotateKEKStep, when set (tests), is called after each step of RotateKEK
// with the step's name; an error stops the rotation there, as a crash would.
var rotateKEKStep func(step string) error

// RotateKEK moves everything wrapped under the key-encryption key to a new
// generation: it creates the generation (or, after an interrupted run,
// goes on with the newest), re-wraps the token's wrapped values as new
// copies and the store's enrolled secrets in place (each one only while it
// is unchanged), checks that everything opens under the new generation,
// and only then destroys the superseded copies and the old generations.
// Every step is safe to interrupt; running it again finishes the job.
func (kr *Keyring) RotateKEK(ctx context.Context, st SecretStore) (KEKRotation, error) {
	ro := &kekRotation{kr: kr, st: st}
	for _, s := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"generated", ro.start},
		{"", ro.rewrapTokenObjects}, // steps "token object", one per value
		{"", ro.rewrapSecrets},      // steps "secret", one per secret
		{"", ro.rewrapLeases},       // steps "lease", one per lease
		{"verified", ro.verify},
		{"copies destroyed", ro.destroyCopies},
		{"", ro.destroyOldGenerations},
	} {
		if err := s.run(ctx); err != nil {
			return ro.r, err
		}
		if s.name != "" {
			if err := ro.step(s.name); err != nil {
				return ro.r, err
			}
		}
	}
	return ro.r, nil
}

// kekRotation is one run of RotateKEK, its steps in order.
type kekRotation struct {
	kr   *Keyring
	st   SecretStore
	gens []int // the KEK generations found at the start
	gen  int   // the generation everything moves to
	r    KEKRotation
}

func (ro *kekRotation) step(name string) error {
	if rotateKEKStep != nil {
		return rotateKEKStep(name)
	}
	return nil
}

// start creates the new generation, or goes on with the newest when an
// interrupted run left two or more, and makes it the one new wraps use.
func (ro *kekRotation) start(ctx context.Context) error {
	kr := ro.kr
	gens, err := kekGenerations(ctx, kr.tok)
	if err != nil {
		return err
	}
	if len(gens) == 0 {
		return fmt.Errorf("keyring: no key-encryption key on token %q", kr.tok.Label())
	}
	gen := gens[len(gens)-1]
	if len(gens) == 1 { // no rotation under way: start one
		gen++
		if err := kr.tok.GenerateKEK(ctx, kekLabel(gen)); err != nil {
			return err
		}
	}
	ro.gens, ro.gen, ro.r.Generation = gens, gen, gen
	kr.mu.Lock()
	kr.kek = gen
	kr.mu.Unlock()
	return nil
}

// rewrapTokenObjects adds, for every wrapped value on the token without
// one, a copy under the new generation.
func (ro *kekRotation) rewrapTokenObjects(ctx context.Context) error {
	tok := ro.kr.tok
	objs, err := wrappedObjects(ctx, tok)
	if err != nil {
		return err
	}
	for base, copies := range objs {
		if slices.Contains(copies, copyLabel(base, ro.gen)) {
			continue
		}
		pt, err := readWrapped(ctx, tok, base)
		if err != nil {
			return err
		}
		err = putWrapped(ctx, tok, ro.gen, base, pt)
		secmem.Zero(pt)
		if err != nil && !errors.Is(err, hsm.ErrObjectExists) {
			return err
		}
		ro.r.TokenObjects++
		if err := ro.step("token object"); err != nil {
			return err
		}
	}
	return nil
}

// rewrapSecrets re-wraps every enrolled secret under the new generation
// in place, each only while it is unchanged (one enrolled again meanwhile
// is read again).
func (ro *kekRotation) rewrapSecrets(ctx context.Context) error {
	secrets, err := ro.st.Secrets(ctx, "")
	if err != nil {
		return err
	}
	for _, s := range secrets {
		if err := ro.rewrapSecret(ctx, s.Namespace, s.Name); err != nil {
			return err
		}
		if err := ro.step("secret"); err != nil {
			return err
		}
	}
	return nil
}

func (ro *kekRotation) rewrapSecret(ctx context.Context, namespace, name string) error {
	tok := ro.kr.tok
	for attempt := 0; ; attempt++ {
		cur, err := ro.st.Secret(ctx, namespace, name)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if g, _ := wrappedGeneration(cur.Wrapped); g == ro.gen {
			return nil
		}
		aad := SecretAAD(namespace, name)
		pt, err := unwrapAny(ctx, tok, cur.Wrapped, aad)
		if err != nil {
			return fmt.Errorf("keyring: secret %s/%s: %w", namespace, name, err)
		}
		nw, err := wrapUnder(ctx, tok, ro.gen, pt, aad)
		secmem.Zero(pt)
		if err != nil {
			return err
		}
		err = ro.st.RewrapSecret(ctx, namespace, name, cur.Wrapped, nw)
		if errors.Is(err, store.ErrChanged) && attempt < 5 {
			continue // enrolled again meanwhile: look again
		}
		if err != nil {
			return err
		}
		ro.r.Secrets++
		return nil
	}
}

// rewrapLeases re-wraps every database lease's password under the new
// generation, each only while the lease is unchanged.
func (ro *kekRotation) rewrapLeases(ctx context.Context) error {
	leases, err := ro.st.ListLeases(ctx, "")
	if err != nil {
		return err
	}
	for _, l := range leases {
		if err := ro.rewrapLease(ctx, l.Key); err != nil {
			return err
		}
		if err := ro.step("lease"); err != nil {
			return err
		}
	}
	return nil
}

func (ro *kekRotation) rewrapLease(ctx context.Context, key string) error {
	tok := ro.kr.tok
	for attempt := 0; ; attempt++ {
		cur, err := ro.st.Lease(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if g, _ := wrappedGeneration(cur.Wrapped); g == ro.gen {
			return nil
		}
		aad := LeaseAAD(cur.Key, cur.Role)
		pt, err := unwrapAny(ctx, tok, cur.Wrapped, aad)
		if err != nil {
			return fmt.Errorf("keyring: lease %s: %w", key, err)
		}
		cur.Wrapped, err = wrapUnder(ctx, tok, ro.gen, pt, aad)
		secmem.Zero(pt)
		if err != nil {
			return err
		}
		_, err = ro.st.UpdateLease(ctx, cur)
		if (errors.Is(err, store.ErrChanged) || errors.Is(err, store.ErrNotFound)) && attempt < 5 {
			continue // renewed or revoked meanwhile: look again
		}
		if err != nil {
			return err
		}
		ro.r.Leases++
		return nil
	}
}

// verify checks that everything opens under the new generation before
// anything goes.
func (ro *kekRotation) verify(ctx context.Context) error {
	tok, gen := ro.kr.tok, ro.gen
	objs, err := wrappedObjects(ctx, tok)
	if err != nil {
		return err
	}
	for base := range objs {
		blob, err := tok.GetData(ctx, copyLabel(base, gen))
		if err != nil {
			return fmt.Errorf("keyring: %s has no copy under KEK generation %d: %w", base, gen, err)
		}
		g, body := wrappedGeneration(blob)
		if g != gen {
			return fmt.Errorf("keyring: the copy of %s names KEK generation %d, not %d", base, g, gen)
		}
		pt, err := tok.DecryptGCM(ctx, kekLabel(gen), body, []byte(base))
		if err != nil {
			return fmt.Errorf("keyring: the copy of %s under KEK generation %d does not open: %w", base, gen, err)
		}
		secmem.Zero(pt)
	}
	return secretsUnder(ctx, ro.st, gen)
}

// destroyCopies destroys the token copies the new generation superseded.
func (ro *kekRotation) destroyCopies(ctx context.Context) error {
	tok := ro.kr.tok
	objs, err := wrappedObjects(ctx, tok)
	if err != nil {
		return err
	}
	for base, copies := range objs {
		for _, c := range copies {
			if c == copyLabel(base, ro.gen) {
				continue
			}
			if err := tok.Destroy(ctx, hsm.Data, c); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
				return err
			}
			ro.r.DestroyedCopies++
		}
	}
	return nil
}

// destroyOldGenerations destroys the old KEK generations, after checking
// the store's secrets once more: a keyd replica that had not yet seen the
// new generation may have enrolled a secret under an old one meanwhile
// (running the rotation again re-wraps it).
func (ro *kekRotation) destroyOldGenerations(ctx context.Context) error {
	if err := secretsUnder(ctx, ro.st, ro.gen); err != nil {
		return err
	}
	for _, g := range ro.gens {
		if g == ro.gen {
			continue
		}
		if err := ro.kr.tok.Destroy(ctx, hsm.SecretKey, kekLabel(g)); err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
			return err
		}
		ro.r.DestroyedKEKs = append(ro.r.DestroyedKEKs, g)
	}
	return nil
}

// secretsUnder fails unless every enrolled secret is wrapped under gen.
func secretsUnder(ctx context.Context, st SecretStore, gen int) error {
	secrets, err := st.Secrets(ctx, "")
	if err != nil {
		return err
	}
	for _, s := range secrets {
		cur, err := st.Secret(ctx, s.Namespace, s.Name)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if g, _ := wrappedGeneration(cur.Wrapped); g != gen {
			return fmt.Errorf("keyring: secret %s/%s is still wrapped under KEK generation %d (run the rotation again)", s.Namespace, s.Name, g)
		}
	}
	leases, err := st.ListLeases(ctx, "")
	if err != nil {
		return err
	}
	for _, l := range leases {
		cur, err := st.Lease(ctx, l.Key)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if g, _ := wrappedGeneration(cur.Wrapped); g != gen {
			return fmt.Errorf("keyring: database lease %s is still wrapped under KEK generation %d (run the rotation again)", l.Key, g)
		}
	}
	return nil
}
