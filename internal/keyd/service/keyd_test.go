package service_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/suite"
)

var podA = &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "pay-a", PodUid: "0b7e1c1e-a", NodeName: "node-1"}

func csrPEM(t *testing.T, s suite.Name) []byte {
	k, _ := s.GenerateKey()
	der, err := smx509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func allKinds(t *testing.T) []*keydv1.ObjectRequest {
	return []*keydv1.ObjectRequest{
		{Name: "ledger-api", Kind: "apiKey"},
		{Name: "ledger-api-gm", Kind: "apiKey", Suite: "gm"},
		{Name: "mtls", Kind: "certificate", Algorithm: "sm2", Csr: csrPEM(t, suite.GM)},
		{Name: "mtls-intl", Kind: "certificate", Csr: csrPEM(t, suite.Intl)},
		{Name: "card-key", Kind: "derivedKey", Scope: "serviceAccount", Suite: "gm"},
		{Name: "svc-token", Kind: "token", Audience: []string{"ledger"}},
		{Name: "legacy-db", Kind: "secret"},
	}
}

func code(err error) codes.Code { return status.Code(err) }

func TestIssueEveryKindVerifyAndRevoke(t *testing.T) {
	hsmtest.Each(t, testIssueEveryKindVerifyAndRevoke)
}

func testIssueEveryKindVerifyAndRevoke(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	secretValue := []byte("legacy-password-Zq81")
	if _, err := e.Admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "legacy-db", Value: bytes.Clone(secretValue)}); err != nil {
		t.Fatal(err)
	}
	resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: allKinds(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Credentials) != 7 {
		t.Fatalf("%d credentials", len(resp.Credentials))
	}
	byName := map[string]*keydv1.Credential{}
	for _, c := range resp.Credentials {
		byName[c.Name] = c
		if !c.Expiry.AsTime().After(time.Now()) || c.Generation < 1 {
			t.Fatalf("%s: expiry %v generation %d", c.Name, c.Expiry.AsTime(), c.Generation)
		}
	}
	if !bytes.Equal(byName["legacy-db"].GetSecret().Value, secretValue) {
		t.Fatal("secret value differs")
	}
	for _, name := range []string{"ledger-api", "ledger-api-gm"} {
		ak := byName[name].GetApiKey()
		s := suite.Name(byName[name].Suite)
		msg := []byte("POST /ledger\nbody-hash")
		sig := accesskey.Sign(s, ak.SecretKey, msg)
		v, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: sig})
		if err != nil || v.PodUid != podA.PodUid || v.Object != name {
			t.Fatalf("verify %s: %v %v", name, v, err)
		}
		sig[0] ^= 1
		if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: sig}); code(err) != codes.Unauthenticated {
			t.Fatalf("tampered signature: %v", err)
		}
		sig[0] ^= 1
		forged := []byte(ak.AccessKeyId)
		forged[10] ^= 1
		if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: string(forged), StringToSign: msg, Signature: sig}); code(err) != codes.Unauthenticated && code(err) != codes.InvalidArgument {
			t.Fatalf("forged id: %v", err)
		}
	}
	if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: "AKIA-not-ours", Signature: []byte{1}}); code(err) != codes.InvalidArgument {
		t.Fatalf("malformed id: %v", err)
	}
	if _, err := e.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: podA}); err != nil {
		t.Fatal(err)
	}
	ak := byName["ledger-api"].GetApiKey()
	msg := []byte("m")
	if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg,
		Signature: accesskey.Sign(suite.Intl, ak.SecretKey, msg)}); code(err) != codes.PermissionDenied {
		t.Fatalf("revoked: %v", err)
	}
	// A revocation refuses the keys issued before it, and only those: a key
	// the pod obtains afterwards verifies, the old one still does not.
	again, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
	if err != nil {
		t.Fatalf("issue after revocation: %v", err)
	}
	fresh := again.Credentials[0].GetApiKey()
	if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: fresh.AccessKeyId, StringToSign: msg,
		Signature: accesskey.Sign(suite.Intl, fresh.SecretKey, msg)}); err != nil {
		t.Fatalf("a key issued after the revocation: %v", err)
	}
	if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg,
		Signature: accesskey.Sign(suite.Intl, ak.SecretKey, msg)}); code(err) != codes.PermissionDenied {
		t.Fatalf("the revoked key after a new issuance: %v", err)
	}
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact || v.Records < 8 {
		t.Fatalf("audit: %v %v", v, err)
	}
}

