package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is the Store on PostgreSQL, for several keyd replicas sharing
// one state. Its schema is the numbered SQL files in migrations/, applied
// in order at open inside one transaction each and recorded in
// schema_migrations; a database with a version newer than this binary
// knows is refused.
type Postgres struct {
	pool *pgxpool.Pool
}

var _ Store = (*Postgres)(nil)

//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	sql     string
}

func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, n := range names {
		base := strings.TrimPrefix(n, "migrations/")
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("store: migration %s: not numbered", base)
		}
		b, err := migrationFiles.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("store: migrations are not numbered 1, 2, ...: found %d at %d", m.version, i+1)
		}
	}
	return out, nil
}

// migrationLock is the advisory lock that serializes replicas migrating
// one database at start.
const migrationLock = 0x706f646b6579 // "podkey"

// OpenPostgres connects with a libpq connection string or URL (never
// logged: it may hold a password), refusing TCP without verified TLS
// unless o says otherwise, and brings the schema up to date.
func OpenPostgres(ctx context.Context, conn string, o PostgresOptions) (*Postgres, error) {
	cfg, err := PoolConfig(conn, o)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, pgErr(err)
	}
	p := &Postgres{pool: pool}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		if d := Detail(err); d != "" { // for the operator starting keyd
			return nil, fmt.Errorf("%w: %s", err, d)
		}
		return nil, err
	}
	return p, nil
}

// SchemaVersion is the newest migration this binary knows.
func SchemaVersion() (int, error) {
	ms, err := migrations()
	if err != nil {
		return 0, err
	}
	return len(ms), nil
}

func (p *Postgres) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("store: postgres: %w", err)
	}
	defer conn.Release()
	// Migrations may wait for another replica's and run long: no session
	// limits here, restored before the connection goes back to the pool.
	if _, err := conn.Exec(ctx, `SET lock_timeout = 0; SET statement_timeout = 0`); err != nil {
		return pgErr(err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `RESET lock_timeout; RESET statement_timeout`) //nolint:errcheck
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("store: postgres: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLock) //nolint:errcheck
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied bigint NOT NULL)`); err != nil {
		return fmt.Errorf("store: postgres: %w", err)
	}
	var have int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("store: postgres: %w", err)
	}
	if have > len(ms) {
		return fmt.Errorf("store: the database's schema is version %d, newer than this keyd's %d: upgrade keyd", have, len(ms))
	}
	for _, m := range ms[have:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)`, m.version, time.Now().UnixNano())
			return err
		})
		if err != nil {
			return fmt.Errorf("store: migration %d: %w", m.version, err)
		}
	}
	return nil
}

// Close closes the pool.
func (p *Postgres) Close() error { p.pool.Close(); return nil }

func (p *Postgres) Policy(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var doc []byte
	err := p.pool.QueryRow(ctx, `SELECT doc FROM policy WHERE id = 1`).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return doc, pgErr(err)
}

func (p *Postgres) SetPolicy(ctx context.Context, doc []byte) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	_, err := p.pool.Exec(ctx, `INSERT INTO policy (id, doc) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc`, doc)
	return pgErr(err)
}

