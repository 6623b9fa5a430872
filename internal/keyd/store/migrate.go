package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"
)

// State is everything a store holds besides its audit log, as copied from
// one store into another.
type State struct {
	Policy      []byte // nil when none was set
	Secrets     []Secret
	Revocations []Revocation
	Renewals    []Renewal
	Bindings    []PodBinding
	Nonces      []Nonce
	Leases      []Lease
}

// State reads everything but the audit log in one read transaction,
// expired entries included (the destination prunes them as keyd does).
func (b *Bolt) State(context.Context) (State, error) {
	var st State
	if err := b.flush(nil); err != nil {
		return st, err
	}
	err := b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyPolicy); v != nil {
			st.Policy = append([]byte(nil), v...)
		}
		each := func(bucket []byte, fn func(k, v []byte) error) error {
			return tx.Bucket(bucket).ForEach(fn)
		}
		err := errors.Join(
			each(bucketSecrets, appendJSON(&st.Secrets)),
			each(bucketRevocations, appendJSON(&st.Revocations)),
			each(bucketRenewals, appendJSON(&st.Renewals)),
			each(bucketLeases, appendJSON(&st.Leases)),
			each(bucketPods, func(k, v []byte) error {
				var pb podBinding
				if err := json.Unmarshal(v, &pb); err != nil {
					return err
				}
				st.Bindings = append(st.Bindings, PodBinding{PodUID: string(k), Node: pb.Node, Until: pb.Until})
				return nil
			}),
			each(bucketNonces, func(k, v []byte) error {
				n := Nonce{Until: fromUnixNano(v)}
				if copy(n.Key[:], k) != len(n.Key) {
					return fmt.Errorf("nonce key of %d bytes", len(k))
				}
				st.Nonces = append(st.Nonces, n)
				return nil
			}),
		)
		if err != nil {
			return fmt.Errorf("store: read %w", err)
		}
		return nil
	})
	return st, err
}

// appendJSON is a bucket walk that decodes each value onto out.
func appendJSON[T any](out *[]T) func(_, v []byte) error {
	return func(_, v []byte) error {
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return err
		}
		*out = append(*out, x)
		return nil
	}
}

// ErrNotEmpty refuses an import into a store that already holds state.
var ErrNotEmpty = errors.New("the destination already holds keyd state")

// importChunk is how many audit records go to the database per COPY.
const importChunk = 1000

// Import writes st and the audit log scan yields, in order from record 1,
// into an empty database in one transaction: it holds everything or, on
// any error, nothing. It returns the number of audit records written.
func (p *Postgres) Import(ctx context.Context, st State, scan func(fn func(AuditEntry) error) error) (uint64, error) {
	var records uint64
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		// Replicas started too early wait for this transaction instead
		// of writing beside it.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, auditLock); err != nil {
			return err
		}
		var used bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM policy) OR EXISTS (SELECT 1 FROM secrets)
			OR EXISTS (SELECT 1 FROM revocations) OR EXISTS (SELECT 1 FROM renewals)`).Scan(&used); err != nil {
			return err
		}
		if used {
			return ErrNotEmpty
		}
		b := &pgx.Batch{}
		if st.Policy != nil {
			b.Queue(`INSERT INTO policy (id, doc) VALUES (1, $1)`, st.Policy)
		}
		for _, s := range st.Secrets {
			b.Queue(`INSERT INTO secrets (namespace, name, wrapped, size, created, version) VALUES ($1, $2, $3, $4, $5, $6)`,
				s.Namespace, s.Name, s.Wrapped, s.Size, s.Created.UnixNano(), s.Version)
		}
		for _, r := range st.Revocations {
			b.Queue(`INSERT INTO revocations (pod_uid, revoked, until) VALUES ($1, $2, $3)`, r.PodUID, r.Revoked.UnixNano(), r.Until.UnixNano())
		}
		for _, r := range st.Renewals {
			b.Queue(`INSERT INTO renewals (seq, namespace, service_account, pod_uid, at, until) VALUES ($1, $2, $3, $4, $5, $6)`,
				int64(r.Seq), r.Namespace, r.ServiceAccount, r.UID, r.At.UnixNano(), r.Until.UnixNano())
		}
		// The next renewal continues the copied numbering: nodes follow
		// renewals by their Seq.
		b.Queue(`SELECT setval(pg_get_serial_sequence('renewals', 'seq'), coalesce(max(seq), 1), max(seq) IS NOT NULL) FROM renewals`)
		for _, pb := range st.Bindings {
			b.Queue(`INSERT INTO pods (pod_uid, node, until) VALUES ($1, $2, $3)`, pb.PodUID, pb.Node, pb.Until.UnixNano())
		}
		for _, n := range st.Nonces {
			b.Queue(`INSERT INTO nonces (key, until) VALUES ($1, $2)`, n.Key[:], n.Until.UnixNano())
		}
		for _, l := range st.Leases {
			doc, err := json.Marshal(l)
			if err != nil {
				return err
			}
			b.Queue(`INSERT INTO leases (key, pod_uid, doc, version) VALUES ($1, $2, $3, $4)`, l.Key, l.PodUID, doc, l.Version)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		var rows [][]any
		flush := func() error {
			if len(rows) == 0 {
				return nil
			}
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"audit"}, []string{"seq", "data"}, pgx.CopyFromRows(rows))
			rows = rows[:0]
			return err
		}
		err := scan(func(e AuditEntry) error {
			if e.Seq != records+1 {
				return fmt.Errorf("%w: the source's audit log has record %d after %d", ErrAuditSeq, e.Seq, records)
			}
			records++
			rows = append(rows, []any{int64(e.Seq), e.Data})
			if len(rows) == importChunk {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		return flush()
	})
	if errors.Is(err, ErrNotEmpty) || errors.Is(err, ErrAuditSeq) {
		return 0, err
	}
	return records, pgErr(err)
}