func TestRefusalsAndBadInput(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	other := &keydv1.PodIdentity{Namespace: "shop", ServiceAccount: "web", PodName: "w", PodUid: "u-w"}
	for _, c := range []struct {
		name string
		req  *keydv1.IssueRequest
		want codes.Code
	}{
		{"no policy rule", &keydv1.IssueRequest{Pod: other, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}, codes.PermissionDenied},
		{"unknown kind", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "password"}}}, codes.InvalidArgument},
		{"no objects", &keydv1.IssueRequest{Pod: podA}, codes.InvalidArgument},
		{"no pod", &keydv1.IssueRequest{Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}, codes.InvalidArgument},
		{"malformed CSR", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "c", Kind: "certificate", Csr: []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")}}}, codes.InvalidArgument},
		{"certificate without CSR", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "c", Kind: "certificate"}}}, codes.InvalidArgument},
		{"wrong suite CSR", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "c", Kind: "certificate", Algorithm: "sm2", Csr: csrPEM(t, suite.Intl)}}}, codes.InvalidArgument},
		{"not enrolled", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "nope", Kind: "secret"}}}, codes.NotFound},
		{"bad ttl", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey", Ttl: "forever"}}}, codes.InvalidArgument},
		{"duplicate", &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}, {Name: "k", Kind: "apiKey"}}}, codes.InvalidArgument},
	} {
		_, err := e.Keyd.Issue(ctx, c.req)
		if code(err) != c.want {
			t.Errorf("%s: got %v, want %s", c.name, err, c.want)
		}
	}
	// A partly valid request issues nothing: the enrolled secret is missing
	// after a valid apiKey, so no apiKey is returned and none is audited ok.
	before, _ := e.Admin.Status(ctx, &keydv1.StatusRequest{})
	_, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}, {Name: "nope", Kind: "secret"}}})
	if code(err) != codes.NotFound {
		t.Fatal(err)
	}
	after, _ := e.Admin.Status(ctx, &keydv1.StatusRequest{})
	if after.AuditRecords != before.AuditRecords+1 {
		t.Fatalf("audit records %d -> %d", before.AuditRecords, after.AuditRecords)
	}

	for _, bad := range []*keydv1.PutSecretRequest{
		{Namespace: "payments", Name: "big", Value: make([]byte, 64<<10+1)},
		{Namespace: "payments", Name: "empty"},
		{Namespace: "payments", Name: "../etc", Value: []byte("x")},
	} {
		if _, err := e.Admin.PutSecret(ctx, bad); code(err) != codes.InvalidArgument {
			t.Fatalf("put %q: %v", bad.Name, err)
		}
	}
	if l, _ := e.Admin.ListSecrets(ctx, &keydv1.ListSecretsRequest{}); len(l.Secrets) != 0 {
		t.Fatal("refused secret stored")
	}
	if _, err := e.Admin.SetPolicy(ctx, &keydv1.PolicyDocument{Yaml: []byte("version: v9")}); code(err) != codes.InvalidArgument {
		t.Fatalf("bad policy: %v", err)
	}
	if p, _ := e.Admin.GetPolicy(ctx, &keydv1.GetPolicyRequest{}); !bytes.Contains(p.Yaml, []byte("payments")) {
		t.Fatal("bad policy replaced the good one")
	}

	// Over TLS, a claimed identity is refused; the admin API is not served.
	ca, _ := e.Keyd.CABundle(ctx, &keydv1.CABundleRequest{Suite: "intl"})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	_ = os.WriteFile(caFile, ca.Pem, 0o600)
	conn := e.Dial(keydclient.Options{Address: e.Opts.Listen, CAFile: caFile, ServerName: "localhost"})
	_, err = keydv1.NewKeydClient(conn).Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}})
	if code(err) != codes.Unauthenticated {
		t.Fatalf("TLS claimed identity: %v", err)
	}
	if _, err := keydv1.NewAdminClient(conn).Status(ctx, &keydv1.StatusRequest{}); code(err) != codes.Unimplemented {
		t.Fatalf("admin over TLS: %v", err)
	}
}

func TestWithoutInsecureModeIdentityIsRefused(t *testing.T) {
	e := keydtest.Start(t, func(o *service.Options) { o.InsecureLocalIdentity = false })
	_, err := e.Keyd.Issue(context.Background(), &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}})
	if code(err) != codes.Unauthenticated {
		t.Fatalf("got %v", err)
	}
}