func (p *Postgres) UpdatePolicy(ctx context.Context, fn func(current []byte) ([]byte, error)) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return pgErr(pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		// The row lock serializes updates; the first policy's insert
		// races only with itself, and the loser retries on the row.
		if _, err := tx.Exec(ctx, `INSERT INTO policy (id, doc) VALUES (1, '') ON CONFLICT (id) DO NOTHING`); err != nil {
			return err
		}
		var cur []byte
		if err := tx.QueryRow(ctx, `SELECT doc FROM policy WHERE id = 1 FOR UPDATE`).Scan(&cur); err != nil {
			return err
		}
		if len(cur) == 0 {
			cur = nil
		}
		doc, err := fn(cur)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE policy SET doc = $1 WHERE id = 1`, doc)
		return err
	}))
}

func (p *Postgres) PutSecret(ctx context.Context, s Secret) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	_, err := p.pool.Exec(ctx, `INSERT INTO secrets (namespace, name, wrapped, size, created, version) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (namespace, name) DO UPDATE SET wrapped = excluded.wrapped, size = excluded.size, created = excluded.created, version = excluded.version`,
		s.Namespace, s.Name, s.Wrapped, s.Size, s.Created.UnixNano(), s.Version)
	return pgErr(err)
}

func (p *Postgres) RewrapSecret(ctx context.Context, namespace, name string, oldWrapped, newWrapped []byte) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	tag, err := p.pool.Exec(ctx, `UPDATE secrets SET wrapped = $4 WHERE namespace = $1 AND name = $2 AND wrapped = $3`,
		namespace, name, oldWrapped, newWrapped)
	if err != nil {
		return pgErr(err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("secret %s/%s: %w", namespace, name, ErrChanged)
	}
	return nil
}

func (p *Postgres) Secret(ctx context.Context, namespace, name string) (Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	s := Secret{Namespace: namespace, Name: name}
	var created int64
	err := p.pool.QueryRow(ctx, `SELECT wrapped, size, created, version FROM secrets WHERE namespace = $1 AND name = $2`, namespace, name).
		Scan(&s.Wrapped, &s.Size, &created, &s.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return Secret{}, fmt.Errorf("secret %s/%s: %w", namespace, name, ErrNotFound)
	}
	s.Created = time.Unix(0, created)
	return s, pgErr(err)
}

func (p *Postgres) Secrets(ctx context.Context, namespace string) ([]Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	rows, err := p.pool.Query(ctx, `SELECT namespace, name, size, created, version FROM secrets
		WHERE $1 = '' OR namespace = $1 ORDER BY namespace, name`, namespace)
	if err != nil {
		return nil, pgErr(err)
	}
	var out []Secret
	for rows.Next() {
		var s Secret
		var created int64
		if err := rows.Scan(&s.Namespace, &s.Name, &s.Size, &created, &s.Version); err != nil {
			return nil, pgErr(err)
		}
		s.Created = time.Unix(0, created)
		out = append(out, s) // listings never carry values, even wrapped
	}
	return out, pgErr(rows.Err())
}

func (p *Postgres) DeleteSecret(ctx context.Context, namespace, name string) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	tag, err := p.pool.Exec(ctx, `DELETE FROM secrets WHERE namespace = $1 AND name = $2`, namespace, name)
	if err != nil {
		return pgErr(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("secret %s/%s: %w", namespace, name, ErrNotFound)
	}
	return nil
}

func (p *Postgres) Revoke(ctx context.Context, r Revocation) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	// Never shorten a revocation, nor move its time back.
	_, err := p.pool.Exec(ctx, `INSERT INTO revocations (pod_uid, revoked, until) VALUES ($1, $2, $3)
		ON CONFLICT (pod_uid) DO UPDATE SET revoked = greatest(revocations.revoked, excluded.revoked), until = greatest(revocations.until, excluded.until)`,
		r.PodUID, r.Revoked.UnixNano(), r.Until.UnixNano())
	return pgErr(err)
}

func (p *Postgres) RevokedAt(ctx context.Context, namespace, serviceAccount, podUID string, now time.Time) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var at int64
	err := p.pool.QueryRow(ctx, `SELECT greatest(
		coalesce((SELECT revoked FROM revocations WHERE pod_uid = $3 AND until > $4), 0),
		coalesce((SELECT max(at) FROM renewals WHERE until > $4 AND (
			(pod_uid <> '' AND pod_uid = $3) OR
			(pod_uid = '' AND service_account <> '' AND namespace = $1 AND service_account = $2) OR
			(pod_uid = '' AND service_account = '' AND namespace <> '' AND namespace = $1))), 0))`,
		namespace, serviceAccount, podUID, now.UnixNano()).Scan(&at)
	if err != nil || at == 0 {
		return time.Time{}, pgErr(err)
	}
	return time.Unix(0, at), nil
}

func (p *Postgres) PruneRevocations(ctx context.Context, now time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	n := 0
	for _, q := range []string{`DELETE FROM revocations WHERE until <= $1`, `DELETE FROM renewals WHERE until <= $1`} {
		tag, err := p.pool.Exec(ctx, q, now.UnixNano())
		if err != nil {
			return n, pgErr(err)
		}
		n += int(tag.RowsAffected())
	}
	return n, nil
}

func (p *Postgres) AddRenewal(ctx context.Context, r Renewal) (Renewal, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var seq int64
	err := p.pool.QueryRow(ctx, `INSERT INTO renewals (namespace, service_account, pod_uid, at, until) VALUES ($1, $2, $3, $4, $5) RETURNING seq`,
		r.Namespace, r.ServiceAccount, r.UID, r.At.UnixNano(), r.Until.UnixNano()).Scan(&seq)
	r.Seq = uint64(seq)
	return r, pgErr(err)
}

func (p *Postgres) Renewals(ctx context.Context, after uint64, now time.Time) ([]Renewal, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	rows, err := p.pool.Query(ctx, `SELECT seq, namespace, service_account, pod_uid, at, until FROM renewals
		WHERE seq > $1 AND until > $2 ORDER BY seq`, int64(after), now.UnixNano())
	if err != nil {
		return nil, pgErr(err)
	}
	var out []Renewal
	for rows.Next() {
		var r Renewal
		var seq, at, until int64
		if err := rows.Scan(&seq, &r.Namespace, &r.ServiceAccount, &r.UID, &at, &until); err != nil {
			return nil, pgErr(err)
		}
		r.Seq, r.At, r.Until = uint64(seq), time.Unix(0, at), time.Unix(0, until)
		out = append(out, r)
	}
	return out, pgErr(rows.Err())
}

func (p *Postgres) PodNode(ctx context.Context, podUID string, now time.Time) (string, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var node string
	var until int64
	err := p.pool.QueryRow(ctx, `SELECT node, until FROM pods WHERE pod_uid = $1 AND until > $2`, podUID, now.UnixNano()).Scan(&node, &until)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, pgErr(err)
	}
	return node, time.Unix(0, until), nil
}

// ClaimNonce inserts the nonce, or takes over a row past its time: one
// statement, so of two replicas claiming one nonce exactly one inserts
// (the other waits for it, then finds a live row and updates nothing).
func (p *Postgres) ClaimNonce(ctx context.Context, n Nonce, now time.Time) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	tag, err := p.pool.Exec(ctx, `INSERT INTO nonces (key, until) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE nonces.until < $3`,
		n.Key[:], n.Until.UnixNano(), now.UnixNano())
	if err != nil {
		return false, pgErr(err)
	}
	return tag.RowsAffected() == 1, nil
}

func (p *Postgres) NonceSeen(ctx context.Context, key [32]byte, now time.Time) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var seen bool
	err := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM nonces WHERE key = $1 AND until >= $2)`, key[:], now.UnixNano()).Scan(&seen)
	return seen, pgErr(err)
}

