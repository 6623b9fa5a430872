// Package truncate cuts the newest records off keyd's audit log in its
// database, as whoever can write the store could.
package truncate

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// Records deleted from the end of the audit log in the database leave a
// chain that verifies record by record; keyd holds it against the anchor
// on its HSM: podkey's audit verification reports the truncation, and
// keyd refuses to write after the cut (reusing the deleted records'
// positions) instead of issuing.
func TestTruncatedAuditTailIsRefused(t *testing.T) {
	ctx := context.Background()
	pg := pgtest.Start(t)
	conn := pg.NewDatabase(t)
	e := keydtest.StartOn(t, conn, nil)
	issue := func(uid string) error {
		_, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{
			Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"},
			Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
		return err
	}
	for _, uid := range []string{"a", "b", "c", "d"} {
		if err := issue(uid); err != nil {
			t.Fatal(err)
		}
	}
	e.Stop() // a clean stop anchors the tail
	db, err := pgx.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	tag, err := db.Exec(ctx, `DELETE FROM audit WHERE seq > (SELECT max(seq) - 2 FROM audit)`)
	if err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("cutting the tail: %v %v", tag, err)
	}
	// Offline, as podkey audit verify --postgres-file does.
	tok, err := hsm.Open(e.HSM)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	st, err := store.OpenPostgres(ctx, conn, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, err := audit.Verify(ctx, st, keyring.TokenAuditKeys(tok)); err != nil {
		t.Fatalf("the cut chain alone should verify (%d records): %v", n, err)
	}
	if _, err := audit.VerifyAnchored(ctx, st, keyring.TokenAuditKeys(tok), keyring.TokenAuditAnchors(tok)); !errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("offline verification against the anchor: %v", err)
	}
	// keyd started on it (without a policy file, whose audited load would
	// stop the start itself) answers, verifies, and issues nothing.
	e.Opts.PolicyFile = ""
	e.Run()
	r, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err == nil && r.Intact {
		t.Fatalf("a truncated log verified: %d records", r.Records)
	}
	if msg := status.Convert(err).Message() + r.GetReason(); !strings.Contains(msg, "ends before its newest anchor") {
		t.Fatalf("verification does not say the log was truncated: %v %+v", err, r)
	}
	if err := issue("e"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "anchor") {
		t.Fatalf("keyd issued after the cut: %v", err)
	}
}
