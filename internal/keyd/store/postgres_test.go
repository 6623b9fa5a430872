package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	"github.com/podkey/podkey/internal/keyd/store/storetest"
	"github.com/podkey/podkey/pkg/pod"
)

// TestPostgres runs the store conformance suite on a real PostgreSQL,
// a fresh database per case.
func TestPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	conns := map[store.Store]string{}
	open := func(t *testing.T, conn string) store.Store {
		t.Helper()
		s, err := store.OpenPostgres(context.Background(), conn, store.PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		conns[s] = conn
		return s
	}
	storetest.Run(t, storetest.Opener{
		Open: func(t *testing.T) store.Store { return open(t, srv.NewDatabase(t)) },
		Reopen: func(t *testing.T, s store.Store) store.Store {
			s.Close()
			return open(t, conns[s])
		},
	})
}

// TestPostgresSchemaVersions: migrations apply once, a database newer
// than the binary is refused, and a bad connection string is refused
// without being repeated (it may hold a password).
func TestPostgresSchemaVersions(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t)
	conn := srv.NewDatabase(t)
	for i := 0; i < 2; i++ { // the second open finds the schema current
		s, err := store.OpenPostgres(ctx, conn, store.PostgresOptions{})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		s.Close()
	}
	want, _ := store.SchemaVersion()
	c, err := pgx.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var have int
	if err := c.QueryRow(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&have); err != nil || have != want {
		t.Fatalf("schema version %d (%v), want %d", have, err, want)
	}
	if _, err := c.Exec(ctx, `INSERT INTO schema_migrations (version, applied) VALUES ($1, 0)`, want+1); err != nil {
		t.Fatal(err)
	}
	if _, err := store.OpenPostgres(ctx, conn, store.PostgresOptions{}); err == nil || !strings.Contains(err.Error(), "newer than this keyd") {
		t.Fatalf("a newer schema: %v", err)
	}
	if _, err := store.OpenPostgres(ctx, "postgres://u:hunter2-Zq81@[bad", store.PostgresOptions{}); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a bad connection string: %v", err)
	}
}

