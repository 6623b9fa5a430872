package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/podkey/podkey/internal/keyd/dbcred/dbcredtest"
	"github.com/podkey/podkey/pkg/podfiles"
)

// databaseOnANode gives a pod on the real node its own PostgreSQL login:
// keyd (in its container, on the host network) reaches a PostgreSQL that
// takes TCP over verified TLS only, as a managed database would; the node
// writes the login into the pod's tmpfs; a session opened with it (from
// the host, with what the pod's volume holds) works with the group's
// privileges, and ends when the pod is deleted, the login dropped. It
// returns the password, for the scan of etcd and the logs.
func (pc *podkeyCluster) databaseOnANode(ctx context.Context) [][]byte {
	t := pc.t
	tg := dbcredtest.PostgresTLS(t)
	// keyd reads the server's CA from its data volume.
	ca, err := os.ReadFile(tg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pc.dataDir, "orders-ca.pem"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	admin := strings.Replace(tg.Admin, "sslrootcert="+tg.CAFile, "sslrootcert=/var/lib/podkey/orders-ca.pem", 1)
	if out, code := pc.admin(admin, "database", "put", "orders", "--group-role=app_rw", "--params=sslmode=verify-full"); code != 0 {
		t.Fatal(out)
	}
	pc.class(ctx, "payments", "orders", "- {name: orders, kind: database, file: db.env, ttl: 30m}\n")
	p := pc.pod(ctx, "payments", "orders-1", "payments", "orders", true)
	if l := pc.waitLog(p, "READY", 2*time.Minute); !strings.Contains(l, "FILE db.env 440 2000") {
		t.Fatalf("the pod did not read db.env with mode 440 and group 2000:\n%s", l)
	}
	data, err := os.ReadFile(filepath.Join(pc.volumeDir(p), "db.env"))
	if err != nil {
		t.Fatal(err)
	}
	login, err := podfiles.ParseDatabaseLogin(data)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(login.User, "pk_payments_") || login.Host != "127.0.0.1" || !strings.Contains(login.URL(), "sslmode=verify-full") {
		t.Fatalf("the pod's login: user %s host %s", login.User, login.Host)
	}
	db := dbcredtest.Open(t, "pgx", login.URL()+"&sslrootcert="+tg.CAFile)
	if _, err := db.ExecContext(ctx, `INSERT INTO orders VALUES (7)`); err != nil {
		t.Fatalf("the pod's login: %v", err)
	}
	if _, err := db.ExecContext(ctx, `SELECT * FROM ledger`); err == nil {
		t.Fatal("the pod's login reads a table its group may not")
	}
	session, err := db.Conn(ctx) // one session, held open
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	start := time.Now()
	pc.deletePod(ctx, p)
	deadline := time.Now().Add(time.Minute)
	for session.PingContext(ctx) == nil || slices.Contains(tg.Logins(t), login.User) {
		if time.Now().After(deadline) {
			t.Fatalf("the deleted pod's login %s still works or exists after 1m", login.User)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("a deleted pod's database session ended and its login was dropped %v after the delete call", time.Since(start).Round(10*time.Millisecond))
	if out, code := pc.admin("", "database", "leases"); code != 0 || strings.Contains(out, login.User) {
		t.Fatalf("leases after the pod went: %s", out)
	}
	if out, code := pc.admin("", "database", "delete", "orders"); code != 0 {
		t.Fatal(out)
	}
	return [][]byte{login.Password, []byte(dbcredtest.AdminPassword)}
}