// TestNoSecretInStoreOrLogs issues every kind, then scans keyd's store file
// and every log line for each secret value in raw, base64, base64url and hex
// form, and for the pod token.
func TestNoSecretInStoreOrLogs(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	secretValue := []byte("enrolled-value-8f3e2d")
	_, _ = e.Admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "legacy-db", Value: bytes.Clone(secretValue)})
	token := "eyJhbGciOiJSUzI1NiJ9.pod-token-sentinel.sig"
	var secrets [][]byte
	for i := 0; i < 3; i++ {
		resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, PodToken: token, Objects: allKinds(t)})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.Credentials {
			switch {
			case c.GetApiKey() != nil:
				secrets = append(secrets, c.GetApiKey().SecretKey)
			case c.GetDerivedKey() != nil:
				secrets = append(secrets, c.GetDerivedKey().Key)
			case c.GetToken() != nil:
				secrets = append(secrets, []byte(c.GetToken().Jwt))
			case c.GetSecret() != nil:
				secrets = append(secrets, c.GetSecret().Value)
			}
		}
	}
	// Failures log too: make some.
	_, _ = e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: &keydv1.PodIdentity{Namespace: "x", ServiceAccount: "y", PodName: "z", PodUid: "u"}, PodToken: token, Objects: allKinds(t)})
	_, _ = e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: "PKxx", Signature: secrets[0]})
	e.Stop()
	storeBytes, err := os.ReadFile(e.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	logs := e.Logs.Bytes()
	if len(logs) == 0 {
		t.Fatal("no logs captured")
	}
	for _, s := range append(secrets, secretValue, []byte(token)) {
		for _, form := range [][]byte{s, []byte(base64.StdEncoding.EncodeToString(s)),
			[]byte(base64.RawURLEncoding.EncodeToString(s)), []byte(hex.EncodeToString(s))} {
			if bytes.Contains(storeBytes, form) {
				t.Fatalf("store file contains a secret (%d bytes)", len(s))
			}
			if bytes.Contains(logs, form) {
				t.Fatalf("logs contain a secret (%d bytes)", len(s))
			}
		}
	}
}

func TestAuditTamperingIsDetected(t *testing.T) { hsmtest.Each(t, testAuditTamperingIsDetected) }

func testAuditTamperingIsDetected(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	for i := 0; i < 4; i++ {
		if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}); err != nil {
			t.Fatal(err)
		}
	}
	e.Stop()
	// Flip the namespace of record 3 inside the store file, in every copy
	// bbolt keeps (freed pages may hold older copies of the same record).
	data, _ := os.ReadFile(e.StorePath)
	n := 0
	for i := 0; i+len(`"seq":3,`) <= len(data); i++ {
		if !bytes.HasPrefix(data[i:], []byte(`"seq":3,`)) {
			continue
		}
		j := bytes.Index(data[i:], []byte(`"namespace":"payments"`))
		if j < 0 || j > 200 {
			continue
		}
		copy(data[i+j:], []byte(`"namespace":"paymentz"`))
		n++
	}
	if n == 0 {
		t.Fatal("record 3 not found in the store file")
	}
	_ = os.WriteFile(e.StorePath, data, 0o600)
	e.Run()
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || v.Intact || v.BrokenAt != 3 {
		t.Fatalf("tampered audit: %v %v", v, err)
	}
}

func TestHealth(t *testing.T) {
	e := keydtest.Start(t, nil)
	conn := e.Dial(keydclient.Options{Socket: e.Opts.Socket})
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
}

// signedRequest issues pod A an API key and returns the Verify request a
// backend would make for an HTTP request signed with it at when.
func signedRequest(t *testing.T, e *keydtest.Env, when time.Time) *keydv1.VerifyRequest {
	t.Helper()
	resp, err := e.Keyd.Issue(context.Background(), &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}})
	if err != nil {
		t.Fatal(err)
	}
	ak := resp.Credentials[0].GetApiKey()
	r, _ := http.NewRequest("POST", "https://ledger/v1/transfers", strings.NewReader(`{"amount":1}`))
	if err := reqsign.Sign(r, suite.Intl, ak.AccessKeyId, ak.SecretKey, when); err != nil {
		t.Fatal(err)
	}
	a, sts, err := reqsign.Canonical(r)
	if err != nil {
		t.Fatal(err)
	}
	return &keydv1.VerifyRequest{AccessKeyId: a.AccessKeyID, StringToSign: sts, Signature: a.Signature}
}

func TestVerifyRefusesStaleAndReplayedSignedRequests(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	verify := func(when time.Time) error {
		req := signedRequest(t, e, when)
		_, err := e.Keyd.Verify(ctx, req)
		if err == nil {
			_, err2 := e.Keyd.Verify(ctx, req)
			if status.Code(err2) != codes.Unauthenticated || !strings.Contains(err2.Error(), "replay") {
				t.Fatalf("replay accepted: %v", err2)
			}
		}
		return err
	}
	if err := verify(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := verify(time.Now().Add(-10 * time.Minute)); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "freshness") {
		t.Fatalf("stale request: %v", err)
	}
	// Version 1 of the scheme is retired: its strings to sign are refused.
	resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}})
	if err != nil {
		t.Fatal(err)
	}
	ak := resp.Credentials[0].GetApiKey()
	v1 := []byte("PODKEY1-HMAC-SHA256\n" + time.Now().UTC().Format(reqsign.DateFormat) + "\nbm9uY2Utbm9uY2Utbm9uY2U\nGET\n/v1/x\n\nhost:h\nhost\n")
	req := &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: v1, Signature: accesskey.Sign(suite.Intl, ak.SecretKey, v1)}
	if _, err := e.Keyd.Verify(ctx, req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "retired") {
		t.Fatalf("version 1: %v", err)
	}
}

