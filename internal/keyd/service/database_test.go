package service_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/dbcred/dbcredtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/podfiles"
)

func dbPod(n int) *keydv1.PodIdentity {
	return &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: fmt.Sprintf("orders-%d", n),
		PodUid: fmt.Sprintf("%08x-0000-4000-8000-000000000000", n), NodeName: "node-1"}
}

var ordersObject = []*keydv1.ObjectRequest{{Name: "orders", Kind: "database"}}

// TestDatabaseObjectsThroughKeyd is the database kind as a pod's node
// meets it, on a real keyd and a real PostgreSQL: the admin API, the
// same login on every publish, racing publishes, the revocation that ends
// sessions, 500 pods come and gone leaving no login behind, an optional
// object while the database is frozen, and no secret in the logs.
func TestDatabaseObjectsThroughKeyd(t *testing.T) {
	ctx := context.Background()
	tg := dbcredtest.Postgres(t)
	e := keydtest.Start(t, nil)

	// The admin connection string goes in once and never comes out.
	put := &keydv1.PutDatabaseRequest{Name: "orders", Engine: "postgresql", GroupRole: "app_rw", AdminConnection: tg.Admin}
	if params, err := approval.Params(put); err != nil || bytes.Contains(params, []byte(dbcredtest.AdminPassword)) {
		t.Fatalf("an approval would sign the admin connection string: %s %v", params, err)
	}
	info, err := e.Admin.PutDatabase(ctx, put)
	if err != nil {
		t.Fatal(err)
	}
	if info.Database != "app" || info.TtlSeconds != 3600 || info.UserPrefix != "pk_" {
		t.Fatalf("defaults: %+v", info)
	}
	if _, err := e.Admin.PutDatabase(ctx, &keydv1.PutDatabaseRequest{Name: "bad", Engine: "postgresql", GroupRole: "nobody",
		AdminConnection: tg.Admin}); code(err) != codes.InvalidArgument || strings.Contains(err.Error(), dbcredtest.AdminPassword) {
		t.Fatalf("a missing group role: %v", err)
	}
	if _, err := e.Admin.PutDatabase(ctx, &keydv1.PutDatabaseRequest{Name: "bad", Engine: "postgresql", GroupRole: "app_rw",
		AdminConnection: strings.Replace(tg.Admin, dbcredtest.AdminPassword, "wrong", 1)}); code(err) != codes.FailedPrecondition {
		t.Fatalf("a wrong admin password: %v", err)
	}
	if l, _ := e.Admin.ListSecrets(ctx, &keydv1.ListSecretsRequest{}); len(l.GetSecrets()) != 0 {
		t.Fatalf("connections listed as enrolled secrets: %v", l)
	}
	if _, err := e.Admin.DeleteSecret(ctx, &keydv1.DeleteSecretRequest{Namespace: "podkey:database", Name: "orders"}); code(err) != codes.InvalidArgument {
		t.Fatalf("deleting a connection as a secret: %v", err)
	}

	issue := func(p *keydv1.PodIdentity, objs []*keydv1.ObjectRequest) (*keydv1.Credential, error) {
		resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: p, Objects: objs})
		if err != nil {
			return nil, err
		}
		return resp.Credentials[0], nil
	}
	var secrets []string
	c, err := issue(dbPod(1), ordersObject)
	if err != nil {
		t.Fatal(err)
	}
	login := c.GetDatabase()
	secrets = append(secrets, string(login.Password))
	file := podfiles.DatabaseLogin{Engine: login.Engine, User: login.User, Password: login.Password, Host: login.Host,
		Port: int(login.Port), Database: login.Database, Params: login.Params}
	if _, err := file.Marshal(); err != nil {
		t.Fatalf("the node cannot write it: %v", err)
	}
	// The pod connects with what it got, and gets the group's privileges.
	db := dbcredtest.Open(t, "pgx", file.URL()+"&sslmode=disable")
	if _, err := db.Exec(`INSERT INTO orders VALUES (1)`); err != nil {
		t.Fatalf("the pod's login: %v", err)
	}
	if _, err := db.Exec(`SELECT * FROM ledger`); err == nil {
		t.Fatal("the pod reads a table its group may not")
	}

	// Republishes, and ten racing ones of a new pod, get one login each.
	again, err := issue(dbPod(1), ordersObject)
	if err != nil || again.GetDatabase().User != login.User || !bytes.Equal(again.GetDatabase().Password, login.Password) {
		t.Fatalf("a republish got another login: %v", err)
	}
	var wg sync.WaitGroup
	users := make([]string, 10)
	for i := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := issue(dbPod(2), ordersObject); err == nil {
				users[i] = c.GetDatabase().User
			} else {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, u := range users {
		if u != users[0] {
			t.Fatalf("racing publishes of one pod got logins %v", users)
		}
	}
	if got := tg.Logins(t); len(got) != 2 {
		t.Fatalf("logins after two pods: %v", got)
	}
	leases, err := e.Admin.ListLeases(ctx, &keydv1.ListLeasesRequest{})
	if err != nil || len(leases.Leases) != 2 || leases.Leases[0].State != "active" {
		t.Fatalf("leases: %v %v", leases, err)
	}

	// The node's revocation of a deleted pod ends its session.
	start := time.Now()
	if _, err := e.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: dbPod(1)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the revoked pod's session to end", func() bool { return db.PingContext(ctx) != nil })
	t.Logf("a revoked pod's open session ended %v after its revocation", time.Since(start).Round(time.Millisecond))
	if _, err := e.Admin.DeleteDatabase(ctx, &keydv1.DeleteDatabaseRequest{Name: "orders"}); code(err) != codes.FailedPrecondition {
		t.Fatalf("deleting a connection pods use: %v", err)
	}

	// 500 pods come and go, 8 at a time, each published twice: when the
	// last has gone, no login and no lease is left.
	start = time.Now()
	work := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				for range 2 {
					if _, err := issue(dbPod(n), ordersObject); err != nil {
						t.Errorf("pod %d: %v", n, err)
					}
				}
				if _, err := e.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: dbPod(n)}); err != nil {
					t.Errorf("revoke pod %d: %v", n, err)
				}
			}
		}()
	}
	for n := 100; n < 600; n++ {
		work <- n
	}
	close(work)
	wg.Wait()
	if _, err := e.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: dbPod(2)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every login to be dropped", func() bool {
		l, err := e.Admin.ListLeases(ctx, &keydv1.ListLeasesRequest{})
		return err == nil && len(l.Leases) == 0 && len(tg.Logins(t)) == 0
	})
	t.Logf("500 pods' logins created and dropped in %v", time.Since(start).Round(time.Millisecond))
	if n := strings.Count(strings.Join(e.AuditLines(), "\n"), `"database.revoke"`); n != 502 {
		t.Fatalf("%d revocations audited, want 502", n)
	}

	// The database frozen: an optional database object is left out and
	// the pod's other objects come; a required one fails as unavailable.
	tg.Freeze(t)
	both := []*keydv1.ObjectRequest{{Name: "orders", Kind: "database", Optional: true}, {Name: "orders-key", Kind: "derivedKey"}}
	resp, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: dbPod(3), Objects: both})
	if err != nil || resp.Credentials[0].Missing == "" || resp.Credentials[1].GetDerivedKey() == nil {
		t.Fatalf("an optional database object with the database down: %v %v", resp, err)
	}
	if _, err := issue(dbPod(3), ordersObject); code(err) != codes.Unavailable {
		t.Fatalf("a required one: %v", err)
	}
	tg.Thaw(t)
	if _, err := issue(dbPod(3), ordersObject); err != nil {
		t.Fatalf("after the database came back: %v", err)
	}

	logs := e.Logs.String() + strings.Join(e.AuditLines(), "\n")
	for _, s := range append(secrets, dbcredtest.AdminPassword) {
		if strings.Contains(logs, s) {
			t.Fatal("a password is in keyd's logs or audit")
		}
	}
}

func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
