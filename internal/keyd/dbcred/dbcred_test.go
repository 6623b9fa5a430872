package dbcred_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/dbcred"
	"github.com/podkey/podkey/internal/keyd/dbcred/dbcredtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/pod"
)

// env is a manager on a real SoftHSM2 token and a bbolt store, its
// reaper running, with a clock tests can move forward.
type env struct {
	m      *dbcred.Manager
	st     store.Store
	kr     *keyring.Keyring
	offset atomic.Int64
	logs   *bytes.Buffer
	mu     sync.Mutex
	audit  []audit.Record
	gone   sync.Map // pod UIDs the informer would no longer find
}

func newEnv(t *testing.T) *env {
	e := &env{kr: keyringtest.Open(t), logs: &bytes.Buffer{}}
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "keyd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.st = st
	e.m = dbcred.New(e.kr, st, dbcred.Options{
		Now:    func() time.Time { return time.Now().Add(time.Duration(e.offset.Load())) },
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: e.logs, mu: &e.mu}, nil)),
		Audit: func(_ context.Context, r audit.Record) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.audit = append(e.audit, r)
			return nil
		},
		ReapEvery: time.Second,
		PodGone: func(_, _, uid string) bool {
			_, gone := e.gone.Load(uid)
			return gone
		},
		PodGoneAfter: time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; e.m.Close() })
	return e
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *env) records(action string) []audit.Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []audit.Record
	for _, r := range e.audit {
		if r.Action == action {
			out = append(out, r)
		}
	}
	return out
}

func podID(n int) pod.Identity {
	return pod.Identity{Namespace: "shop", ServiceAccount: "api", Name: fmt.Sprintf("api-%d", n),
		UID: fmt.Sprintf("%08x-1111-2222-3333-444455556666", n)}
}

func TestDatabaseLogins(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(testing.TB) *dbcredtest.Target
	}{{"postgresql", dbcredtest.Postgres}, {"mariadb", dbcredtest.MariaDB}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testDatabaseLogins(t, tc.open(t))
		})
	}
}