// TestReplayRefusedAfterRestart: an accepted signed request's nonce is
// durable with its audit record, so a keyd restarted on the same store
// (or, sharing the store, another replica) refuses the request again; the
// store forgets nonces past the freshness window.
func TestReplayRefusedAfterRestart(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	req := signedRequest(t, e, time.Now())
	if _, err := e.Keyd.Verify(ctx, req); err != nil {
		t.Fatal(err)
	}
	e.Stop()
	e.Run()
	if _, err := e.Keyd.Verify(ctx, req); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("replay after a restart: %v", err)
	}
	e.Stop()
	st, err := store.OpenBolt(e.StorePath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, err := st.PruneNonces(ctx, time.Now()); err != nil || n != 0 {
		t.Fatalf("pruned a nonce inside its window: %d %v", n, err)
	}
	if n, err := st.PruneNonces(ctx, time.Now().Add(11*time.Minute)); err != nil || n != 1 {
		t.Fatalf("pruned %d nonces past the window: %v", n, err)
	}
}

// TestOverloadRefusesWithRetryHint: with one call in progress allowed and
// no queue, a burst of Issue calls through the real server gets answers
// or ResourceExhausted with a retry hint, nothing else; every refused
// call succeeds when tried again after the hint; the audit chain holds.
func TestOverloadRefusesWithRetryHint(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := keydtest.Start(t, func(o *service.Options) { o.MaxInflight, o.MaxQueued, o.Registerer = 1, -1, reg })
	ctx := context.Background()
	req := &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}}
	refused := 0
	for round := 0; round < 20 && refused == 0; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 32)
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = e.Keyd.Issue(ctx, req) }()
		}
		wg.Wait()
		for _, err := range errs {
			switch code(err) {
			case codes.OK:
			case codes.ResourceExhausted:
				refused++
				if keydv1.RetryDelay(err) <= 0 {
					t.Fatalf("a refusal without a retry hint: %v", err)
				}
				// As a client does: after the hinted delay (the slot is freed
				// when the server ends the stream, a moment after its answer).
				time.Sleep(keydv1.RetryDelay(err))
				if _, err := e.Keyd.Issue(ctx, req); err != nil {
					t.Fatalf("a refused call tried again: %v", err)
				}
			default:
				t.Fatalf("under overload: %v", err)
			}
		}
	}
	if refused == 0 {
		t.Fatal("20 bursts of 32 calls against one slot and no queue: none refused")
	}
	// The metrics count what happened, by method and code only.
	if n := counterValue(t, reg, "podkey_keyd_admission_refused_total"); int(n) != refused {
		t.Fatalf("refusals counted %v, seen %d", n, refused)
	}
	var exposition strings.Builder
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				fmt.Fprintf(&exposition, "%s=%s ", l.GetName(), l.GetValue())
			}
		}
	}
	if !strings.Contains(exposition.String(), "method=Issue code=OK") {
		t.Fatalf("no Issue calls counted: %s", exposition.String())
	}
	for _, leak := range []string{podA.PodUid, podA.PodName, "payments"} {
		if strings.Contains(exposition.String(), leak) {
			t.Fatalf("a metric label holds %q: %s", leak, exposition.String())
		}
	}
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact {
		t.Fatalf("audit after overload: %v %v", v, err)
	}
}

