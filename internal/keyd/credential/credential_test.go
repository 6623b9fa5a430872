package credential_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jws"
)

type fixture struct {
	kr  *keyring.Keyring
	st  *store.Bolt
	is  *credential.Issuer
	now time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	kr := keyringtest.Open(t)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{kr: kr, st: st, now: time.Now()}
	f.is = credential.NewIssuer(kr, st, credential.Options{Now: func() time.Time { return f.now }})
	return f
}

var podA = pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "a", UID: "uid-a", Node: "n1"}
var podB = pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "b", UID: "uid-b", Node: "n1"}

func spec(t *testing.T, s object.Spec) object.Spec {
	t.Helper()
	if err := s.Normalize(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAPIKeyPerPodAndVerify(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, s := range suite.All {
		sp := spec(t, object.Spec{Name: "ledger-api", Kind: object.APIKey, Suite: s})
		a, err := f.is.Issue(ctx, podA, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := f.is.Issue(ctx, podB, sp, nil)
		if a.AccessKeyID == b.AccessKeyID || bytes.Equal(a.SecretKey, b.SecretKey) {
			t.Fatal("two pods share an API key")
		}
		if a.RenewAt.Sub(a.IssuedAt) != 40*time.Minute {
			t.Fatalf("renew at %v", a.RenewAt.Sub(a.IssuedAt))
		}
		msg := []byte("GET /ledger")
		sig := accesskey.Sign(s, a.SecretKey, msg)
		id, err := f.is.VerifyAPIKey(ctx, a.AccessKeyID, msg, sig)
		if err != nil || id.PodUID != "uid-a" || id.Object != "ledger-api" {
			t.Fatalf("verify: %+v %v", id, err)
		}
		if _, err := f.is.VerifyAPIKey(ctx, a.AccessKeyID, []byte("GET /other"), sig); !errors.Is(err, credential.ErrBadSignature) {
			t.Fatalf("tampered message: %v", err)
		}
		// Forge: b's id with a's tag region swapped in, and a's id with a changed pod.
		forged := b.AccessKeyID[:len(b.AccessKeyID)-22] + a.AccessKeyID[len(a.AccessKeyID)-22:]
		if _, err := f.is.VerifyAPIKey(ctx, forged, msg, sig); !errors.Is(err, accesskey.ErrForged) {
			t.Fatalf("forged id: %v", err)
		}
		if _, err := f.is.VerifyAPIKey(ctx, "PK1nonsense", msg, sig); !errors.Is(err, accesskey.ErrMalformed) {
			t.Fatalf("malformed id: %v", err)
		}
	}
}

func TestAPIKeyExpiryRevocationAndRotation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	sp := spec(t, object.Spec{Name: "k", Kind: object.APIKey, TTLText: "10m"})
	a, _ := f.is.Issue(ctx, podA, sp, nil)
	msg := []byte("m")
	sig := accesskey.Sign(suite.Intl, a.SecretKey, msg)

	if _, err := f.kr.Rotate(ctx, keyring.MAC, suite.Intl); err != nil {
		t.Fatal(err)
	}
	if _, err := f.is.VerifyAPIKey(ctx, a.AccessKeyID, msg, sig); err != nil {
		t.Fatalf("old generation stopped verifying after rotation: %v", err)
	}
	b, _ := f.is.Issue(ctx, podB, sp, nil)
	if b.Generation != 2 {
		t.Fatalf("new credential uses generation %d", b.Generation)
	}

	_ = f.st.Revoke(ctx, store.Revocation{PodUID: "uid-a", Until: f.now.Add(time.Hour), Revoked: f.now})
	if _, err := f.is.VerifyAPIKey(ctx, a.AccessKeyID, msg, sig); !errors.Is(err, credential.ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	f.now = f.now.Add(11 * time.Minute)
	if _, err := f.is.VerifyAPIKey(ctx, b.AccessKeyID, msg, accesskey.Sign(suite.Intl, b.SecretKey, msg)); !errors.Is(err, credential.ErrExpired) {
		t.Fatalf("expired: %v", err)
	}
}

func TestCertificateFromCSR(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, s := range suite.All {
		key, _ := s.GenerateKey()
		csr, err := smx509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		sp := spec(t, object.Spec{Name: "mtls", Kind: object.Certificate, Suite: s, TTLText: "24h"})
		c, err := f.is.Issue(ctx, podA, sp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(c.CertPEM)
		leaf, err := smx509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		root, _ := f.kr.CA(s, 1)
		rootCert, _ := smx509.ParseCertificate(root.DER)
		if err := leaf.CheckSignatureFrom(rootCert); err != nil {
			t.Fatalf("%s leaf not signed by root: %v", s, err)
		}
		if len(leaf.URIs) != 2 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/payments/sa/payments" {
			t.Fatalf("URIs %v", leaf.URIs)
		}
		if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
			t.Fatal("certificate is not for the CSR's key")
		}
		// A CSR of the other suite, a garbage CSR and a tampered CSR are refused.
		other := suite.GM
		if s == suite.GM {
			other = suite.Intl
		}
		okey, _ := other.GenerateKey()
		ocsr, _ := smx509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, okey)
		tampered := bytes.Clone(csr)
		tampered[len(tampered)-5] ^= 0xff
		for _, bad := range [][]byte{ocsr, []byte("not a csr"), tampered, nil} {
			if _, err := f.is.Issue(ctx, podA, sp, bad); !errors.Is(err, credential.ErrInvalid) {
				t.Fatalf("%s bad CSR: %v", s, err)
			}
		}
	}
}

func TestDerivedKeyScopes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	perPod := spec(t, object.Spec{Name: "k", Kind: object.DerivedKey})
	perSA := spec(t, object.Spec{Name: "k", Kind: object.DerivedKey, Scope: object.ScopeServiceAccount})
	a1, _ := f.is.Issue(ctx, podA, perPod, nil)
	b1, _ := f.is.Issue(ctx, podB, perPod, nil)
	a2, _ := f.is.Issue(ctx, podA, perSA, nil)
	b2, _ := f.is.Issue(ctx, podB, perSA, nil)
	if bytes.Equal(a1.Key, b1.Key) || !bytes.Equal(a2.Key, b2.Key) || bytes.Equal(a1.Key, a2.Key) || len(a1.Key) != 32 {
		t.Fatal("derived key scopes wrong")
	}
}