func testDatabaseLogins(t *testing.T, tg *dbcredtest.Target) {
	ctx := context.Background()
	e := newEnv(t)
	m := e.m
	var secrets []string // nothing of these may be in a log, an error or the audit
	secrets = append(secrets, dbcredtest.AdminPassword)

	// Definitions are proven before they are kept.
	bad := dbcred.Connection{Name: "orders", Engine: tg.Engine, Admin: tg.Admin, Database: tg.Database, GroupRole: "no_such_group"}
	if _, err := m.Put(ctx, bad); !errors.Is(err, dbcred.ErrInvalid) || strings.Contains(err.Error(), dbcredtest.AdminPassword) {
		t.Fatalf("a missing group role: %v", err)
	}
	conn, err := m.Put(ctx, dbcred.Connection{Name: "orders", Engine: tg.Engine, Admin: tg.Admin, Database: tg.Database, GroupRole: "app_rw", TTL: time.Hour, MaxTTL: 3 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if conn.Admin != "" {
		t.Fatal("Put returned the admin connection string")
	}

	issue := func(n int) dbcred.Login {
		t.Helper()
		l, err := m.Issue(ctx, podID(n), "orders", time.Hour, time.Time{})
		if err != nil {
			t.Fatalf("issue for pod %d: %v", n, err)
		}
		secrets = append(secrets, string(l.Password))
		return l
	}
	// A pod's login works with the group's privileges, and only those.
	a := issue(1)
	dbA := dbcredtest.Open(t, tg.Driver, tg.DSN(a.User, string(a.Password)))
	if _, err := dbA.Exec(`INSERT INTO orders VALUES (1)`); err != nil {
		t.Fatalf("pod login cannot use the group's privilege: %v", err)
	}
	if _, err := dbA.Exec(`SELECT * FROM ledger`); err == nil {
		t.Fatal("pod login reads a table the group has no privilege on")
	}
	b := issue(2)
	if a.User == b.User || bytes.Equal(a.Password, b.Password) {
		t.Fatalf("two pods got the same login or password: %s %s", a.User, b.User)
	}
	if len(a.User) > 32 || !strings.HasPrefix(a.User, "pk_shop_") {
		t.Fatalf("login name %q", a.User)
	}
	// Republishes: the same login, no new role.
	for range 100 {
		again := issue(1)
		if again.User != a.User || !bytes.Equal(again.Password, a.Password) {
			t.Fatalf("a republish got another login: %s", again.User)
		}
	}
	if got := tg.Logins(t); len(got) != 2 {
		t.Fatalf("100 republishes of pod 1 and pod 2: logins %v, want 2", got)
	}

	// The pod goes: new logins fail and its open session ends.
	sess, err := dbA.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.ExecContext(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if n, err := m.RevokePod(ctx, podID(1).UID); err != nil || n != 1 {
		t.Fatalf("revoke: %d %v", n, err)
	}
	var ended time.Duration
	for {
		if _, err := sess.ExecContext(ctx, `SELECT 1`); err != nil {
			ended = time.Since(start)
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the revoked pod's session still answers after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%s: the revoked pod's open session ended %v after the revocation", tg.Engine, ended.Round(time.Millisecond))
	if ended > 5*time.Second {
		t.Fatalf("session ended after %v, more than 5s", ended)
	}
	fresh := dbcredtest.Open(t, tg.Driver, tg.DSN(a.User, string(a.Password)))
	if err := fresh.Ping(); err == nil {
		t.Fatal("the revoked login still logs in")
	}
	if got := tg.Logins(t); len(got) != 1 || got[0] != b.User {
		t.Fatalf("logins after the revocation: %v", got)
	}
	if r := e.records(audit.ActionDatabaseRevoke); len(r) != 1 || r[0].PodUID != podID(1).UID || !strings.Contains(r[0].Reason, "1 session(s) ended") {
		t.Fatalf("revocation audit: %+v", r)
	}
	// The same pod asking again (its volume came back) gets a new login.
	a2 := issue(1)
	if a2.User == a.User {
		t.Fatal("a new lease reused the dropped login")
	}

	// A renewal past its time extends the login; past the password's
	// max ttl it sets a new password (the old one stops working); a
	// revocation cutoff after the password was set does the same.
	e.offset.Store(int64(50 * time.Minute))
	ext := issue(2)
	if !bytes.Equal(ext.Password, b.Password) || !ext.Expiry.After(b.Expiry) {
		t.Fatalf("a renewal after 50 min: expiry %v -> %v, same password %v", b.Expiry, ext.Expiry, bytes.Equal(ext.Password, b.Password))
	}
	e.offset.Store(int64(2*time.Hour + 30*time.Minute))
	rot := issue(2)
	if bytes.Equal(rot.Password, b.Password) || rot.User != b.User {
		t.Fatalf("after max ttl: same password %v, user %s", bytes.Equal(rot.Password, b.Password), rot.User)
	}
	if err := dbcredtest.Open(t, tg.Driver, tg.DSN(b.User, string(b.Password))).Ping(); err == nil {
		t.Fatal("the replaced password still logs in")
	}
	if err := dbcredtest.Open(t, tg.Driver, tg.DSN(rot.User, string(rot.Password))).Ping(); err != nil {
		t.Fatalf("the new password: %v", err)
	}
	e.offset.Store(0)
	forced, err := m.Issue(ctx, podID(2), "orders", time.Hour, time.Now().Add(3*time.Hour))
	if err != nil || bytes.Equal(forced.Password, rot.Password) {
		t.Fatalf("an operator's renewal did not replace the password: %v", err)
	}
	secrets = append(secrets, string(forced.Password))

	// The KEK rotation re-wraps lease passwords: the pod still gets its.
	if _, err := e.kr.RotateKEK(ctx, e.st); err != nil {
		t.Fatal(err)
	}
	if after := issue(2); !bytes.Equal(after.Password, forced.Password) {
		t.Fatal("the pod's password changed across a KEK rotation")
	}

	// The delete was missed (the node was down): the lease is not renewed
	// and the reaper drops the login once its validity has passed.
	c := issue(3)
	e.offset.Store(int64(time.Hour + 6*time.Second))
	waitFor(t, 5*time.Second, "the reaper to drop an unrenewed login", func() bool { return !contains(tg.Logins(t), c.User) })
	e.offset.Store(0)

	// The database down during a revocation: revoked when it returns.
	d := issue(4)
	tg.Down(t)
	if _, err := m.RevokePod(ctx, podID(4).UID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(7 * time.Second) // past a call's deadline: the reaper gave up once at least
	if l, err := e.st.Lease(ctx, store.LeaseKey(podID(4).UID, "orders")); err != nil || l.Attempts == 0 {
		t.Fatalf("the lease while the database is down: %+v %v", l, err)
	}
	tg.Up(t)
	waitFor(t, 40*time.Second, "the revocation after the database came back", func() bool { return !contains(tg.Logins(t), d.User) })

	// Nothing secret in the logs, the audit or the connection listing.
	list, err := m.List(ctx)
	if err != nil || len(list) != 1 || list[0].Admin != "" {
		t.Fatalf("list: %+v %v", list, err)
	}
	e.mu.Lock()
	logs := e.logs.String()
	auditText := fmt.Sprintf("%+v", e.audit)
	e.mu.Unlock()
	for _, s := range secrets {
		if strings.Contains(logs, s) || strings.Contains(auditText, s) {
			t.Fatal("a password is in the logs or the audit")
		}
	}
	if !strings.Contains(logs, "not revoked yet") {
		t.Fatalf("the failed revocation was not logged:\n%s", logs)
	}
	// A pod deleted while its node was down, seen gone by keyd's pod
	// informer: its login is dropped without waiting for its expiry.
	g := issue(6)
	e.gone.Store(podID(6).UID, true)
	waitFor(t, 5*time.Second, "the reaper to drop a gone pod's login", func() bool { return !contains(tg.Logins(t), g.User) })
	if r := e.records(audit.ActionDatabaseRevoke); !strings.Contains(r[len(r)-1].Reason, "no longer exists") {
		t.Fatalf("revocation of a gone pod: %+v", r[len(r)-1])
	}

	// A connection in use is not deleted (the clock steps above let the
	// reaper drop every earlier lease, so a pod gets one now).
	issue(5)
	if err := m.Delete(ctx, "orders"); !errors.Is(err, dbcred.ErrInUse) {
		t.Fatalf("delete while in use: %v", err)
	}

	// A tampered store's lease naming a login podkey did not make (no
	// prefix) is refused, never dropped, however often the reaper runs.
	tg.CreateLogin(t, "app_owner")
	pw, _ := e.kr.Wrap(ctx, []byte("x"), keyring.LeaseAAD(store.LeaseKey("evil", "orders"), "app_owner"))
	if err := e.st.CreateLease(ctx, store.Lease{Key: store.LeaseKey("evil", "orders"), Object: "orders", Connection: "orders",
		PodUID: "evil", Role: "app_owner", Wrapped: pw, State: store.LeaseRevoking, Created: time.Now(), Expiry: time.Now(),
		RevokeAt: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reap(ctx); err == nil || !strings.Contains(err.Error(), "outside the prefix") {
		t.Fatalf("reaping a lease outside the prefix: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // the running reaper's turn, too
	if !tg.HasLogin(t, "app_owner") {
		t.Fatal("the reaper dropped a login podkey did not make")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > limit {
			t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
}

// Many pods' first logins arrive at once on a keyd that has not yet opened
// the connection, and the connection is redefined (its TTL changed) while
// they run: every login is made. An admin connection opened, replaced or
// deleted is closed by its last caller, never under one ("closed pool").
func TestFirstLoginsAtOnceWhileTheConnectionIsRedefined(t *testing.T) {
	ctx := context.Background()
	tg := dbcredtest.Postgres(t)
	e := newEnv(t)
	def := dbcred.Connection{Name: "orders", Engine: tg.Engine, Admin: tg.Admin, Database: tg.Database, GroupRole: "app_rw", TTL: time.Hour, MaxTTL: 3 * time.Hour}
	if _, err := e.m.Put(ctx, def); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for n := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := e.m.Issue(ctx, podID(1000+n), "orders", time.Hour, time.Time{})
			if err != nil {
				errs <- fmt.Errorf("pod %d: %w", n, err)
				return
			}
			clear(l.Password)
		}()
		if n == 16 {
			def.TTL = 2 * time.Hour
			if _, err := e.m.Put(ctx, def); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(tg.Logins(t)); got != 32 {
		t.Fatalf("%d logins in the database, want 32", got)
	}
}