// TestForcedRenewalRefusesThePastOfItsScope: an operator's renewal of a
// service account refuses the API keys its pods obtained before it, not
// those of other service accounts nor those obtained after; nodes can
// follow the orders by sequence; bad scopes are refused.
func TestForcedRenewalRefusesThePastOfItsScope(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	e := keydtest.Start(t, func(o *service.Options) { o.Now = func() time.Time { return clock() } })
	ctx := context.Background()
	other := &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "batch", PodName: "b", PodUid: "0b7e1c1e-b", NodeName: "node-1"}
	key := func(p *keydv1.PodIdentity) *keydv1.APIKey {
		r, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: p, Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Credentials[0].GetApiKey()
	}
	verify := func(ak *keydv1.APIKey) error {
		msg := []byte("m")
		_, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: accesskey.Sign(suite.Intl, ak.SecretKey, msg)})
		return err
	}
	if _, err := e.Admin.SetPolicy(ctx, &keydv1.PolicyDocument{Yaml: []byte(keydtest.PolicyYAML + "- {namespace: payments, serviceAccount: batch, objects: [\"*\"]}\n")}); err != nil {
		t.Fatal(err)
	}
	before, untouched := key(podA), key(other)
	now = now.Add(time.Second)
	r, err := e.Admin.ForceRenewal(ctx, &keydv1.ForceRenewalRequest{Namespace: "payments", ServiceAccount: "payments"})
	if err != nil || r.Seq != 1 {
		t.Fatalf("renewal: %v %v", r, err)
	}
	now = now.Add(time.Second)
	after := key(podA)
	if err := verify(before); code(err) != codes.PermissionDenied {
		t.Fatalf("a key obtained before the renewal: %v", err)
	}
	if err := verify(after); err != nil {
		t.Fatalf("a key obtained after the renewal: %v", err)
	}
	if err := verify(untouched); err != nil {
		t.Fatalf("another service account's key: %v", err)
	}
	list, err := e.Keyd.Renewals(ctx, &keydv1.RenewalsRequest{})
	if err != nil || len(list.Renewals) != 1 || list.Renewals[0].ServiceAccount != "payments" {
		t.Fatalf("renewals: %v %v", list, err)
	}
	if list, _ := e.Keyd.Renewals(ctx, &keydv1.RenewalsRequest{AfterSeq: 1}); len(list.Renewals) != 0 {
		t.Fatalf("renewals after the last: %v", list)
	}
	for _, bad := range []*keydv1.ForceRenewalRequest{{}, {ServiceAccount: "payments"}, {Namespace: "Pay Ments"}, {PodUid: "u", Namespace: "payments"}} {
		if _, err := e.Admin.ForceRenewal(ctx, bad); code(err) != codes.InvalidArgument {
			t.Fatalf("renewal %v: %v", bad, err)
		}
	}
	if v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
		t.Fatalf("audit: %v %v", v, err)
	}
}

// counterValue reads a counter without labels from a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

