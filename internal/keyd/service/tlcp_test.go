package service_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"google.golang.org/grpc/codes"

	"github.com/podkey/podkey/internal/keyd/approval/approvaltest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
)

// issueTLCP issues a tlcp object for podA as a node does and opens it.
func issueTLCP(t *testing.T, e *keydtest.Env) (keydclient.TLCPPair, *keydv1.Credential) {
	t.Helper()
	sp := object.Spec{Name: "link", Kind: object.TLCP, TTLText: "2h"}
	if err := sp.Normalize(); err != nil {
		t.Fatal(err)
	}
	req, keys, err := keydclient.IssueRequest(pod.Identity{Namespace: podA.Namespace, ServiceAccount: podA.ServiceAccount, Name: podA.PodName, UID: podA.PodUid, Node: podA.NodeName}, "", []object.Spec{sp})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.Keyd.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	c := resp.Credentials[0]
	pair, err := keydclient.OpenTLCP(c.GetTlcp().CsrResponse, c.GetTlcp().CaBundlePem, keys["link"])
	if err != nil {
		t.Fatal(err)
	}
	return pair, c
}

func serialOf(t *testing.T, certPEM []byte) string {
	b, _ := pem.Decode(certPEM)
	c, err := smx509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(c.SerialNumber.Bytes())
}

