// Package stall freezes keyd's PostgreSQL: calls must fail Unavailable in
// bounded time while it hangs, the replica must say it is not ready, and
// everything must come back by itself when the database answers again.
package stall

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

var pod = &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p", PodUid: "uid-stall", NodeName: "node-1"}

func issue(e *keydtest.Env) error {
	_, err := e.Keyd.Issue(context.Background(), &keydv1.IssueRequest{Pod: pod,
		Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
	return err
}

// eventually polls cond for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not within %s: %s", d, what)
		}
	}
}

func serving(e *keydtest.Env) healthpb.HealthCheckResponse_ServingStatus {
	conn := e.Dial(keydclient.Options{Socket: e.Opts.Socket})
	r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return r.Status
}

// A database that stops answering (every PostgreSQL process stopped, no
// connection closed) makes keyd's calls fail Unavailable within the
// store's deadline instead of hanging, and its health NOT_SERVING once
// its policy is unconfirmed; when the database answers again keyd serves
// again by itself, and a policy change made meanwhile through another
// replica is in force within a second; keyd stops cleanly while the
// database hangs.
func TestStalledDatabaseFailsFastAndRecovers(t *testing.T) {
	pg := pgtest.Start(t)
	conn := pg.NewDatabase(t)
	e := keydtest.StartOn(t, conn, nil)
	if err := issue(e); err != nil {
		t.Fatal(err)
	}
	pg.Freeze(t)
	start := time.Now()
	err := issue(e)
	if took := time.Since(start); status.Code(err) != codes.Unavailable || took > store.CallTimeout+3*time.Second {
		t.Fatalf("Issue against a frozen database: %v after %s, want Unavailable within %s", err, took, store.CallTimeout+3*time.Second)
	}
	eventually(t, service.PolicyMaxAge+3*time.Second, "NOT_SERVING while the database hangs", func() bool {
		return serving(e) == healthpb.HealthCheckResponse_NOT_SERVING
	})
	start = time.Now()
	if err := issue(e); status.Code(err) != codes.Unavailable || time.Since(start) > time.Second {
		t.Fatalf("Issue with an unconfirmed policy: %v after %s, want Unavailable at once", err, time.Since(start))
	}
	pg.Thaw(t)
	eventually(t, 15*time.Second, "serving again after the database answers", func() bool {
		return serving(e) == healthpb.HealthCheckResponse_SERVING && issue(e) == nil
	})
	// Another replica removes the rule: in force here within a second.
	other, err := store.OpenPostgres(context.Background(), conn, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.SetPolicy(context.Background(), []byte("version: v1\nrules: []\n")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the removed rule no longer in force", func() bool {
		return status.Code(issue(e)) == codes.PermissionDenied
	})
	// A stored policy this keyd cannot read (a newer replica's) stops it
	// authorizing instead of leaving the old one in force.
	if err := other.SetPolicy(context.Background(), []byte("version: v9\nrules: []\n")); err != nil {
		t.Fatal(err)
	}
	eventually(t, service.PolicyMaxAge+3*time.Second, "NOT_SERVING with an unreadable stored policy", func() bool {
		return serving(e) == healthpb.HealthCheckResponse_NOT_SERVING && status.Code(issue(e)) == codes.Unavailable
	})
	// Stopping while the database hangs.
	pg.Freeze(t)
	start = time.Now()
	e.Stop()
	if took := time.Since(start); took > 2*store.CallTimeout+5*time.Second {
		t.Fatalf("keyd took %s to stop while the database hung", took)
	}
}