// TestTwoKeydsOnOnePostgres: two keyd servers on one HSM token and one
// PostgreSQL database issue at once; each verifies what the other issued,
// a revocation through one holds at the other, and the shared audit chain
// is gapless and verifies record by record.
func TestTwoKeydsOnOnePostgres(t *testing.T) {
	pg := pgtest.Start(t)
	conn := pg.NewDatabase(t)
	a := keydtest.StartOn(t, conn, nil)
	b := a.Replica("")
	ctx := context.Background()
	// Replicas' state is the database's: keyd does not copy it.
	if stream, err := a.Admin.BackupStore(ctx, &keydv1.BackupStoreRequest{}); err == nil {
		if _, err := stream.Recv(); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "pg_dump") {
			t.Fatalf("backup of a PostgreSQL keyd: %v", err)
		}
	}
	issue := func(e *keydtest.Env, uid string) *keydv1.APIKey {
		p := &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"}
		r, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: p, Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
		if err != nil {
			t.Error(err)
			return nil
		}
		return r.Credentials[0].GetApiKey()
	}
	verify := func(e *keydtest.Env, ak *keydv1.APIKey) error {
		msg := []byte("m")
		_, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: accesskey.Sign(suite.Intl, ak.SecretKey, msg)})
		return err
	}
	var wg sync.WaitGroup
	keys := make([]*keydv1.APIKey, 40)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := a
			if i%2 == 1 {
				e = b
			}
			keys[i] = issue(e, fmt.Sprintf("uid-%d", i))
		}()
	}
	wg.Wait()
	for i, k := range keys {
		other := b
		if i%2 == 1 {
			other = a
		}
		if k == nil {
			t.Fatalf("issue %d failed", i)
		}
		if err := verify(other, k); err != nil {
			t.Fatalf("key %d through the other replica: %v", i, err)
		}
	}
	if _, err := a.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-uid-1", PodUid: "uid-1", NodeName: "node-1"}}); err != nil {
		t.Fatal(err)
	}
	if err := verify(b, keys[1]); code(err) != codes.PermissionDenied {
		t.Fatalf("a revocation through one replica, at the other: %v", err)
	}
	// A signed request verified by one replica is a replay at the other.
	req := signedRequest(t, a, time.Now())
	if _, err := a.Keyd.Verify(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Keyd.Verify(ctx, req); code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("a request verified by one replica, replayed to the other: %v", err)
	}
	// A policy rule added through one replica allows at the other within a
	// second (keyd reads the stored policy twice a second).
	shop := &keydv1.PodIdentity{Namespace: "shop", ServiceAccount: "shop", PodName: "s", PodUid: "uid-shop", NodeName: "node-1"}
	shopReq := &keydv1.IssueRequest{Pod: shop, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}
	if _, err := b.Keyd.Issue(ctx, shopReq); code(err) != codes.PermissionDenied {
		t.Fatalf("before the rule: %v", err)
	}
	if _, err := a.Admin.AddPolicyRule(ctx, &keydv1.PolicyRule{Namespace: "shop", ServiceAccount: "shop", Objects: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	added := time.Now()
	for {
		_, err := b.Keyd.Issue(ctx, shopReq)
		if err == nil {
			t.Logf("the rule added through one replica allowed at the other after %v", time.Since(added).Round(time.Millisecond))
			break
		}
		if code(err) != codes.PermissionDenied || time.Since(added) > time.Second {
			t.Fatalf("the rule added through one replica, at the other after %v: %v", time.Since(added), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	v, err := b.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact || v.Records < 40+40+1 {
		t.Fatalf("the shared audit chain: %v %v", v, err)
	}
}

// TestRevocationCutoffsAreTheDatabaseClock: replicas sharing PostgreSQL
// take issue times and revocation cutoffs from the database's clock, so
// a replica whose own clock is ten minutes behind or ahead neither lets a
// key minted just before its revocation survive, nor mints keys that
// outlive a revocation taken after them; a revocation still never
// poisons a key minted after it.
func TestRevocationCutoffsAreTheDatabaseClock(t *testing.T) {
	pg := pgtest.Start(t)
	a := keydtest.StartOn(t, pg.NewDatabase(t), nil)
	skewed := func(d time.Duration) func(*service.Options) {
		return func(o *service.Options) { o.LocalClock = func() time.Time { return time.Now().Add(d) } }
	}
	behind, ahead := a.Replica("", skewed(-10*time.Minute)), a.Replica("", skewed(10*time.Minute))
	ctx := context.Background()
	pod := func(uid string) *keydv1.PodIdentity {
		return &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"}
	}
	issue := func(e *keydtest.Env, uid string) *keydv1.APIKey {
		t.Helper()
		r, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: pod(uid), Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Credentials[0].GetApiKey()
	}
	verify := func(e *keydtest.Env, ak *keydv1.APIKey) error {
		msg := []byte("m")
		_, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: accesskey.Sign(suite.Intl, ak.SecretKey, msg)})
		return err
	}
	revoke := func(e *keydtest.Env, uid string) {
		t.Helper()
		if _, err := e.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: pod(uid)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name            string
		minter, revoker *keydtest.Env
	}{
		{"revoked through a replica whose clock is behind", a, behind},
		{"minted by a replica whose clock is ahead", ahead, a},
		{"both skewed, opposite ways", ahead, behind},
	} {
		uid := strings.ReplaceAll(c.name, " ", "-")
		// A second apart: far more than the replicas' error in measuring
		// the database's clock (half a round trip), far less than the
		// ten minutes their own clocks are off.
		before := issue(c.minter, uid)
		time.Sleep(time.Second)
		revoke(c.revoker, uid)
		time.Sleep(time.Second)
		for _, at := range []*keydtest.Env{a, behind, ahead} {
			if err := verify(at, before); code(err) != codes.PermissionDenied {
				t.Errorf("%s: a key minted before the revocation verifies: %v", c.name, err)
			}
		}
		after := issue(c.minter, uid)
		for _, at := range []*keydtest.Env{a, behind, ahead} {
			if err := verify(at, after); err != nil {
				t.Errorf("%s: a key minted after the revocation: %v", c.name, err)
			}
		}
	}
}

// TestPostgresRestartUnderLoad: with the database restarted in the middle
// of a burst of issues, calls fail Unavailable (never anything else) while
// it is down and succeed again once it is back, without restarting keyd;
// the audit chain verifies.
func TestPostgresRestartUnderLoad(t *testing.T) {
	pg := pgtest.Start(t)
	conn := pg.NewDatabase(t)
	e := keydtest.StartOn(t, conn, nil)
	ctx := context.Background()
	var ok, unavailable, other atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p", PodUid: fmt.Sprintf("uid-%d-%d", w, i), NodeName: "node-1"}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := e.Keyd.Issue(cctx, &keydv1.IssueRequest{Pod: p, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}})
				cancel()
				switch code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.Unavailable:
					unavailable.Add(1)
					time.Sleep(10 * time.Millisecond)
				default:
					if other.Add(1) == 1 {
						t.Errorf("neither served nor Unavailable: %v", err)
					}
				}
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: %d served, %d unavailable, %d other", what, ok.Load(), unavailable.Load(), other.Load())
			}
		}
	}
	waitFor("the first issues", func() bool { return ok.Load() > 50 })
	pg.Stop(t)
	waitFor("calls refused Unavailable", func() bool { return unavailable.Load() > 0 })
	pg.Start(t)
	before := ok.Load()
	waitFor("issues after the restart", func() bool { return ok.Load() > before+50 })
	close(stop)
	wg.Wait()
	t.Logf("%d served, %d refused Unavailable while the database was down", ok.Load(), unavailable.Load())
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact || v.Records < uint64(ok.Load()) {
		t.Fatalf("the audit chain after the restart: %v %v", v, err)
	}
}

func TestKEKRotationThroughTheAdminAPI(t *testing.T) {
	hsmtest.Each(t, testKEKRotationThroughTheAdminAPI)
}