func mustSM2(t *testing.T) crypto.Signer {
	k, err := suite.GM.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestTLCPPairEscrowAndRecovery: keyd issues a pair whose encryption key
// only the node opens, escrows that key before answering, recovers it
// only through an approved request (never while dual control is off),
// keeps it across a KEK rotation, and destroys it after its retention.
func TestTLCPPairEscrowAndRecovery(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	pair, cred := issueTLCP(t, e)
	for name, c := range map[string][]byte{"sign": pair.SignCertPEM, "enc": pair.EncCertPEM} {
		b, _ := pem.Decode(c)
		cert, _ := smx509.ParseCertificate(b.Bytes)
		want := map[string]x509.KeyUsage{"sign": x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
			"enc": x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement}[name]
		if cert.KeyUsage != want || !strings.HasPrefix(cert.Subject.CommonName, "system:serviceaccount:payments:payments") {
			t.Fatalf("%s certificate: key usage %b, subject %s", name, cert.KeyUsage, cert.Subject)
		}
	}
	// OpenSSL 3 reads both and verifies them with the CA bundle (SM2 with
	// the default user id, which OpenSSL wants said).
	dir := t.TempDir()
	files := map[string][]byte{"sign.crt": pair.SignCertPEM, "enc.crt": pair.EncCertPEM, "ca.crt": cred.GetTlcp().CaBundlePem}
	for n, b := range files {
		_ = os.WriteFile(filepath.Join(dir, n), b, 0o600)
	}
	for n, want := range map[string]string{"sign.crt": "Digital Signature, Non Repudiation", "enc.crt": "Key Encipherment, Data Encipherment, Key Agreement"} {
		out, err := exec.Command("openssl", "x509", "-noout", "-text", "-in", filepath.Join(dir, n)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "X509v3 Key Usage: critical\n                "+want) {
			t.Fatalf("openssl x509 %s: %v\n%s", n, err, out)
		}
	}
	out, err := exec.Command("openssl", "verify", "-vfyopt", "distid:1234567812345678", "-CAfile", filepath.Join(dir, "ca.crt"),
		filepath.Join(dir, "sign.crt"), filepath.Join(dir, "enc.crt")).CombinedOutput()
	if err != nil || strings.Count(string(out), ": OK") != 2 {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	serial := serialOf(t, pair.EncCertPEM)
	if serial == serialOf(t, pair.SignCertPEM) {
		t.Fatal("one serial for both certificates")
	}
	if !strings.Contains(strings.Join(e.AuditLines(), "\n"), "link/tlcp/gm/g1/escrow:"+serial) {
		t.Fatal("the issuance record does not name the escrow")
	}
	// A tampered envelope does not open.
	bad := append([]byte(nil), cred.GetTlcp().CsrResponse...)
	bad[len(bad)/2] ^= 1
	if _, err := keydclient.OpenTLCP(bad, cred.GetTlcp().CaBundlePem, mustSM2(t)); err == nil {
		t.Fatal("a tampered response opened with another key")
	}

	// No recovery without dual control; escrows are no enrolled secrets.
	_, err = e.Admin.RecoverEscrow(ctx, &keydv1.RecoverEscrowRequest{Serial: serial, Reason: "court order 12"})
	wantCode(t, "recovery without a roster", err, codes.FailedPrecondition, "needs dual control")
	list, _ := e.Admin.ListSecrets(ctx, &keydv1.ListSecretsRequest{})
	if len(list.GetSecrets()) != 0 {
		t.Fatalf("escrows listed as secrets: %v", list)
	}
	_, err = e.Admin.DeleteSecret(ctx, &keydv1.DeleteSecretRequest{Namespace: "podkey:escrow", Name: serial})
	wantCode(t, "deleting an escrow", err, codes.InvalidArgument, "retention")

	tm := approvaltest.New(t, suite.GM, "")
	if _, err := e.Admin.SetRoster(ctx, &keydv1.RosterDocument{Yaml: tm.YAML}); err != nil {
		t.Fatal(err)
	}
	// The KEK rotated (approved) meanwhile: the escrow moves with it.
	if _, err := e.Admin.RotateKey(ctx, approved(t, tm, "RotateKey", &keydv1.RotateKeyRequest{Purpose: "kek"}, "dan", quorum...)); err != nil {
		t.Fatal(err)
	}
	recover := &keydv1.RecoverEscrowRequest{Serial: serial, Reason: "court order 12"}
	_, err = e.Admin.RecoverEscrow(ctx, recover)
	wantCode(t, "recovery alone", err, codes.PermissionDenied, "dual control is on")
	_, err = e.Admin.RecoverEscrow(ctx, approved(t, tm, "RecoverEscrow", recover, "dan", "ann/key-admin", "bob/key-admin"))
	wantCode(t, "recovery short of quorum", err, codes.PermissionDenied, "quorum")
	got, err := e.Admin.RecoverEscrow(ctx, approved(t, tm, "RecoverEscrow", recover, "dan", quorum...))
	if err != nil {
		t.Fatal(err)
	}
	if string(got.KeyPem) != string(pair.EncKeyPEM) || got.PodUid != podA.PodUid || got.Pod != podA.PodName {
		t.Fatalf("recovered %+v, not the pod's encryption key", got)
	}
	if !strings.Contains(strings.Join(e.AuditLines(), "\n"), `"action":"tlcp.escrow.recover","result":"ok","reason":"court order 12"`) {
		t.Fatal("the recovery is not audited with its reason")
	}
	for _, l := range e.AuditLines() {
		if strings.Contains(l, "PRIVATE KEY") {
			t.Fatal("a key in the audit")
		}
	}
}

// TestTLCPEscrowRetention: an escrow past its retention is destroyed and
// the destruction audited.
func TestTLCPEscrowRetention(t *testing.T) {
	e := keydtest.Start(t, func(o *service.Options) { o.EscrowRetention = time.Nanosecond })
	pair, _ := issueTLCP(t, e)
	serial := serialOf(t, pair.EncCertPEM)
	e.Stop()
	e.Run() // keyd destroys expired escrows at start, then every minute
	for i := 0; !strings.Contains(strings.Join(e.AuditLines(), "\n"), `"action":"tlcp.escrow.destroy"`); i++ {
		if i > 300 {
			t.Fatal("the escrow was not destroyed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(strings.Join(e.AuditLines(), "\n"), "escrow:"+serial) {
		t.Fatal("the destruction does not name the escrow")
	}
}
