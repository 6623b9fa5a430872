package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/podkey/podkey/pkg/store"
	"github.com/podkey/podkey/pkg/store/pgtest"
	"github.com/podkey/podkey/pkg/store/storetest"
)

// TestPostgres runs the store conformance suite on a real PostgreSQL,
// a fresh database per case.
func TestPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	conns := map[store.Store]string{}
	open := func(t *testing.T, conn string) store.Store {
		t.Helper()
		s, err := store.OpenPostgres(context.Background(), conn)
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
		s, err := store.OpenPostgres(ctx, conn)
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
	if _, err := store.OpenPostgres(ctx, conn); err == nil || !strings.Contains(err.Error(), "newer than this keyd") {
		t.Fatalf("a newer schema: %v", err)
	}
	if _, err := store.OpenPostgres(ctx, "postgres://u:hunter2-Zq81@[bad"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a bad connection string: %v", err)
	}
}