func testKEKRotationThroughTheAdminAPI(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	value := []byte("legacy-password-before-rotation")
	if _, err := e.Admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "legacy-db", Value: bytes.Clone(value)}); err != nil {
		t.Fatal(err)
	}
	r, err := e.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: "kek"})
	if err != nil || r.Generation != 2 {
		t.Fatalf("rotate kek: %v %v", r, err)
	}
	objs := []*keydv1.ObjectRequest{{Name: "legacy-db", Kind: "secret"}, {Name: "mtls", Kind: "certificate", Algorithm: "sm2", Csr: csrPEM(t, suite.GM)}}
	resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: objs})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.Credentials[0].GetSecret().Value, value) {
		t.Fatal("the secret changed across the rotation")
	}
	// After a restart (keys loaded from their new copies) too.
	e.Stop()
	e.Run()
	if resp, err = e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: objs}); err != nil || !bytes.Equal(resp.Credentials[0].GetSecret().Value, value) {
		t.Fatalf("after restart: %v", err)
	}
	if v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
		t.Fatalf("audit: %v %v", v, err)
	}
	stream, err := e.Admin.ExportAudit(ctx, &keydv1.ExportAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var rotation string
	for {
		rec, err := stream.Recv()
		if err != nil {
			break
		}
		if strings.Contains(string(rec.Json), `"kek/g2"`) {
			rotation = string(rec.Json)
		}
	}
	if !strings.Contains(rotation, `"action":"key.rotate"`) || !strings.Contains(rotation, "1 secrets") {
		t.Fatalf("the rotation's audit record: %q", rotation)
	}
}

func TestAuditKeyRotationThroughTheAdminAPI(t *testing.T) {
	hsmtest.Each(t, testAuditKeyRotationThroughTheAdminAPI)
}

func testAuditKeyRotationThroughTheAdminAPI(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	issue := func() {
		if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}}); err != nil {
			t.Fatal(err)
		}
	}
	issue()
	r, err := e.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: "audit"})
	if err != nil || r.Generation != 2 {
		t.Fatalf("rotate audit: %v %v", r, err)
	}
	issue()
	e.Stop()
	e.Run() // a restarted keyd writes under generation 2 too
	issue()
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact || v.Records < 4 {
		t.Fatalf("verify after the rotation: %v %v", v, err)
	}
	stream, err := e.Admin.ExportAudit(ctx, &keydv1.ExportAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var gens []string
	for {
		rec, err := stream.Recv()
		if err != nil {
			break
		}
		gens = append(gens, fmt.Sprint(strings.Contains(string(rec.Json), `"keyGen":2`)))
	}
	// Records before the rotation under generation 1, every one from the
	// rotation's own record on under generation 2.
	if got := strings.Join(gens, " "); !strings.HasPrefix(got, "false") || !strings.HasSuffix(got, "true true true") || strings.Contains(got, "true false") {
		t.Fatalf("generations along the chain: %s", got)
	}
}

// TestRotationRunbook follows docs/operations.md for mac, derive, ca and
// jwt in both suites: what was issued before a rotation keeps working, new
// credentials come from the new generation, and pods of one service
// account disagree on a serviceAccount-scoped derived key until each
// renews.
func TestRotationRunbook(t *testing.T) { hsmtest.Each(t, testRotationRunbook) }

