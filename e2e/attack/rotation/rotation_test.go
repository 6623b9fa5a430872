// Package rotation rotates root keys through one keyd replica and holds
// the others to it: what one replica issues under a new generation must
// verify at every replica, and every replica must issue and publish it,
// within a second.
package rotation

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jwks"
	"github.com/podkey/podkey/pkg/token/jws"
)

// replicas starts n keyd replicas on one PostgreSQL database and one token.
func replicas(t *testing.T, n int) []*keydtest.Env {
	pg := pgtest.Start(t)
	conn := pg.NewDatabase(t)
	a := keydtest.StartOn(t, conn, nil)
	out := []*keydtest.Env{a}
	for range n - 1 {
		out = append(out, a.Replica(""))
	}
	return out
}

var kinds = map[string]object.Kind{"mac": object.APIKey, "derive": object.DerivedKey, "ca": object.Certificate, "jwt": object.Token}

// issue issues one object of kind and suite through e.
func issue(t *testing.T, e *keydtest.Env, k object.Kind, s suite.Name, uid string) *keydv1.Credential {
	t.Helper()
	sp := object.Spec{Name: "o", Kind: k, Suite: s}
	if err := sp.Normalize(); err != nil {
		t.Fatal(err)
	}
	req, _, err := keydclient.IssueRequest(pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "p-" + uid, UID: uid, Node: "node-1"}, "", []object.Spec{sp})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.Keyd.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Credentials[0]
}

// follows reports what replica r does not yet do of a rotation to gen
// through a, for the purpose's credential c issued by a ("" when all).
func follows(e, a *keydtest.Env, purpose string, s suite.Name, gen int64, c *keydv1.Credential, uid string) string {
	ctx := context.Background()
	if got := issueQuiet(e, kinds[purpose], s, uid); got != gen {
		return fmt.Sprintf("issues under generation %d", got)
	}
	switch purpose {
	case "mac":
		if err := verifyKey(e, s, c.GetApiKey()); err != nil {
			return "refuses the new API key: " + err.Error()
		}
	case "jwt":
		r, err := e.Keyd.TokenKeys(ctx, &keydv1.TokenKeysRequest{})
		if err != nil {
			return err.Error()
		}
		set, err := jwks.Parse(r.Jwks)
		if err != nil {
			return err.Error()
		}
		kid := kidOf(c.GetToken().GetJwt())
		st, pub, err := set.Find(kid)
		if err != nil {
			return "its JWK Set lacks " + kid
		}
		if _, err := jws.Verify(st, pub, c.GetToken().GetJwt()); err != nil {
			return err.Error()
		}
	case "ca":
		mine, err := e.Keyd.CABundle(ctx, &keydv1.CABundleRequest{Suite: string(s)})
		if err != nil {
			return err.Error()
		}
		theirs, _ := a.Keyd.CABundle(ctx, &keydv1.CABundleRequest{Suite: string(s)})
		if string(mine.Pem) != string(theirs.Pem) {
			return "publishes another CA bundle"
		}
		if s == suite.Intl && !chains(c.GetCertificate().GetCertPem(), mine.Pem) {
			return "its bundle does not verify the new certificate"
		}
	}
	return ""
}

// verifyKey asks e to verify a request signed with the API key ak.
func verifyKey(e *keydtest.Env, s suite.Name, ak *keydv1.APIKey) error {
	msg := []byte("GET /x")
	_, err := e.Keyd.Verify(context.Background(), &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: accesskey.Sign(s, ak.SecretKey, msg)})
	return err
}

// issueQuiet is issue's generation, 0 on an error.
func issueQuiet(e *keydtest.Env, k object.Kind, s suite.Name, uid string) int64 {
	sp := object.Spec{Name: "o", Kind: k, Suite: s}
	if sp.Normalize() != nil {
		return 0
	}
	req, _, err := keydclient.IssueRequest(pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "p-" + uid, UID: uid, Node: "node-1"}, "", []object.Spec{sp})
	if err != nil {
		return 0
	}
	resp, err := e.Keyd.Issue(context.Background(), req)
	if err != nil {
		return 0
	}
	return resp.Credentials[0].Generation
}

