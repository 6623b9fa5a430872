package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/suite"
)

// socketClients dials a keyd's local socket.
func socketClients(t testing.TB, sock string) (keydv1.KeydClient, keydv1.AdminClient) {
	conn, err := keydclient.Dial(keydclient.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return keydv1.NewKeydClient(conn), keydv1.NewAdminClient(conn)
}

// TestStoreMigrateToPostgres: a keyd on bbolt issues, verifies a signed
// request, enrolls a secret, takes a policy rule, a renewal and a
// revocation; podkey store migrate copies its stopped store into
// PostgreSQL, and a keyd on the database carries on exactly where the
// first stopped: the revocation and the renewal hold, the other pod's key
// verifies, the signed request is a replay, the secret and the rule are
// there, and the audit chain verifies and goes on.
func TestStoreMigrateToPostgres(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	pg := pgtest.Start(t)
	pgFile := filepath.Join(w.dir, "postgres")
	_ = os.WriteFile(pgFile, []byte(pg.NewDatabase(t)+"\n"), 0o600)
	w.startKeyd(ctx)
	k, admin := socketClients(t, w.sock())
	pod := func(uid string) *keydv1.PodIdentity {
		return &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"}
	}
	issue := func(k keydv1.KeydClient, uid string) *keydv1.APIKey {
		t.Helper()
		r, err := k.Issue(ctx, &keydv1.IssueRequest{Pod: pod(uid), Objects: []*keydv1.ObjectRequest{{Name: "ledger", Kind: "apiKey"}}})
		if err != nil {
			t.Fatal(err)
		}
		return r.Credentials[0].GetApiKey()
	}
	signed := func(ak *keydv1.APIKey) *keydv1.VerifyRequest {
		t.Helper()
		r, _ := http.NewRequest("POST", "https://ledger/v1/transfers", strings.NewReader(`{"amount":1}`))
		if err := reqsign.Sign(r, suite.Intl, ak.AccessKeyId, ak.SecretKey, time.Now()); err != nil {
			t.Fatal(err)
		}
		a, sts, err := reqsign.Canonical(r)
		if err != nil {
			t.Fatal(err)
		}
		return &keydv1.VerifyRequest{AccessKeyId: a.AccessKeyID, StringToSign: sts, Signature: a.Signature}
	}
	revoked, kept := issue(k, "uid-revoked"), issue(k, "uid-kept")
	replay := signed(kept)
	if _, err := k.Verify(ctx, replay); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "db", Value: []byte("s3cr3t-db-password")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddPolicyRule(ctx, &keydv1.PolicyRule{Namespace: "shop", ServiceAccount: "shop", Objects: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	renewed := issue(k, "uid-renewed")
	if _, err := admin.ForceRenewal(ctx, &keydv1.ForceRenewalRequest{PodUid: "uid-renewed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Revoke(ctx, &keydv1.RevokeRequest{Pod: pod("uid-revoked")}); err != nil {
		t.Fatal(err)
	}
	before, err := admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !before.Intact {
		t.Fatalf("audit before: %v %v", before, err)
	}

	migrate := func() (string, int) {
		return w.run("", "podkey", "store", "migrate", "--from", filepath.Join(w.dir, "keyd.db"), "--postgres-file", pgFile)
	}
	if out, code := migrate(); code != 6 || !strings.Contains(out, "still running") {
		t.Fatalf("migrate from a running keyd's store: exit %d: %s", code, out)
	}
	w.stopKeyd()
	out, code := migrate()
	if code != 0 || !strings.Contains(out, "secrets 1, revocations 1, renewals 1") || !strings.Contains(out, "audit chain verified in PostgreSQL") {
		t.Fatalf("migrate: exit %d: %s", code, out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	if out, code := migrate(); code != 2 || !strings.Contains(out, "already holds") {
		t.Fatalf("migrate into a database in use: exit %d: %s", code, out)
	}
	for _, s := range []string{"s3cr3t-db-password", pgFile} {
		if strings.Contains(out, s) {
			t.Fatalf("migrate's output holds %q", s)
		}
	}
	st, err := store.OpenPostgres(ctx, strings.TrimSpace(readFile(t, pgFile)), store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := st.Policy(ctx)
	st.Close()
	if err != nil || !strings.Contains(string(doc), "shop") {
		t.Fatalf("the migrated policy: %q %v", doc, err)
	}

	// keyd on the database; its policy file would replace the migrated
	// policy, which was checked above.
	sock2 := filepath.Join(w.dir, "keyd-pg.sock")
	w.startKeydAt(ctx, sock2, "--postgres-file", pgFile, "--insecure-local-identity")
	k2, admin2 := socketClients(t, sock2)
	verify := func(ak *keydv1.APIKey) error {
		_, err := k2.Verify(ctx, signed(ak))
		return err
	}
	if err := verify(kept); err != nil {
		t.Fatalf("a key issued before the migration: %v", err)
	}
	for name, ak := range map[string]*keydv1.APIKey{"revoked": revoked, "renewed": renewed} {
		if err := verify(ak); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("the %s pod's key after the migration: %v", name, err)
		}
	}
	if _, err := k2.Verify(ctx, replay); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("a signed request verified before the migration, replayed after: %v", err)
	}
	secrets, err := admin2.ListSecrets(ctx, &keydv1.ListSecretsRequest{})
	if err != nil || len(secrets.Secrets) != 1 || secrets.Secrets[0].Name != "db" {
		t.Fatalf("secrets after the migration: %v %v", secrets, err)
	}
	r, err := k2.Renewals(ctx, &keydv1.RenewalsRequest{})
	if err != nil || len(r.Renewals) != 1 || r.Renewals[0].Seq != 1 {
		t.Fatalf("renewals after the migration: %v %v", r, err)
	}
	issue(k2, "uid-after")
	after, err := admin2.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !after.Intact || after.Records <= before.Records {
		t.Fatalf("audit after the migration: %v (before: %v) %v", after, before, err)
	}
	t.Logf("audit chain: %d records before the migration, %d intact after it", before.Records, after.Records)
	// The database's chain verifies directly too, keyd running.
	if out, code := w.run("", "podkey", "audit", "verify", "--postgres-file", pgFile); code != 0 || !strings.Contains(out, "audit chain intact") {
		t.Fatalf("audit verify --postgres-file: exit %d: %s", code, out)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