func testRotationRunbook(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	pod := func(uid string) *keydv1.PodIdentity {
		return &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"}
	}
	issue := func(p *keydv1.PodIdentity, o *keydv1.ObjectRequest) *keydv1.Credential {
		t.Helper()
		r, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: p, Objects: []*keydv1.ObjectRequest{o}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Credentials[0]
	}
	rotate := func(purpose, s string) {
		t.Helper()
		if _, err := e.Admin.RotateKey(ctx, &keydv1.RotateKeyRequest{Purpose: purpose, Suite: s}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{"intl", "gm"} {
		st, _ := suite.Parse(s)
		// mac: an API key of generation 1 still verifies after the rotation.
		old := issue(pod("mac-"+s), &keydv1.ObjectRequest{Name: "ledger-api", Kind: "apiKey", Suite: s})
		rotate("mac", s)
		msg := []byte("GET /ledger")
		if _, err := e.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: old.GetApiKey().AccessKeyId, StringToSign: msg,
			Signature: accesskey.Sign(st, old.GetApiKey().SecretKey, msg)}); err != nil {
			t.Fatalf("%s: an API key from before the mac rotation: %v", s, err)
		}
		if c := issue(pod("mac2-"+s), &keydv1.ObjectRequest{Name: "ledger-api", Kind: "apiKey", Suite: s}); c.Generation != 2 {
			t.Fatalf("%s: new API key of generation %d", s, c.Generation)
		}

		// derive, scope serviceAccount: pods disagree until each renews.
		dk := &keydv1.ObjectRequest{Name: "card-key", Kind: "derivedKey", Scope: "serviceAccount", Suite: s}
		a := issue(pod("a-"+s), dk).GetDerivedKey().Key
		rotate("derive", s)
		b := issue(pod("b-"+s), dk).GetDerivedKey().Key
		if bytes.Equal(a, b) {
			t.Fatalf("%s: the derived key did not change with the derive rotation", s)
		}
		if a2 := issue(pod("a-"+s), dk).GetDerivedKey().Key; !bytes.Equal(a2, b) {
			t.Fatalf("%s: after renewing, pod a's key differs from pod b's", s)
		}

		// ca: an old certificate still chains to the bundle pods receive.
		alg := map[string]string{"intl": "ecdsa-p256", "gm": "sm2"}[s]
		certReq := func() *keydv1.ObjectRequest {
			return &keydv1.ObjectRequest{Name: "mtls", Kind: "certificate", Algorithm: alg, Csr: csrPEM(t, st)}
		}
		oldCert := issue(pod("ca-"+s), certReq()).GetCertificate()
		rotate("ca", s)
		newCert := issue(pod("ca2-"+s), certReq()).GetCertificate()
		if strings.Count(string(newCert.CaBundlePem), "BEGIN CERTIFICATE") != 2 {
			t.Fatalf("%s: the bundle after the CA rotation holds %d CAs", s, strings.Count(string(newCert.CaBundlePem), "BEGIN CERTIFICATE"))
		}
		for name, c := range map[string][]byte{"old": oldCert.CertPem, "new": newCert.CertPem} {
			if err := chains(c, newCert.CaBundlePem); err != nil {
				t.Fatalf("%s: the %s certificate against the new bundle: %v", s, name, err)
			}
		}

		// jwt: the JWK Set names the old token's key and the new one's.
		oldTok := issue(pod("jwt-"+s), &keydv1.ObjectRequest{Name: "svc-token", Kind: "token", Suite: s}).GetToken().Jwt
		rotate("jwt", s)
		newTok := issue(pod("jwt2-"+s), &keydv1.ObjectRequest{Name: "svc-token", Kind: "token", Suite: s}).GetToken().Jwt
		set, err := e.Keyd.TokenKeys(ctx, &keydv1.TokenKeysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for name, jwt := range map[string]string{"old": oldTok, "new": newTok} {
			if kid := tokenKid(t, jwt); !strings.Contains(string(set.Jwks), `"`+kid+`"`) {
				t.Fatalf("%s: the JWK Set lacks the %s token's key %q", s, name, kid)
			}
		}
		if tokenKid(t, oldTok) == tokenKid(t, newTok) {
			t.Fatalf("%s: the jwt rotation kept the signing key", s)
		}
	}
}

func tokenKid(t *testing.T, jwt string) string {
	t.Helper()
	h, err := base64.RawURLEncoding.DecodeString(strings.Split(jwt, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct{ Kid string }
	if err := json.Unmarshal(h, &hdr); err != nil || hdr.Kid == "" {
		t.Fatalf("token header %s: %v", h, err)
	}
	return hdr.Kid
}

// chains verifies a PEM certificate against a PEM bundle of roots.
func chains(certPEM, bundle []byte) error {
	pool := smx509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return fmt.Errorf("no CA in the bundle")
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return fmt.Errorf("not PEM")
	}
	c, err := smx509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	_, err = c.Verify(smx509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// A policy file replaces the stored policy at start only as an explicit,
// audited choice: replace says what it dropped (rules added at run
// time); seed leaves a stored policy alone.
func TestPolicyFileModes(t *testing.T) {
	ctx := context.Background()
	for _, seed := range []bool{false, true} {
		e := keydtest.Start(t, func(o *service.Options) { o.PolicyFileSeeds = seed })
		if _, err := e.Admin.AddPolicyRule(ctx, &keydv1.PolicyRule{Namespace: "shop", ServiceAccount: "shop", Objects: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		e.Stop()
		e.Run()
		doc, err := e.Admin.GetPolicy(ctx, &keydv1.GetPolicyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		kept := strings.Contains(string(doc.Yaml), "shop")
		if kept != seed {
			t.Fatalf("seed=%v: the run-time rule kept: %v\n%s", seed, kept, doc.Yaml)
		}
		var last string
		stream, _ := e.Admin.ExportAudit(ctx, &keydv1.ExportAuditRequest{})
		for {
			r, err := stream.Recv()
			if err != nil {
				break
			}
			if strings.Contains(string(r.Json), `"policy.set"`) {
				last = string(r.Json)
			}
		}
		if !seed && !strings.Contains(last, "replacing the stored policy of 2 rules (1 not in the file)") {
			t.Fatalf("the replacement's audit record: %s", last)
		}
	}
}