func (p *Postgres) PruneNonces(ctx context.Context, now time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	tag, err := p.pool.Exec(ctx, `DELETE FROM nonces WHERE until < $1`, now.UnixNano())
	if err != nil {
		return 0, pgErr(err)
	}
	return int(tag.RowsAffected()), nil
}

// auditLock serializes audit appends across replicas: the transaction
// that holds it reads the tail, seals the batch onto it and inserts.
const auditLock = 0x706f646b6579 + 1

func (p *Postgres) AppendAudit(ctx context.Context, entries []AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	return p.AppendAuditAfter(ctx, func(AuditEntry) ([]AuditEntry, error) { return entries, nil })
}

func (p *Postgres) AppendAuditAfter(ctx context.Context, seal func(last AuditEntry) ([]AuditEntry, error)) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return pgErr(pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, auditLock); err != nil {
			return err
		}
		var last AuditEntry
		var seq int64
		err := tx.QueryRow(ctx, `SELECT seq, data FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&seq, &last.Data)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		default:
			last.Seq = uint64(seq)
		}
		entries, err := seal(last)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			return nil
		}
		b := &pgx.Batch{}
		for i, e := range entries {
			if e.Seq != last.Seq+1+uint64(i) {
				return fmt.Errorf("%w: next is %d, got %d", ErrAuditSeq, last.Seq+1+uint64(i), e.Seq)
			}
			b.Queue(`INSERT INTO audit (seq, data) VALUES ($1, $2)`, int64(e.Seq), e.Data)
			if e.Bind != nil {
				// Kept when the stored binding is the same node's and lasts
				// at least as long (bbolt's rule).
				b.Queue(`INSERT INTO pods (pod_uid, node, until) VALUES ($1, $2, $3)
					ON CONFLICT (pod_uid) DO UPDATE SET node = excluded.node, until = excluded.until
					WHERE pods.node <> excluded.node OR pods.until < excluded.until`,
					e.Bind.PodUID, e.Bind.Node, e.Bind.Until.UnixNano())
			}
			if e.Nonce != nil {
				b.Queue(`INSERT INTO nonces (key, until) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET until = greatest(nonces.until, excluded.until)`,
					e.Nonce.Key[:], e.Nonce.Until.UnixNano())
			}
		}
		return tx.SendBatch(ctx, b).Close()
	}))
}

func (p *Postgres) LastAudit(ctx context.Context) (AuditEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var e AuditEntry
	var seq int64
	err := p.pool.QueryRow(ctx, `SELECT seq, data FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&seq, &e.Data)
	if errors.Is(err, pgx.ErrNoRows) {
		return AuditEntry{}, nil
	}
	e.Seq = uint64(seq)
	return e, pgErr(err)
}