func kidOf(token string) string {
	hdr, _ := jws.DecodeSegment(strings.Split(token, ".")[0])
	i := strings.Index(string(hdr), `"kid":"`)
	if i < 0 {
		return ""
	}
	rest := string(hdr)[i+7:]
	return rest[:strings.IndexByte(rest, '"')]
}

func chains(certPEM, bundle []byte) bool {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return false
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return false
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// A rotation of any purpose and suite through one replica is followed by
// the others within a second: they issue under the new generation, verify
// what it issued, publish its key in their JWK Set and its CA in their
// bundle.
func TestRotationThroughOneReplicaIsFollowedByAll(t *testing.T) {
	rs := replicas(t, 3)
	a := rs[0]
	for _, purpose := range []string{"mac", "derive", "ca", "jwt"} {
		for _, s := range suite.All {
			r, err := a.Admin.RotateKey(context.Background(), &keydv1.RotateKeyRequest{Purpose: purpose, Suite: string(s)})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			c := issue(t, a, kinds[purpose], s, "uid-a")
			if c.Generation != r.Generation {
				t.Fatalf("%s/%s: the rotating replica issues under generation %d, not %d", purpose, s, c.Generation, r.Generation)
			}
			for i, e := range rs[1:] {
				var lag string
				for {
					if lag = follows(e, a, purpose, s, r.Generation, c, fmt.Sprintf("uid-%d", i)); lag == "" || time.Since(start) > 1500*time.Millisecond {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				if lag != "" {
					t.Fatalf("%s/%s: replica %d, %s after the rotation: %s", purpose, s, i+2, time.Since(start).Round(time.Millisecond), lag)
				}
			}
			t.Logf("%s/%s: every replica follows within %s", purpose, s, time.Since(start).Round(time.Millisecond))
		}
	}
}

// The audit key and the KEK rotated through one replica are used by the
// others: their next audit records take the new audit key generation,
// and a secret enrolled through another replica after a KEK rotation is
// wrapped under the new KEK (the old one is gone) and opens everywhere.
func TestAuditAndKEKRotationsAreFollowed(t *testing.T) {
	ctx := context.Background()
	rs := replicas(t, 3)
	a, b, c := rs[0], rs[1], rs[2]
	if _, err := a.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: "audit"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	issue(t, b, object.APIKey, suite.Intl, "uid-b")
	lines := c.AuditLines()
	last := lines[len(lines)-1]
	if !strings.Contains(last, `"keyGen":2`) || !strings.Contains(last, `"action":"issue"`) {
		t.Fatalf("the other replica's record after the audit key's rotation: %s", last)
	}
	if _, err := a.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: "kek"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if _, err := b.Admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "late", Value: []byte("late-secret")}); err != nil {
		t.Fatal(err)
	}
	for i, e := range rs {
		sp := object.Spec{Name: "late", Kind: object.Secret}
		_ = sp.Normalize()
		req, _, _ := keydclient.IssueRequest(pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "p", UID: "uid-s", Node: "node-1"}, "", []object.Spec{sp})
		resp, err := e.Keyd.Issue(ctx, req)
		if err != nil || string(resp.Credentials[0].GetSecret().GetValue()) != "late-secret" {
			t.Fatalf("replica %d opens the secret enrolled after the KEK rotation: %v", i+1, err)
		}
		if v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
			t.Fatalf("replica %d: audit %v %v", i+1, v, err)
		}
	}
}

