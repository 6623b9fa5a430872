package dbcred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/podkey/podkey/internal/keyd/store"
)

// postgres administers logins on PostgreSQL. The admin role needs
// CREATEROLE, ADMIN OPTION on the group role, and pg_signal_backend to
// end the sessions of the logins it drops (docs/database.md).
type postgres struct {
	name, group, prefix string
	pool                *pgxpool.Pool
	rnd                 Random
}

func openPostgres(ctx context.Context, c *Connection, admin string, rnd Random) (*postgres, error) {
	cfg, err := store.PoolConfig(admin, store.PostgresOptions{})
	if errors.Is(err, store.ErrInsecureTransport) {
		return nil, fmt.Errorf("%w: database %q: the admin connection reaches PostgreSQL over TCP without verified TLS (sslmode=verify-full, or verify-ca with sslrootcert; a unix socket needs none)", ErrInvalid, c.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: database %q: the admin connection string does not parse", ErrInvalid, c.Name)
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: database %q: %v", ErrInvalid, c.Name, "the admin connection string is not usable")
	}
	return &postgres{name: c.Name, group: c.GroupRole, prefix: c.UserPrefix, pool: pool, rnd: rnd}, nil
}

// podDefaults are the host, port and database the admin connection
// names, for pods that are not told otherwise.
func postgresDefaults(admin string) (host string, port int, db string, ok bool) {
	cfg, err := pgconn.ParseConfig(admin)
	if err != nil {
		return "", 0, "", false
	}
	return cfg.Host, int(cfg.Port), cfg.Database, true
}

func (p *postgres) Close() { p.pool.Close() }

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func pgTime(t time.Time) string { return literal(t.UTC().Format("2006-01-02 15:04:05Z07:00")) }

func (p *postgres) fail(step string, err error) error {
	if err == nil {
		return nil
	}
	e := &dbError{conn: p.name, step: step, class: ErrUnavailable, detail: err.Error()}
	var pe *pgconn.PgError
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		e.code = "SQLSTATE " + pe.Code
		e.detail = pe.Severity + ": " + pe.Message
		// Connection failures, operator intervention, serialization
		// failures and deadlocks, and two replicas altering one role at
		// once ("tuple concurrently updated") pass with a retry.
		transient := strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57") || strings.HasPrefix(pe.Code, "40") ||
			pe.Code == "XX000" && strings.Contains(pe.Message, "concurrently")
		if !transient {
			e.class = ErrRefused
		}
	case errors.As(err, &ne), errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
	}
	return e
}

func (p *postgres) exec(ctx context.Context, step, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := p.pool.Exec(ctx, sql, args...)
	return p.fail(step, err)
}

func (p *postgres) exists(ctx context.Context, role string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var n int
	err := p.pool.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE rolname = $1`, role).Scan(&n)
	return n > 0, p.fail("look up login", err)
}

func (p *postgres) Check(ctx context.Context) error {
	ok, err := p.exists(ctx, p.group)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: database %q: group role %q does not exist", ErrInvalid, p.name, p.group)
	}
	return nil
}

func (p *postgres) Ensure(ctx context.Context, role string, password []byte, until time.Time) error {
	verifier, err := scramVerifier(ctx, p.rnd, password)
	if err != nil {
		return err
	}
	ok, err := p.exists(ctx, role)
	if err != nil {
		return err
	}
	attrs := "LOGIN PASSWORD " + literal(verifier) + " VALID UNTIL " + pgTime(until)
	if !ok {
		err := p.exec(ctx, "create login", "CREATE ROLE "+ident(role)+" INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "+attrs+" IN ROLE "+ident(p.group))
		var d *dbError
		if !errors.As(err, &d) || d.code != "SQLSTATE 42710" { // created meanwhile: alter it below
			return err
		}
	}
	if err := p.exec(ctx, "alter login", "ALTER ROLE "+ident(role)+" "+attrs); err != nil {
		return err
	}
	return p.exec(ctx, "grant group", "GRANT "+ident(p.group)+" TO "+ident(role))
}

func (p *postgres) Extend(ctx context.Context, role string, until time.Time) error {
	return p.exec(ctx, "extend login", "ALTER ROLE "+ident(role)+" VALID UNTIL "+pgTime(until))
}

func (p *postgres) Revoke(ctx context.Context, role string) (int, error) {
	ok, err := p.exists(ctx, role)
	if err != nil || !ok {
		return 0, err
	}
	if err := p.exec(ctx, "refuse logins", "ALTER ROLE "+ident(role)+" NOLOGIN"); err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	var n int
	err = p.pool.QueryRow(cctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1`, role).Scan(&n)
	cancel()
	if err := p.fail("end sessions", err); err != nil {
		return 0, err
	}
	err = p.exec(ctx, "drop login", "DROP ROLE IF EXISTS "+ident(role))
	var d *dbError
	if errors.As(err, &d) && d.code == "SQLSTATE 2BP01" {
		// The login made objects of its own (the group's privileges let
		// it): they go to the group role, then the login goes.
		err = errors.Join(p.exec(ctx, "reassign objects", "REASSIGN OWNED BY "+ident(role)+" TO "+ident(p.group)),
			p.exec(ctx, "drop privileges", "DROP OWNED BY "+ident(role)))
		if err == nil {
			err = p.exec(ctx, "drop login", "DROP ROLE IF EXISTS "+ident(role))
		}
	}
	return n, err
}
