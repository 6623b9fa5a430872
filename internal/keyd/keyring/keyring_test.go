package keyring_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/emmansun/gmsm/sm2"
	"github.com/miekg/pkcs11"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/suite"
)

func TestInitIsIdempotentAndOpenLoadsAll(t *testing.T) {
	hsmtest.Each(t, testInitIsIdempotentAndOpenLoadsAll)
}

func testInitIsIdempotentAndOpenLoadsAll(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	if _, err := keyring.Open(ctx, tok); err == nil {
		t.Fatal("opened an uninitialised token")
	}
	created, err := keyring.Init(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != 2+len(keyring.Purposes)*len(suite.All) {
		t.Fatalf("created %v", created)
	}
	again, err := keyring.Init(ctx, tok)
	if err != nil || len(again) != 0 {
		t.Fatalf("second init created %v, %v", again, err)
	}
	kr, err := keyring.Open(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	for _, s := range suite.All {
		for _, p := range keyring.Purposes {
			if kr.Current(p, s) != 1 {
				t.Fatalf("%s/%s current %d", p, s, kr.Current(p, s))
			}
		}
	}
	// Every key is used inside the module, but for gm keys on a module
	// without SM mechanisms (SoftHSM2): they exist there only wrapped.
	native := m.Name == "sm"
	for _, p := range keyring.Purposes {
		for _, s := range suite.All {
			in, why := kr.Native(p, s, 1)
			if want := s == suite.Intl || native; in != want || why == "" {
				t.Errorf("%s/%s on %s: inside the module %v (%s), want %v", p, s, m.Name, in, why, want)
			}
		}
	}
	if ok, _ := tok.Exists(ctx, hsm.SecretKey, keyring.Label(keyring.MAC, suite.GM, 1)); ok != native {
		t.Fatalf("gm MAC key a token key: %v on %s", ok, m.Name)
	}
	if ok, _ := tok.Exists(ctx, hsm.PrivateKey, keyring.Label(keyring.CA, suite.GM, 1)); ok != native {
		t.Fatalf("gm CA key a token key: %v on %s", ok, m.Name)
	}
	// The KEK is an SM4 key where the table has SM4-GCM, AES otherwise.
	if a, err := tok.Attributes(ctx, hsm.SecretKey, keyring.KEKLabel); err != nil {
		t.Fatal(err)
	} else if sm4 := a.KeyType == tok.Mechanisms().SM4KeyType && tok.Mechanisms().SM4KeyType != 0; sm4 != native || !sm4 && a.KeyType != pkcs11.CKK_AES {
		t.Fatalf("KEK key type %#x on %s", a.KeyType, m.Name)
	}
	for _, l := range []string{keyring.KEKLabel, keyring.AuditLabel, keyring.Label(keyring.MAC, suite.Intl, 1)} {
		a, err := tok.Attributes(ctx, hsm.SecretKey, l)
		if err != nil || a.Extractable || !a.Sensitive {
			t.Fatalf("%s: %+v %v", l, a, err)
		}
	}
}

func TestOperationsPerSuite(t *testing.T) { hsmtest.Each(t, testOperationsPerSuite) }

func testOperationsPerSuite(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	if _, err := keyring.Init(ctx, tok); err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.Open(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	for _, s := range suite.All {
		m1, err := kr.MAC(ctx, s, 1, []byte("id"))
		if err != nil || len(m1) != 32 {
			t.Fatalf("%s MAC: %x %v", s, m1, err)
		}
		if _, err := kr.MAC(ctx, s, 9, []byte("id")); !errors.Is(err, keyring.ErrNoGeneration) {
			t.Fatalf("missing generation: %v", err)
		}
		d1, _ := kr.Derive(ctx, s, 1, []byte("ctx-a"), 48)
		d2, _ := kr.Derive(ctx, s, 1, []byte("ctx-a"), 48)
		d3, _ := kr.Derive(ctx, s, 1, []byte("ctx-b"), 48)
		if len(d1) != 48 || !bytes.Equal(d1, d2) || bytes.Equal(d1, d3) {
			t.Fatalf("%s derive not a function of its context", s)
		}
		signer, err := kr.TokenSigner(s, 1)
		if err != nil {
			t.Fatal(err)
		}
		dg := sha256.Sum256([]byte("m"))
		sig, err := signer.Sign(rand.Reader, dg[:], nil)
		if err != nil {
			t.Fatal(err)
		}
		pub := signer.Public().(*ecdsa.PublicKey)
		ok := false
		if s == suite.GM {
			ok = sm2.VerifyASN1(pub, dg[:], sig)
		} else {
			ok = ecdsa.VerifyASN1(pub, dg[:], sig)
		}
		if !ok {
			t.Fatalf("%s token signature does not verify", s)
		}
		c, err := kr.CA(s, 1)
		if err != nil || !c.Cert.IsCA {
			t.Fatalf("%s CA: %v", s, err)
		}
	}
	blob, err := kr.Wrap(ctx, []byte("v"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Unwrap(ctx, blob, []byte("b")); err == nil {
		t.Fatal("unwrap under another context succeeded")
	}
}

func TestRotationKeepsOldGenerations(t *testing.T) { hsmtest.Each(t, testRotationKeepsOldGenerations) }

func testRotationKeepsOldGenerations(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	if _, err := keyring.Init(ctx, tok); err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.Open(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	for _, s := range suite.All {
		old, _ := kr.MAC(ctx, s, 1, []byte("x"))
		gen, err := kr.Rotate(ctx, keyring.MAC, s)
		if err != nil || gen != 2 || kr.Current(keyring.MAC, s) != 2 {
			t.Fatalf("rotate %s: %d %v", s, gen, err)
		}
		again, _ := kr.MAC(ctx, s, 1, []byte("x"))
		newer, _ := kr.MAC(ctx, s, 2, []byte("x"))
		if !bytes.Equal(old, again) || bytes.Equal(old, newer) {
			t.Fatalf("%s: old generation changed or new equals old", s)
		}
		if _, err := kr.Rotate(ctx, keyring.CA, s); err != nil {
			t.Fatal(err)
		}
	}
	// A second process opening the token sees both generations.
	kr2, err := keyring.Open(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer kr2.Close()
	if g := kr2.Generations(keyring.CA, suite.GM); len(g) != 2 {
		t.Fatalf("generations %v", g)
	}
	if n := bytes.Count(kr2.CABundle(suite.Intl), []byte("BEGIN CERTIFICATE")); n != 2 {
		t.Fatalf("bundle has %d certificates", n)
	}
}

// TestNoGMKeyMaterialInKeydOnTheSMModule: after every gm key has been
// used (MAC, derive, token and certificate signing, an image entry
// unwrapped), the keyring holds no key material in keyd's memory on the
// SM module; on SoftHSM2 it holds each gm key, so the check can fail.
func TestNoGMKeyMaterialInKeydOnTheSMModule(t *testing.T) {
	hsmtest.Each(t, func(t *testing.T, m hsmtest.Module) {
		ctx := context.Background()
		kr := keyringtest.OpenOn(t, m)
		rec, err := kr.CreateImageKey(ctx, "site-gm", suite.GM)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kr.MAC(ctx, suite.GM, 1, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := kr.Derive(ctx, suite.GM, 1, []byte("x"), 32); err != nil {
			t.Fatal(err)
		}
		signer, err := kr.TokenSigner(suite.GM, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := signer.Sign(rand.Reader, []byte("claims"), sm2.DefaultSM2SignerOpts); err != nil {
			t.Fatal(err)
		}
		s, err := imagecrypt.NewSealer([]imagecrypt.Recipient{rec})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		blob, err := s.Seal([]byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		bl, err := imagecrypt.Parse(blob)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kr.UnwrapImageEntry(ctx, suite.GM, bl.Entries[0]); err != nil {
			t.Fatal(err)
		}
		got := kr.SoftwareKeys()
		if m.Name == "sm" && len(got) != 0 {
			t.Fatalf("on the SM module keyd holds %v in memory", got)
		}
		if want := []string{"podkey/ca/gm/g1", "podkey/derive/gm/g1", "podkey/image/site-gm", "podkey/jwt/gm/g1", "podkey/mac/gm/g1"}; m.Name != "sm" && !slices.Equal(got, want) {
			t.Fatalf("on %s keyd holds %v in memory, want %v", m.Name, got, want)
		}
	})
}

// TestAuditChainIsHMACSM3OnTheSMModule: on a module with HMAC-SM3 the
// audit key is an HMAC-SM3 key and the chain's records say so and are
// MACed with it, through an audit key rotation; elsewhere HMAC-SHA256.
func TestAuditChainIsHMACSM3OnTheSMModule(t *testing.T) {
	hsmtest.Each(t, func(t *testing.T, m hsmtest.Module) {
		ctx := context.Background()
		kr := keyringtest.OpenOn(t, m)
		st, err := store.OpenBolt(filepath.Join(t.TempDir(), "keyd.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		log := audit.Open(st, kr.AuditKeys())
		for i := range 3 {
			if i == 2 {
				if _, err := kr.RotateAudit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := log.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK, Namespace: "payments"}); err != nil {
				t.Fatal(err)
			}
		}
		log.Close()
		want := ""
		if m.Name == "sm" {
			want = audit.AlgSM3
		}
		var recs []store.AuditEntry
		if err := st.ScanAudit(ctx, 1, func(e store.AuditEntry) error { recs = append(recs, e); return nil }); err != nil {
			t.Fatal(err)
		}
		for _, e := range recs {
			var r audit.Record
			if err := json.Unmarshal(e.Data, &r); err != nil || r.Alg != want {
				t.Fatalf("record %d on %s: alg %q, want %q (%v)", e.Seq, m.Name, r.Alg, want, err)
			}
		}
		if n, err := audit.Verify(ctx, st, keyring.TokenAuditKeys(kr.Token())); err != nil || n != 3 {
			t.Fatalf("verify: %d %v", n, err)
		}
	})
}