// A generation is retired through one replica: refused while what it
// issued may be valid, refused for the current generation and for a
// force without a reason; forced with a reason it is destroyed, and every
// replica stops verifying what it issued and drops it from its CA bundle,
// JWK Set and status within a second. A generation that issued nothing
// retires without force.
func TestRetiredGenerationIsGoneEverywhere(t *testing.T) {
	ctx := context.Background()
	rs := replicas(t, 2)
	a := rs[0]
	for _, purpose := range []string{"mac", "ca", "jwt"} {
		s := suite.Intl
		old := issue(t, a, kinds[purpose], s, "uid-old-"+purpose)
		r, err := a.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: purpose, Suite: string(s)})
		if err != nil {
			t.Fatal(err)
		}
		retire := func(gen int64, force bool, reason string) error {
			_, err := a.Admin.RetireKey(ctx, &keydv1.RetireKeyRequest{Purpose: purpose, Suite: string(s), Generation: gen, Force: force, Reason: reason})
			return err
		}
		for _, c := range []struct {
			gen    int64
			force  bool
			reason string
			code   codes.Code
			why    string
		}{
			{old.Generation, false, "", codes.FailedPrecondition, "may be valid until"},
			{r.Generation, true, "x", codes.FailedPrecondition, "current generation"},
			{old.Generation, true, " ", codes.InvalidArgument, "needs a reason"},
		} {
			if err := retire(c.gen, c.force, c.reason); status.Code(err) != c.code || !strings.Contains(err.Error(), c.why) {
				t.Fatalf("%s g%d force=%v: %v", purpose, c.gen, c.force, err)
			}
		}
		if err := retire(old.Generation, true, "key compromise drill"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i, e := range rs {
			var left string
			for {
				if left = retired(e, purpose, s, old); left == "" || time.Since(start) > 1500*time.Millisecond {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if left != "" {
				t.Fatalf("%s/%s: replica %d, %s after the retirement: %s", purpose, s, i+1, time.Since(start).Round(time.Millisecond), left)
			}
		}
		t.Logf("%s/%s g%d: gone from every replica within %s", purpose, s, old.Generation, time.Since(start).Round(time.Millisecond))
	}
	// derive/gm: g2 issues nothing before g3 replaces it.
	for range 2 {
		if _, err := a.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: "derive", Suite: "gm"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Admin.RetireKey(ctx, &keydv1.RetireKeyRequest{Purpose: "derive", Suite: "gm", Generation: 2}); err != nil {
		t.Fatalf("an unused generation: %v", err)
	}
	audited := strings.Join(a.AuditLines(), "\n")
	for _, want := range []string{`"action":"key.retire"`, "key compromise drill", "podkey/derive/gm/g2", "no credential it issued can still be valid"} {
		if !strings.Contains(audited, want) {
			t.Fatalf("audit lacks %q", want)
		}
	}
	if v, err := a.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
		t.Fatalf("audit chain: %v %v", v, err)
	}
}

// retired reports what replica e still does of generation old.Generation
// ("" when nothing): verify its API key, publish its CA or its token key,
// list it.
func retired(e *keydtest.Env, purpose string, s suite.Name, old *keydv1.Credential) string {
	ctx := context.Background()
	st, err := e.Admin.Status(ctx, &keydv1.StatusRequest{})
	if err != nil {
		return err.Error()
	}
	for _, k := range st.Keys {
		if k.Purpose == purpose && k.Suite == string(s) && slices.Contains(k.Generations, old.Generation) {
			return "its status lists the generation"
		}
	}
	switch purpose {
	case "mac":
		if verifyKey(e, s, old.GetApiKey()) == nil {
			return "it verifies an API key of the retired generation"
		}
	case "jwt":
		r, err := e.Keyd.TokenKeys(ctx, &keydv1.TokenKeysRequest{})
		if err != nil {
			return err.Error()
		}
		set, err := jwks.Parse(r.Jwks)
		if err != nil {
			return err.Error()
		}
		if _, _, err := set.Find(kidOf(old.GetToken().GetJwt())); err == nil {
			return "its JWK Set still has the retired key"
		}
	case "ca":
		b, err := e.Keyd.CABundle(ctx, &keydv1.CABundleRequest{Suite: string(s)})
		if err != nil {
			return err.Error()
		}
		if chains(old.GetCertificate().GetCertPem(), b.Pem) {
			return "its CA bundle still verifies a certificate of the retired CA"
		}
	}
	return ""
}
