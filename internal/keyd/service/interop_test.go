package service_test

import (
	"context"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jwks"
)

// TestGMCredentialsVerifyWithOpenSSL: on each module of the matrix (on
// the SM module, signed inside it), a gm certificate verifies with
// `openssl verify` against the bundle keyd hands out (OpenSSL 3.0 needs
// the default SM2 ID spelled out, -vfyopt distid:1234567812345678), and a gm token's
// signature with `openssl pkeyutl` (SM2 with the default ID, SM3) against
// the key in keyd's JWK Set.
func TestGMCredentialsVerifyWithOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: run hack/install-deps.sh")
	}
	hsmtest.Each(t, func(t *testing.T, m hsmtest.Module) {
		ctx := context.Background()
		e := keydtest.StartOnModule(t, m, nil)
		resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{
			{Name: "mtls", Kind: "certificate", Algorithm: "sm2", Csr: csrPEM(t, suite.GM)},
			{Name: "svc-token", Kind: "token", Suite: "gm", Audience: []string{"ledger"}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		write := func(name string, b []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		cert := resp.Credentials[0].GetCertificate()
		openssl(t, "verify", "-vfyopt", "distid:1234567812345678", "-CAfile", write("ca.pem", cert.CaBundlePem), write("leaf.pem", cert.CertPem))
		// A certificate of another CA does not verify: the check can fail.
		other := keydtest.StartOnModule(t, m, nil)
		if out, err := exec.Command("openssl", "verify", "-vfyopt", "distid:1234567812345678", "-CAfile", write("other.pem", caBundle(t, other)), filepath.Join(dir, "leaf.pem")).CombinedOutput(); err == nil {
			t.Fatalf("openssl verified a certificate against another CA: %s", out)
		}

		jwt := resp.Credentials[1].GetToken().Jwt
		parts := strings.Split(jwt, ".")
		set, err := e.Keyd.TokenKeys(ctx, &keydv1.TokenKeysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ks, err := jwks.Parse(set.Jwks)
		if err != nil {
			t.Fatal(err)
		}
		_, pub, err := ks.Find(tokenKid(t, jwt))
		if err != nil {
			t.Fatal(err)
		}
		spki, err := smx509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil || len(raw) != 64 {
			t.Fatalf("signature: %d bytes, %v", len(raw), err)
		}
		der, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])})
		pubFile := write("jwt.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))
		input := write("input", []byte(parts[0]+"."+parts[1]))
		openssl(t, "pkeyutl", "-verify", "-pubin", "-inkey", pubFile, "-rawin", "-digest", "sm3",
			"-pkeyopt", "distid:1234567812345678", "-in", input, "-sigfile", write("sig.der", der))
		write("input", []byte(parts[0]+"."+parts[1]+"x"))
		if out, err := exec.Command("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pubFile, "-rawin", "-digest", "sm3",
			"-pkeyopt", "distid:1234567812345678", "-in", input, "-sigfile", filepath.Join(dir, "sig.der")).CombinedOutput(); err == nil {
			t.Fatalf("openssl verified a token signature over other bytes: %s", out)
		}
	})
}

func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func caBundle(t *testing.T, e *keydtest.Env) []byte {
	t.Helper()
	r, err := e.Keyd.CABundle(context.Background(), &keydv1.CABundleRequest{Suite: "gm"})
	if err != nil {
		t.Fatal(err)
	}
	return r.Pem
}
