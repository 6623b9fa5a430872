package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/approval/approvaltest"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// approved attaches a document approving m as requested by requester and
// signed by approvals.
func approved[M proto.Message](t *testing.T, tm *approvaltest.Team, op string, m M, requester string, approvals ...string) M {
	t.Helper()
	params, err := approval.Params(m)
	if err != nil {
		t.Fatal(err)
	}
	c := proto.Clone(m).(M)
	approval.Attach(c, tm.Doc(t, op, params, requester, approvals...))
	return c
}

func wantCode(t *testing.T, what string, err error, code codes.Code, says string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), says) {
		t.Fatalf("%s: got %v, want %v saying %q", what, err, code, says)
	}
}

// quorum is the default rule's approvals: 2 key administrators and a
// security officer.
var quorum = []string{"ann/key-admin", "bob/key-admin", "eve/security-officer"}

func TestDualControl(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	tm := approvaltest.New(t, suite.GM, "breakGlass: {roles: [security-officer], armed: true}\n")
	rotate := &keydv1.RotateKeyRequest{Purpose: "jwt", Suite: "gm"}

	// Before a roster, the socket alone controls; an approval is refused
	// rather than silently ignored.
	if _, err := e.Admin.GetRoster(ctx, &keydv1.GetRosterRequest{}); status.Code(err) != codes.NotFound {
		t.Fatalf("roster before set-up: %v", err)
	}
	_, err := e.Admin.RotateKey(ctx, approved(t, tm, "RotateKey", rotate, "dan", quorum...))
	wantCode(t, "an approval without a roster", err, codes.FailedPrecondition, "not set up")
	if _, err := e.Admin.SetRoster(ctx, &keydv1.RosterDocument{Yaml: tm.YAML}); err != nil {
		t.Fatal(err)
	}
	// From now on the socket alone is not enough, for anything sensitive.
	_, err = e.Admin.SetRoster(ctx, &keydv1.RosterDocument{Yaml: tm.YAML})
	wantCode(t, "a second roster without approval", err, codes.PermissionDenied, "dual control is on")
	_, err = e.Admin.RotateKey(ctx, rotate)
	wantCode(t, "rotation without approval", err, codes.PermissionDenied, "2 key-admin + 1 security-officer")
	_, err = e.Admin.SetPolicy(ctx, &keydv1.PolicyDocument{Yaml: []byte(keydtest.PolicyYAML)})
	wantCode(t, "policy change without approval", err, codes.PermissionDenied, "dual control is on")
	_, err = e.Admin.ForceRenewal(ctx, &keydv1.ForceRenewalRequest{Namespace: "payments"})
	wantCode(t, "renewal of a namespace without approval", err, codes.PermissionDenied, "dual control is on")
	if _, err := e.Admin.ForceRenewal(ctx, &keydv1.ForceRenewalRequest{PodUid: podA.PodUid}); err != nil {
		t.Fatalf("renewal of one pod needs no approval: %v", err)
	}
	backup, err := e.Admin.BackupStore(ctx, &keydv1.BackupStoreRequest{})
	if err == nil {
		_, err = backup.Recv()
	}
	wantCode(t, "backup without approval", err, codes.PermissionDenied, "dual control is on")

	// Short of quorum, self-approval, one person twice, a role not held,
	// other parameters than approved.
	for what, doc := range map[string]*keydv1.RotateKeyRequest{
		"2 approvals":      approved(t, tm, "RotateKey", rotate, "dan", "ann/key-admin", "bob/key-admin"),
		"self-approval":    approved(t, tm, "RotateKey", rotate, "ann", "ann/key-admin", "bob/key-admin", "eve/security-officer"),
		"one person twice": approved(t, tm, "RotateKey", rotate, "dan", "ann/key-admin", "ann/operator", "eve/security-officer"),
		"a role not held":  approved(t, tm, "RotateKey", rotate, "dan", "ann/key-admin", "dan/key-admin", "fay/key-admin"),
	} {
		_, err := e.Admin.RotateKey(ctx, doc)
		wantCode(t, what, err, codes.PermissionDenied, "")
	}
	other := approved(t, tm, "RotateKey", rotate, "dan", quorum...)
	other.Suite = "intl"
	_, err = e.Admin.RotateKey(ctx, other)
	wantCode(t, "other parameters", err, codes.PermissionDenied, "parameters differ")
	_, err = e.Admin.RetireKey(ctx, &keydv1.RetireKeyRequest{Purpose: "jwt", Suite: "gm", Generation: 1, Approval: approval.Attached(approved(t, tm, "RotateKey", rotate, "dan", quorum...))})
	wantCode(t, "another operation", err, codes.PermissionDenied, "is for RotateKey")

	// A valid quorum executes exactly once, also when eight callers send
	// it at the same moment.
	good := approved(t, tm, "RotateKey", rotate, "dan", quorum...)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		ok     int
		replay int
	)
	for range 8 {
		wg.Go(func() {
			_, err := e.Admin.RotateKey(ctx, good)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case status.Code(err) == codes.PermissionDenied && strings.Contains(err.Error(), "executed already"):
				replay++
			default:
				t.Errorf("parallel execution: %v", err)
			}
		})
	}
	wg.Wait()
	if ok != 1 || replay != 7 {
		t.Fatalf("8 parallel executions: %d executed, %d refused as replays", ok, replay)
	}
	st, err := e.Admin.Status(ctx, &keydv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(statusKeys(st), "jwt/gm/g2") || strings.Contains(statusKeys(st), "jwt/gm/g3") {
		t.Fatalf("the key was not rotated exactly once: %s", statusKeys(st))
	}
	_, err = e.Admin.RotateKey(ctx, good)
	wantCode(t, "a replay later", err, codes.PermissionDenied, "executed already")

	// A secret's value is never in what is signed or audited.
	secret := &keydv1.PutSecretRequest{Namespace: "payments", Name: "legacy-db", Value: []byte("s3cret-value-never-signed")}
	put := approved(t, tm, "PutSecret", secret, "dan", quorum...)
	if _, err := e.Admin.PutSecret(ctx, put); err != nil {
		t.Fatal(err)
	}

	// Break-glass: eve alone, once; loud; re-armed by an approved change.
	bg := func() error {
		params, _ := approval.Params(rotate)
		c := proto.Clone(rotate).(*keydv1.RotateKeyRequest)
		c.Approval = tm.Sign(t, tm.Request(t, "RotateKey", params, "eve", time.Hour, true), "eve/requester")
		_, err := e.Admin.RotateKey(ctx, c)
		return err
	}
	if err := bg(); err != nil {
		t.Fatalf("break-glass: %v", err)
	}
	wantCode(t, "break-glass twice", bg(), codes.PermissionDenied, "not re-armed")
	if !strings.Contains(e.Logs.String(), "BREAK-GLASS") {
		t.Fatal("break-glass was not logged")
	}
	rearm := approved(t, tm, "SetRoster", &keydv1.RosterDocument{Yaml: tm.YAML}, "dan", "ann/key-admin", "bob/key-admin", "fay/security-officer")
	if _, err := e.Admin.SetRoster(ctx, rearm); err != nil {
		t.Fatal(err)
	}
	if err := bg(); err != nil {
		t.Fatalf("break-glass after re-arming: %v", err)
	}

	// The audit: every execution with every signature, each re-verifiable
	// against the roster; refusals with their reasons; no secret value.
	var executed, refusedRecs, breakGlass int
	lines := e.AuditLines()
	for _, l := range lines {
		var r audit.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(l, "s3cret-value") {
			t.Fatal("the audit holds the secret's value")
		}
		switch {
		case r.Action == audit.ActionApproval && r.Result == audit.ResultOK:
			executed++
			if len(r.Approval.Signatures) != 4 {
				t.Fatalf("an execution audited with %d signatures", len(r.Approval.Signatures))
			}
			for _, s := range r.Approval.Signatures {
				p, _ := tm.Roster.Person(s.Name)
				pub, _ := approval.ParsePublicKey(suite.GM, []byte(p.PublicKey))
				if !approval.VerifySignature(suite.GM, pub, r.Approval.Request, s.Sig) {
					t.Fatalf("audited signature of %s does not verify", s.Name)
				}
			}
		case r.Action == audit.ActionApproval:
			refusedRecs++
		case r.Action == audit.ActionBreakGlass:
			breakGlass++
		}
	}
	if executed != 3 || breakGlass != 2 || refusedRecs < 12 {
		t.Fatalf("audit: %d executions, %d break-glass, %d refusals", executed, breakGlass, refusedRecs)
	}
	if v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
		t.Fatalf("audit chain: %v %v", v, err)
	}
	// The roster survives a restart (it is on the token).
	e.Stop()
	e.Run()
	_, err = e.Admin.RotateKey(ctx, rotate)
	wantCode(t, "after a restart", err, codes.PermissionDenied, "dual control is on")
}

func statusKeys(st *keydv1.StatusResponse) string {
	var out []string
	for _, k := range st.Keys {
		for _, g := range k.Generations {
			out = append(out, fmt.Sprintf("%s/%s/g%d", k.Purpose, k.Suite, g))
		}
	}
	return strings.Join(out, " ")
}
