package tokenverify_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/token/jwks"
	"github.com/podkey/podkey/pkg/token/tokenverify"
)

var pod = &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "pay-a", PodUid: "0b7e1c1e-a", NodeName: "node-1"}

// issueToken mints a token object of a suite for the ledger audience.
func issueToken(t *testing.T, e *keydtest.Env, st string) string {
	resp, err := e.Keyd.Issue(context.Background(), &keydv1.IssueRequest{Pod: pod,
		Objects: []*keydv1.ObjectRequest{{Name: "svc-token", Kind: "token", Suite: st, Audience: []string{"ledger"}}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Credentials[0].GetToken().GetJwt()
}

// TestTokensVerifyAgainstTheServedKeySet: a real keyd serves its JWK Set
// over HTTPS; a receiver that trusts podkey's CA verifies tokens of both
// suites with it, through a rotation of the token key, and refuses
// tokens for another audience, expired, or tampered with.
func TestTokensVerifyAgainstTheServedKeySet(t *testing.T) {
	addr := keydtest.FreeAddr(t)
	e := keydtest.Start(t, func(o *service.Options) { o.JWKSListen = addr })
	ctx := context.Background()
	bundle, err := e.Keyd.CABundle(ctx, &keydv1.CABundleRequest{Suite: "intl"})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle.Pem)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
	remote := &tokenverify.Remote{URL: "https://" + addr + jwks.WellKnownPath, Client: client}
	v := &tokenverify.Verifier{Keys: remote, Audience: "ledger"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := remote.Keys(ctx, true); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the JWK Set is not served: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, st := range []string{"intl", "gm"} {
		tok := issueToken(t, e, st)
		c, err := v.Verify(ctx, tok)
		if err != nil {
			t.Fatalf("%s token: %v", st, err)
		}
		if c.Podkey.PodUID != pod.PodUid || c.Podkey.Object != "svc-token" || c.Subject != "system:serviceaccount:payments:payments" {
			t.Fatalf("%s claims: %+v", st, c)
		}
		other := &tokenverify.Verifier{Keys: remote, Audience: "payroll"}
		if _, err := other.Verify(ctx, tok); !errors.Is(err, tokenverify.ErrClaims) {
			t.Fatalf("%s token for another audience: %v", st, err)
		}
		late := &tokenverify.Verifier{Keys: remote, Audience: "ledger", Now: func() time.Time { return time.Now().Add(48 * time.Hour) }}
		if _, err := late.Verify(ctx, tok); !errors.Is(err, tokenverify.ErrClaims) {
			t.Fatalf("%s token after expiry: %v", st, err)
		}
		parts := strings.Split(tok, ".")
		claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
		forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(claims), "ledger", "payroll", 1))) + "." + parts[2]
		if _, err := other.Verify(ctx, forged); !errors.Is(err, tokenverify.ErrSignature) {
			t.Fatalf("%s token with an edited audience: %v", st, err)
		}
	}
	// A rotation: the new generation's tokens verify once the receiver
	// refreshes for their unknown kid; the old generation's still do.
	old := issueToken(t, e, "intl")
	if _, err := e.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: "jwt", Suite: "intl"}); err != nil {
		t.Fatal(err)
	}
	fresh := issueToken(t, e, "intl")
	remote.MinRefresh = time.Nanosecond
	for _, tok := range []string{fresh, old} {
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatalf("after a rotation: %v", err)
		}
	}
}

// TestPythonVerifiesTokens: an independent implementation (Python's
// cryptography package for ES256, SM2 written out over hashlib's SM3 for
// SM2SM3: docs/examples/python/podkey_verify_token.py) verifies podkey
// tokens of both suites against `podkey token jwks`'s set, on each module
// (gm tokens signed inside the SM module), and refuses them for another
// audience and with a changed signature.
func TestPythonVerifiesTokens(t *testing.T) {
	if err := exec.Command("python3", "-c", "import cryptography").Run(); err != nil {
		t.Fatal("python3 with cryptography missing: run hack/install-deps.sh")
	}
	hsmtest.Each(t, func(t *testing.T, m hsmtest.Module) {
		for _, st := range []string{"intl", "gm"} {
			t.Run(st, func(t *testing.T) { pythonVerifies(t, m, st) })
		}
	})
}

func pythonVerifies(t *testing.T, m hsmtest.Module, st string) {
	e := keydtest.StartOnModule(t, m, nil)
	ctx := context.Background()
	set, err := e.Keyd.TokenKeys(ctx, &keydv1.TokenKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, set.Jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	tok := issueToken(t, e, st)
	run := func(token, aud string) (string, error) {
		cmd := exec.Command("python3", "../../../docs/examples/python/podkey_verify_token.py", file, aud)
		cmd.Stdin = strings.NewReader(token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(tok, "ledger"); err != nil || !strings.Contains(out, `"podUID": "`+pod.PodUid+`"`) {
		t.Fatalf("python refused a good token: %v\n%s", err, out)
	}
	if out, err := run(tok, "payroll"); err == nil {
		t.Fatalf("python accepted another audience:\n%s", out)
	}
	dot := strings.LastIndex(tok, ".")
	sig := []byte(tok[dot+1:])
	if sig[10] == 'A' {
		sig[10] = 'B'
	} else {
		sig[10] = 'A'
	}
	if out, err := run(tok[:dot+1]+string(sig), "ledger"); err == nil {
		t.Fatalf("python accepted a changed signature:\n%s", out)
	}
}
