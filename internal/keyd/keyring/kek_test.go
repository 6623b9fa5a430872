package keyring_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/suite"
)

// world is a token with podkey's root keys, an SM image key, and enrolled
// secrets in a real bbolt store: everything the KEK wraps.
type kekWorld struct {
	t   *testing.T
	kr  *keyring.Keyring
	st  *store.Bolt
	img imagecrypt.Recipient
}

var kekSecrets = map[string][]byte{"db": []byte("db-password-1"), "api": []byte("api-token-2"), "ldap": []byte("ldap-bind-3")}

func newKEKWorld(t *testing.T, m hsmtest.Module) *kekWorld {
	ctx := context.Background()
	w := &kekWorld{t: t, kr: keyringtest.OpenOn(t, m)}
	var err error
	if w.st, err = store.OpenBolt(filepath.Join(t.TempDir(), "keyd.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.st.Close() })
	if w.img, err = w.kr.CreateImageKey(ctx, "site-gm", suite.GM); err != nil {
		t.Fatal(err)
	}
	for name, v := range kekSecrets {
		wrapped, err := w.kr.Wrap(ctx, v, keyring.SecretAAD("payments", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := w.st.PutSecret(ctx, store.Secret{Namespace: "payments", Name: name, Wrapped: wrapped, Size: len(v), Version: 1}); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// check opens a fresh keyring on the token, as a restarted keyd would,
// and proves every wrapped value still opens: the SM root keys load (Open
// fails otherwise), the SM image key unwraps an entry, every secret
// unwraps.
func (w *kekWorld) check(what string) *keyring.Keyring {
	t := w.t
	t.Helper()
	ctx := context.Background()
	kr, err := keyring.Open(ctx, w.kr.Token())
	if err != nil {
		t.Fatalf("%s: a restarted keyd cannot open the keyring: %v", what, err)
	}
	t.Cleanup(kr.Close)
	s, err := imagecrypt.NewSealer([]imagecrypt.Recipient{w.img})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	blob, _ := s.Seal([]byte("{}"))
	bl, _ := imagecrypt.Parse(blob)
	if _, err := kr.UnwrapImageEntry(ctx, suite.GM, bl.Entries[0]); err != nil {
		t.Fatalf("%s: the SM image key: %v", what, err)
	}
	for name, v := range kekSecrets {
		rec, err := w.st.Secret(ctx, "payments", name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := kr.Unwrap(ctx, rec.Wrapped, keyring.SecretAAD("payments", name))
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("%s: secret %s: %q, %v", what, name, got, err)
		}
	}
	return kr
}

func keks(t *testing.T, tok *hsm.Token) []string {
	objs, err := tok.List(context.Background(), keyring.KEKLabel)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range objs {
		if o.Class == hsm.SecretKey {
			out = append(out, o.Label)
		}
	}
	return out
}

func TestKEKRotationRewrapsEverything(t *testing.T) {
	hsmtest.Each(t, testKEKRotationRewrapsEverything)
}

func testKEKRotationRewrapsEverything(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	w := newKEKWorld(t, m)
	// Another keyd replica on the token, opened before the rotations.
	other, err := keyring.Open(ctx, w.kr.Token())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// What the KEK wraps on the token: the gm root keys and the gm image
	// key, but on the SM module, where they are all native.
	wrappedObjects := 5
	if m.Name == "sm" {
		wrappedObjects = 0
	}
	for want := 2; want <= 3; want++ {
		r, err := w.kr.RotateKEK(ctx, w.st)
		if err != nil {
			t.Fatal(err)
		}
		if r.Generation != want || r.Secrets != len(kekSecrets) || r.TokenObjects != wrappedObjects || len(r.DestroyedKEKs) != 1 {
			t.Fatalf("rotation %d: %+v", want, r)
		}
		if got := keks(t, w.kr.Token()); len(got) != 1 || got[0] != fmt.Sprintf("podkey/kek/g%d", want) {
			t.Fatalf("KEKs after rotation %d: %v", want, got)
		}
		w.check(fmt.Sprintf("after rotation %d", want))
	}
	// New values go under the new generation; the store holds no value
	// under an old one.
	wrapped, err := w.kr.Wrap(ctx, []byte("new"), keyring.SecretAAD("x", "y"))
	if err != nil || !bytes.HasPrefix(wrapped, []byte("PKW2\x00\x00\x00\x03")) {
		t.Fatalf("a new value: %x, %v", wrapped[:8], err)
	}
	// The other replica wraps under the new generation once it finds its
	// own gone, and opens what the rotating one wrapped.
	mine, err := other.Wrap(ctx, []byte("from the other replica"), []byte("aad"))
	if err != nil || !bytes.HasPrefix(mine, []byte("PKW2\x00\x00\x00\x03")) {
		t.Fatalf("the other replica's wrap after rotations: %v", err)
	}
	if got, err := other.Unwrap(ctx, wrapped, keyring.SecretAAD("x", "y")); err != nil || string(got) != "new" {
		t.Fatalf("the other replica's unwrap: %q %v", got, err)
	}
	// A root key made after the rotation is found by a restarted keyd.
	if _, err := w.kr.Rotate(ctx, keyring.CA, suite.GM); err != nil {
		t.Fatal(err)
	}
	if kr := w.check("after a new SM CA generation"); kr.Current(keyring.CA, suite.GM) != 2 {
		t.Fatalf("SM CA generations after restart: %v", kr.Generations(keyring.CA, suite.GM))
	}
	// podkey hsm init on a rotated token creates no stray generation 1.
	created, err := keyring.Init(ctx, w.kr.Token())
	if err != nil || len(created) != 0 {
		t.Fatalf("init after rotation created %v, %v", created, err)
	}
}

func TestKEKRotationInterruptedAtEveryStepLosesNothing(t *testing.T) {
	hsmtest.Each(t, testKEKRotationInterruptedAtEveryStepLosesNothing)
}

func testKEKRotationInterruptedAtEveryStepLosesNothing(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	steps := []string{"generated", "token object", "secret", "verified", "copies destroyed"}
	for _, stop := range steps {
		t.Run(strings.ReplaceAll(stop, " ", "-"), func(t *testing.T) {
			if stop == "token object" && m.Name == "sm" {
				t.Skip("the SM module's token holds nothing wrapped: every gm key is native")
			}
			w := newKEKWorld(t, m)
			crashed := errors.New("crash")
			keyring.SetRotateKEKStep(func(step string) error {
				if step == stop {
					return crashed
				}
				return nil
			})
			_, err := w.kr.RotateKEK(ctx, w.st)
			keyring.SetRotateKEKStep(nil)
			if !errors.Is(err, crashed) {
				t.Fatalf("the rotation did not stop at %q: %v", stop, err)
			}
			// Halfway: a restarted keyd still opens everything.
			w.check("interrupted at " + stop)
			// Running it again finishes the job.
			r, err := w.kr.RotateKEK(ctx, w.st)
			if err != nil || r.Generation != 2 {
				t.Fatalf("second run: %+v, %v", r, err)
			}
			if got := keks(t, w.kr.Token()); len(got) != 1 || got[0] != "podkey/kek/g2" {
				t.Fatalf("KEKs after the second run: %v", got)
			}
			w.check("after the second run")
		})
	}
}

func TestKEKRotationWaitsForASecretEnrolledThroughAStaleReplica(t *testing.T) {
	hsmtest.Each(t, testKEKRotationWaitsForASecretEnrolledThroughAStaleReplica)
}

func testKEKRotationWaitsForASecretEnrolledThroughAStaleReplica(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	w := newKEKWorld(t, m)
	stale, err := keyring.Open(ctx, w.kr.Token()) // has not heard of the rotation
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	late := []byte("enrolled-during-the-rotation")
	keyring.SetRotateKEKStep(func(step string) error {
		if step == "copies destroyed" {
			wrapped, err := stale.Wrap(ctx, late, keyring.SecretAAD("payments", "late"))
			if err != nil {
				return err
			}
			return w.st.PutSecret(ctx, store.Secret{Namespace: "payments", Name: "late", Wrapped: wrapped, Size: len(late), Version: 1})
		}
		return nil
	})
	_, err = w.kr.RotateKEK(ctx, w.st)
	keyring.SetRotateKEKStep(nil)
	if err == nil || !strings.Contains(err.Error(), "payments/late is still wrapped under KEK generation 1") {
		t.Fatalf("the rotation went on past a secret under the old generation: %v", err)
	}
	if got := keks(t, w.kr.Token()); len(got) != 2 {
		t.Fatalf("an old generation was destroyed while a secret needed it: %v", got)
	}
	if _, err := w.kr.RotateKEK(ctx, w.st); err != nil {
		t.Fatal(err)
	}
	rec, _ := w.st.Secret(ctx, "payments", "late")
	if got, err := w.kr.Unwrap(ctx, rec.Wrapped, keyring.SecretAAD("payments", "late")); err != nil || !bytes.Equal(got, late) {
		t.Fatalf("the late secret after the second run: %q %v", got, err)
	}
	w.check("after the second run")
}
