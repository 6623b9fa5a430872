package keyring_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/suite"
)

func TestImageKeysUnwrapTheirOwnEntryOnTheToken(t *testing.T) {
	hsmtest.Each(t, testImageKeysUnwrapTheirOwnEntryOnTheToken)
}

func testImageKeysUnwrapTheirOwnEntryOnTheToken(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	kr := keyringtest.OpenOn(t, m)
	for _, st := range suite.All {
		t.Run(string(st), func(t *testing.T) {
			a, err := kr.CreateImageKey(ctx, "site-a-"+string(st), st)
			if err != nil {
				t.Fatal(err)
			}
			b, err := kr.CreateImageKey(ctx, "site-b-"+string(st), st)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kr.CreateImageKey(ctx, a.KeyID, st); !errors.Is(err, hsm.ErrObjectExists) {
				t.Fatalf("second key of one id: %v", err)
			}
			// An image encrypted from the exported public halves alone.
			pemA, err := imagecrypt.MarshalRecipient(a)
			if err != nil {
				t.Fatal(err)
			}
			ra, err := imagecrypt.ParseRecipient(pemA)
			if err != nil {
				t.Fatal(err)
			}
			s, err := imagecrypt.NewSealer([]imagecrypt.Recipient{b, ra})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			blob, err := s.Seal([]byte(`{"key":"bGF5ZXI="}`))
			if err != nil {
				t.Fatal(err)
			}
			bl, err := imagecrypt.Parse(blob)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range bl.Entries {
				cek, err := kr.UnwrapImageEntry(ctx, st, e)
				if err != nil {
					t.Fatalf("%s: %v", e.KeyID, err)
				}
				opts, err := imagecrypt.Open(bl, cek)
				if err != nil || !bytes.Equal(opts, []byte(`{"key":"bGF5ZXI="}`)) {
					t.Fatalf("%s: %q %v", e.KeyID, opts, err)
				}
			}
			// An entry presented under another key's id fails authentication.
			swapped := imagecrypt.Entry{KeyID: a.KeyID, Wrapped: bl.Entries[0].Wrapped}
			if _, err := kr.UnwrapImageEntry(ctx, st, swapped); !errors.Is(err, imagecrypt.ErrUnwrap) {
				t.Fatalf("b's entry under a's id: %v", err)
			}
			if _, err := kr.UnwrapImageEntry(ctx, st, imagecrypt.Entry{KeyID: "nobody", Wrapped: bl.Entries[0].Wrapped}); !errors.Is(err, keyring.ErrNoImageKey) {
				t.Fatalf("unknown key id: %v", err)
			}
		})
	}
	// A second keyring on the same token (another keyd replica) finds them.
	other, err := keyring.Open(ctx, kr.Token())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	keys, err := other.ImageKeys(ctx)
	if err != nil || len(keys) != 4 || keys[0].KeyID != "site-a-gm" || keys[3].Suite != suite.Intl {
		t.Fatalf("listed %+v, %v", keys, err)
	}
	// intl private halves are token keys that never leave it; gm ones
	// too on the SM module, and only wrapped elsewhere.
	attrs, err := kr.Token().Attributes(ctx, hsm.PrivateKey, "podkey/image/site-a-intl")
	if err != nil || !attrs.Sensitive || attrs.Extractable {
		t.Fatalf("intl image key attributes %+v, %v", attrs, err)
	}
	attrs, err = kr.Token().Attributes(ctx, hsm.PrivateKey, "podkey/image/site-a-gm")
	if native := m.Name == "sm"; native != (err == nil) || native && (!attrs.Sensitive || attrs.Extractable) {
		t.Fatalf("gm image key on %s: attributes %+v, %v", m.Name, attrs, err)
	}
}