// scanPage bounds the rows ScanAudit holds per query.
const scanPage = 1000

func (p *Postgres) ScanAudit(ctx context.Context, from uint64, fn func(AuditEntry) error) error {
	next := int64(from)
	for {
		page, err := p.scanPage(ctx, next)
		if err != nil {
			return err
		}
		for _, e := range page {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(page) < scanPage {
			return nil
		}
		next = int64(page[len(page)-1].Seq) + 1
	}
}

// scanPage reads up to scanPage entries from next on, within CallTimeout
// (a whole scan of a long log takes as long as it takes).
func (p *Postgres) scanPage(ctx context.Context, next int64) ([]AuditEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	rows, err := p.pool.Query(ctx, `SELECT seq, data FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2`, next, scanPage)
	if err != nil {
		return nil, pgErr(err)
	}
	defer rows.Close()
	var page []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var seq int64
		if err := rows.Scan(&seq, &e.Data); err != nil {
			return nil, pgErr(err)
		}
		e.Seq = uint64(seq)
		page = append(page, e)
	}
	return page, pgErr(rows.Err())
}

// PostgresURLEnv is the environment variable that may hold the connection
// string instead of a file.
const PostgresURLEnv = "PODKEY_POSTGRES_URL"

// ConnString reads the PostgreSQL connection string from file, or when
// file is empty from $PODKEY_POSTGRES_URL ("" when neither is set). It is
// never taken from a flag's value, which process listings show.
func ConnString(file string) (string, error) {
	if file == "" {
		return os.Getenv(PostgresURLEnv), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("PostgreSQL connection file: %w", err)
	}
	if s := strings.TrimSpace(string(b)); s != "" {
		return s, nil
	}
	return "", fmt.Errorf("PostgreSQL connection file %s is empty", file)
}

// Clock is the database server's time. Replicas sharing the database
// take revocation cutoffs and issue times from it (see service's
// storeClock), so their own clocks' skew cannot let a credential minted
// by one replica just before another's revocation outlive it.
func (p *Postgres) Clock(ctx context.Context) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	var us int64
	err := p.pool.QueryRow(ctx, `SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint`).Scan(&us)
	if err != nil {
		return time.Time{}, pgErr(err)
	}
	return time.UnixMicro(us), nil
}