func TestTokenSignedPerSuite(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, s := range suite.All {
		sp := spec(t, object.Spec{Name: "svc", Kind: object.Token, Suite: s, Audience: []string{"ledger"}})
		c, err := f.is.Issue(ctx, podA, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		signer, _ := f.kr.TokenSigner(s, 1)
		body, err := jws.Verify(s, signer.Public().(*ecdsa.PublicKey), c.Token)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		var claims struct {
			Sub    string
			Aud    []string
			Podkey map[string]string
		}
		_ = json.Unmarshal(body, &claims)
		if claims.Sub != "system:serviceaccount:payments:payments" || claims.Aud[0] != "ledger" || claims.Podkey["podUID"] != "uid-a" {
			t.Fatalf("claims %s", body)
		}
		if _, err := jws.Verify(s, signer.Public().(*ecdsa.PublicKey), c.Token[:len(c.Token)-4]+"AAAA"); err == nil {
			t.Fatal("tampered token verified")
		}
	}
}

func TestSecretsEnrolledWrapped(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	value := []byte("legacy-db-password-7731")
	rec, err := f.is.Enroll(ctx, "payments", "legacy-db", bytes.Clone(value))
	if err != nil || rec.Version != 1 {
		t.Fatal(err)
	}
	stored, _ := f.st.Secret(ctx, "payments", "legacy-db")
	if bytes.Contains(stored.Wrapped, value) {
		t.Fatal("stored in clear")
	}
	sp := spec(t, object.Spec{Name: "legacy-db", Kind: object.Secret})
	c, err := f.is.Issue(ctx, podA, sp, nil)
	if err != nil || !bytes.Equal(c.Value, value) {
		t.Fatalf("%q %v", c.Value, err)
	}
	other := podA
	other.Namespace = "shop"
	if _, err := f.is.Issue(ctx, other, sp, nil); !errors.Is(err, credential.ErrNotEnrolled) {
		t.Fatalf("other namespace: %v", err)
	}
	// A wrapped blob copied to another name does not unwrap.
	_ = f.st.PutSecret(ctx, store.Secret{Namespace: "shop", Name: "legacy-db", Wrapped: stored.Wrapped, Version: 1})
	if _, err := f.is.Issue(ctx, other, sp, nil); err == nil {
		t.Fatal("moved blob unwrapped")
	}
	for _, bad := range []struct {
		ns, name string
		v        []byte
	}{
		{"payments", "x", nil}, {"payments", "x", make([]byte, credential.MaxSecretSize+1)}, {"Bad NS", "x", []byte("v")}, {"payments", "../x", []byte("v")},
	} {
		if _, err := f.is.Enroll(ctx, bad.ns, bad.name, bad.v); !errors.Is(err, credential.ErrInvalid) {
			t.Fatalf("enroll %q/%q accepted: %v", bad.ns, bad.name, err)
		}
	}
	if list, _ := f.st.Secrets(ctx, "payments"); len(list) != 1 {
		t.Fatal("a refused enrollment was stored")
	}
}