// TestImportIsAllOrNothing: a bbolt store's state and audit log copy into
// an empty database; a source whose audit log has a gap, or a database
// already in use, leaves the destination exactly as it was.
func TestImportIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t)
	src, err := store.OpenBolt(t.TempDir() + "/keyd.db")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	now := time.Now()
	if err := src.SetPolicy(ctx, []byte("version: v1\n")); err != nil {
		t.Fatal(err)
	}
	if err := src.Revoke(ctx, store.Revocation{PodUID: "u1", Revoked: now, Until: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.AddRenewal(ctx, store.Renewal{Scope: pod.Scope{Namespace: "ns"}, At: now, Until: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 2500; i++ {
		e := store.AuditEntry{Seq: i, Data: []byte(fmt.Sprintf("record %d", i))}
		if i == 1 {
			e.Bind = &store.PodBinding{PodUID: "u1", Node: "n1", Until: now.Add(time.Hour)}
		}
		if err := src.AppendAudit(ctx, []store.AuditEntry{e}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := src.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *store.Postgres {
		p, err := store.OpenPostgres(ctx, srv.NewDatabase(t), store.PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	scan := func(fn func(store.AuditEntry) error) error { return src.ScanAudit(ctx, 1, fn) }

	gap := open()
	_, err = gap.Import(ctx, st, func(fn func(store.AuditEntry) error) error {
		return src.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
			if e.Seq == 1500 {
				return nil // a record missing past the first COPY chunk
			}
			return fn(e)
		})
	})
	if !errors.Is(err, store.ErrAuditSeq) {
		t.Fatalf("import of a log with a gap: %v", err)
	}
	if last, _ := gap.LastAudit(ctx); last.Seq != 0 {
		t.Fatalf("a failed import left %d audit records", last.Seq)
	}
	if _, err := gap.Policy(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a failed import left a policy: %v", err)
	}

	dst := open()
	n, err := dst.Import(ctx, st, scan)
	if err != nil || n != 2500 {
		t.Fatalf("import: %d %v", n, err)
	}
	if at, _ := dst.RevokedAt(ctx, "ns", "sa", "u1", now); at.IsZero() {
		t.Fatal("the revocation and the renewal were not copied")
	}
	if node, _, _ := dst.PodNode(ctx, "u1", now); node != "n1" {
		t.Fatalf("the binding: %q", node)
	}
	if r, err := dst.AddRenewal(ctx, store.Renewal{Scope: pod.Scope{Namespace: "ns"}, At: now, Until: now.Add(time.Hour)}); err != nil || r.Seq != 2 {
		t.Fatalf("the renewal after the copied one: %d %v", r.Seq, err)
	}
	if _, err := dst.Import(ctx, st, scan); !errors.Is(err, store.ErrNotEmpty) {
		t.Fatalf("a second import: %v", err)
	}
}

// TestPostgresOverTLS: keyd's store reaches a database that takes only
// TLS, verifying its certificate and name (sslmode=verify-full with the
// database's CA); a certificate from another CA, a name the certificate
// does not hold, or no TLS at all is refused, and no refusal quotes the
// connection string's password.
func TestPostgresOverTLS(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.StartTLS(t)
	db := pgtest.DatabaseName(srv.NewDatabase(t))
	const password = "password=hunter2-not-for-logs"
	conn := srv.TLSConnString(db) + " " + password
	p, err := store.OpenPostgres(ctx, conn, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetPolicy(ctx, []byte("version: v1\n")); err != nil {
		t.Fatal(err)
	}
	p.Close()

	other := pgtest.StartTLS(t) // another CA
	for name, c := range map[string][2]string{
		"another CA":   {strings.Replace(conn, srv.CAFile, other.CAFile, 1), "unknown authority"},
		"another name": {strings.Replace(conn, "host=127.0.0.1", "host=127.0.0.2", 1), "not 127.0.0.2"},
	} {
		p, err := store.OpenPostgres(ctx, c[0], store.PostgresOptions{})
		if err == nil {
			p.Close()
			t.Fatalf("%s: connected", name)
		}
		if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), c[1]) {
			t.Fatalf("%s: want a refusal saying %q, without the password: %v", name, c[1], err)
		}
		t.Logf("%s: %v", name, err)
	}
}

// TestPostgresTransportMustBeVerified: over TCP keyd takes only a TLS
// connection that verifies the server (verify-full, or verify-ca with a
// root), whatever form the connection string takes or the environment
// adds; anything that could fall back to plaintext or accept any server
// is refused before a byte is sent. A unix socket needs no TLS, and the
// development override lets plaintext through.
func TestPostgresTransportMustBeVerified(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.StartTLS(t)
	db := pgtest.DatabaseName(srv.NewDatabase(t))
	conn := srv.TLSConnString(db)
	host, port := "127.0.0.1", strings.Fields(strings.SplitN(conn, "port=", 2)[1])[0]
	url := "postgres://podkey@" + host + ":" + port + "/" + db
	for name, c := range map[string]string{
		"sslmode=disable":            strings.Replace(conn, "sslmode=verify-full", "sslmode=disable", 1),
		"sslmode=allow":              strings.Replace(conn, "sslmode=verify-full", "sslmode=allow", 1),
		"sslmode=prefer":             strings.Replace(conn, "sslmode=verify-full", "sslmode=prefer", 1),
		"sslmode=require, no root":   strings.Replace(strings.Replace(conn, "sslmode=verify-full", "sslmode=require", 1), "sslrootcert="+srv.CAFile, "", 1),
		"sslmode=verify-ca, no root": strings.Replace(strings.Replace(conn, "sslmode=verify-full", "sslmode=verify-ca", 1), "sslrootcert="+srv.CAFile, "", 1),
		"no sslmode (libpq: prefer)": strings.Replace(conn, "sslmode=verify-full", "", 1),
		"URL, sslmode=require":       url + "?sslmode=require",
		"URL, no sslmode":            url,
		"URL, a plaintext fallback":  "postgres://podkey@" + host + ":" + port + ",127.0.0.2:" + port + "/" + db + "?sslmode=prefer&sslrootcert=" + srv.CAFile,
	} {
		if _, err := store.OpenPostgres(ctx, c, store.PostgresOptions{}); !errors.Is(err, store.ErrInsecureTransport) {
			t.Errorf("%s: %v, want ErrInsecureTransport", name, err)
		}
	}
	t.Setenv("PGSSLMODE", "prefer")
	if _, err := store.OpenPostgres(ctx, url, store.PostgresOptions{}); !errors.Is(err, store.ErrInsecureTransport) {
		t.Errorf("PGSSLMODE=prefer: %v", err)
	}
	t.Setenv("PGSSLMODE", "")
	for name, c := range map[string]string{
		"verify-full":                       conn,
		"verify-ca with a root":             strings.Replace(conn, "sslmode=verify-full", "sslmode=verify-ca", 1),
		"require with a root (= verify-ca)": strings.Replace(conn, "sslmode=verify-full", "sslmode=require", 1),
		"unix socket, sslmode=disable":      pgtest.Start(t).NewDatabase(t),
	} {
		p, err := store.OpenPostgres(ctx, c, store.PostgresOptions{})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		p.Close()
	}
	// The override is the development mode: no verification required (the
	// server here takes only TLS, so a TLS connection without one is made).
	p, err := store.OpenPostgres(ctx, strings.Replace(conn, "sslmode=verify-full", "sslmode=require", 1)+" sslrootcert=", store.PostgresOptions{InsecureTransport: true})
	if err != nil {
		t.Fatalf("with the override: %v", err)
	}
	p.Close()
}
