package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta        = []byte("meta")
	bucketSecrets     = []byte("secrets")
	bucketRevocations = []byte("revocations")
	bucketAudit       = []byte("audit")
	bucketPods        = []byte("pods")
	bucketNonces      = []byte("nonces")
	bucketRenewals    = []byte("renewals")
	keyPolicy         = []byte("policy")
	keySchema         = []byte("schema")
)

const schemaVersion = "1"

// Bolt is the embedded store: one bbolt file, fsynced on every commit.
type Bolt struct {
	db *bolt.DB
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the store file (mode 0600). It fails fast when
// another process holds the file.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketSecrets, bucketRevocations, bucketAudit, bucketPods, bucketNonces, bucketRenewals} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %s, this keyd reads %s", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

// Close closes the file.
func (b *Bolt) Close() error { return b.db.Close() }

func (b *Bolt) Policy(_ context.Context) ([]byte, error) {
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyPolicy)
		if v == nil {
			return ErrNotFound
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

func (b *Bolt) SetPolicy(_ context.Context, doc []byte) error {
	return b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyPolicy, doc) })
}

func (b *Bolt) UpdatePolicy(_ context.Context, fn func(current []byte) ([]byte, error)) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketMeta)
		var cur []byte
		if v := bk.Get(keyPolicy); v != nil {
			cur = append([]byte(nil), v...)
		}
		doc, err := fn(cur)
		if err != nil {
			return err
		}
		return bk.Put(keyPolicy, doc)
	})
}

func secretKey(namespace, name string) []byte { return []byte(namespace + "/" + name) }

func (b *Bolt) PutSecret(_ context.Context, s Secret) error {
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSecrets).Put(secretKey(s.Namespace, s.Name), v)
	})
}

func (b *Bolt) RewrapSecret(_ context.Context, namespace, name string, oldWrapped, newWrapped []byte) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketSecrets)
		v := bk.Get(secretKey(namespace, name))
		var s Secret
		if v == nil || json.Unmarshal(v, &s) != nil || !bytes.Equal(s.Wrapped, oldWrapped) {
			return fmt.Errorf("secret %s/%s: %w", namespace, name, ErrChanged)
		}
		s.Wrapped = newWrapped
		nv, err := json.Marshal(s)
		if err != nil {
			return err
		}
		return bk.Put(secretKey(namespace, name), nv)
	})
}

func (b *Bolt) Secret(_ context.Context, namespace, name string) (Secret, error) {
	var s Secret
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketSecrets).Get(secretKey(namespace, name))
		if v == nil {
			return fmt.Errorf("secret %s/%s: %w", namespace, name, ErrNotFound)
		}
		return json.Unmarshal(v, &s)
	})
	return s, err
}

func (b *Bolt) Secrets(_ context.Context, namespace string) ([]Secret, error) {
	var out []Secret
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSecrets).Cursor()
		prefix := []byte{}
		if namespace != "" {
			prefix = []byte(namespace + "/")
		}
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			var s Secret
			if err := json.Unmarshal(v, &s); err != nil {
				return err
			}
			s.Wrapped = nil // listings never carry values, even wrapped
			out = append(out, s)
		}
		return nil
	})
	return out, err
}

func hasPrefix(k, p []byte) bool { return len(k) >= len(p) && string(k[:len(p)]) == string(p) }

func (b *Bolt) DeleteSecret(_ context.Context, namespace, name string) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketSecrets)
		if bk.Get(secretKey(namespace, name)) == nil {
			return fmt.Errorf("secret %s/%s: %w", namespace, name, ErrNotFound)
		}
		return bk.Delete(secretKey(namespace, name))
	})
}

func (b *Bolt) Revoke(_ context.Context, r Revocation) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketRevocations)
		if v := bk.Get([]byte(r.PodUID)); v != nil {
			var old Revocation
			if json.Unmarshal(v, &old) == nil && old.Until.After(r.Until) {
				r.Until = old.Until // never shorten a revocation
			}
			if json.Unmarshal(v, &old) == nil && old.Revoked.After(r.Revoked) {
				r.Revoked = old.Revoked // nor move its time back
			}
		}
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return bk.Put([]byte(r.PodUID), v)
	})
}

func (b *Bolt) RevokedAt(_ context.Context, namespace, serviceAccount, podUID string, now time.Time) (time.Time, error) {
	var at time.Time
	err := b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketRevocations).Get([]byte(podUID)); v != nil {
			var r Revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if now.Before(r.Until) {
				at = r.Revoked
			}
		}
		// Renewals are an operator's rare orders, pruned when past: few.
		return tx.Bucket(bucketRenewals).ForEach(func(_, v []byte) error {
			var r Renewal
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if now.Before(r.Until) && r.At.After(at) && r.Covers(namespace, serviceAccount, podUID) {
				at = r.At
			}
			return nil
		})
	})
	return at, err
}

func (b *Bolt) AddRenewal(_ context.Context, r Renewal) (Renewal, error) {
	err := b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketRenewals)
		seq, err := bk.NextSequence()
		if err != nil {
			return err
		}
		r.Seq = seq
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return bk.Put(binary.BigEndian.AppendUint64(nil, seq), v)
	})
	return r, err
}

func (b *Bolt) Renewals(_ context.Context, after uint64, now time.Time) ([]Renewal, error) {
	var out []Renewal
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRenewals).Cursor()
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, after+1)); k != nil; k, v = c.Next() {
			var r Renewal
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if now.Before(r.Until) {
				out = append(out, r)
			}
		}
		return nil
	})
	return out, err
}

func (b *Bolt) PruneRevocations(_ context.Context, now time.Time) (int, error) {
	n, err := b.prune(bucketRevocations, func(v []byte) bool {
		var r Revocation
		return json.Unmarshal(v, &r) == nil && !now.Before(r.Until)
	})
	if err != nil {
		return n, err
	}
	m, err := b.prune(bucketRenewals, func(v []byte) bool {
		var r Renewal
		return json.Unmarshal(v, &r) == nil && !now.Before(r.Until)
	})
	return n + m, err
}

// prune deletes the bucket's entries whose value expired says are past.
func (b *Bolt) prune(bucket []byte, expired func(v []byte) bool) (int, error) {
	n := 0
	err := b.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if expired(v) {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, err
}

type podBinding struct {
	Node  string    `json:"node"`
	Until time.Time `json:"until"`
}

// putBinding writes a binding unless the stored one is for the same node
// and lasts at least as long.
func putBinding(tx *bolt.Tx, pb PodBinding) error {
	bk := tx.Bucket(bucketPods)
	if v := bk.Get([]byte(pb.PodUID)); v != nil {
		var old podBinding
		if json.Unmarshal(v, &old) == nil && old.Node == pb.Node && !old.Until.Before(pb.Until) {
			return nil
		}
	}
	v, err := json.Marshal(podBinding{Node: pb.Node, Until: pb.Until})
	if err != nil {
		return err
	}
	return bk.Put([]byte(pb.PodUID), v)
}

func (b *Bolt) PodNode(_ context.Context, podUID string, now time.Time) (string, time.Time, error) {
	var (
		node  string
		until time.Time
	)
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPods).Get([]byte(podUID))
		if v == nil {
			return nil
		}
		var pb podBinding
		if err := json.Unmarshal(v, &pb); err != nil {
			return err
		}
		if now.Before(pb.Until) {
			node, until = pb.Node, pb.Until
		}
		return nil
	})
	return node, until, err
}

func seqKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

func (b *Bolt) AppendAudit(ctx context.Context, entries []AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	return b.AppendAuditAfter(ctx, func(AuditEntry) ([]AuditEntry, error) { return entries, nil })
}

func (b *Bolt) AppendAuditAfter(_ context.Context, seal func(last AuditEntry) ([]AuditEntry, error)) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		var last AuditEntry
		if k, v := tx.Bucket(bucketAudit).Cursor().Last(); k != nil {
			last = AuditEntry{Seq: binary.BigEndian.Uint64(k), Data: append([]byte(nil), v...)}
		}
		entries, err := seal(last)
		if err != nil {
			return err
		}
		return appendEntries(tx, last.Seq, entries)
	})
}

// appendEntries writes entries that must follow position last, with their
// bindings and nonces.
func appendEntries(tx *bolt.Tx, last uint64, entries []AuditEntry) error {
	bk := tx.Bucket(bucketAudit)
	// Keys only ever grow: pack pages full instead of splitting at half.
	bk.FillPercent = 1.0
	for i, e := range entries {
		if e.Seq != last+1+uint64(i) {
			return fmt.Errorf("%w: next is %d, got %d", ErrAuditSeq, last+1+uint64(i), e.Seq)
		}
		if err := bk.Put(seqKey(e.Seq), e.Data); err != nil {
			return err
		}
		if e.Bind != nil {
			if err := putBinding(tx, *e.Bind); err != nil {
				return err
			}
		}
		if e.Nonce != nil {
			if err := tx.Bucket(bucketNonces).Put(e.Nonce.Key[:], unixNano(e.Nonce.Until)); err != nil {
				return err
			}
		}
	}
	return nil
}

func unixNano(t time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano())) }

func fromUnixNano(v []byte) time.Time {
	if len(v) != 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v)))
}

func (b *Bolt) NonceSeen(_ context.Context, key [32]byte, now time.Time) (bool, error) {
	seen := false
	err := b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketNonces).Get(key[:]); v != nil {
			seen = !now.After(fromUnixNano(v))
		}
		return nil
	})
	return seen, err
}

func (b *Bolt) PruneNonces(_ context.Context, now time.Time) (int, error) {
	return b.prune(bucketNonces, func(v []byte) bool { return now.After(fromUnixNano(v)) })
}

func (b *Bolt) LastAudit(_ context.Context) (AuditEntry, error) {
	var e AuditEntry
	err := b.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketAudit).Cursor().Last()
		if k != nil {
			e = AuditEntry{Seq: binary.BigEndian.Uint64(k), Data: append([]byte(nil), v...)}
		}
		return nil
	})
	return e, err
}

func (b *Bolt) ScanAudit(ctx context.Context, from uint64, fn func(AuditEntry) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(AuditEntry{Seq: binary.BigEndian.Uint64(k), Data: append([]byte(nil), v...)}); err != nil {
				return err
			}
		}
		return nil
	})
}

// Backup writes a consistent copy of the whole store to w from one read
// transaction, while writers go on, and returns its size and the sequence
// number of its last audit record (0 when the log is empty).
func (b *Bolt) Backup(w io.Writer) (size int64, lastAudit uint64, err error) {
	err = b.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketAudit).Cursor().Last(); k != nil {
			lastAudit = binary.BigEndian.Uint64(k)
		}
		size, err = tx.WriteTo(w)
		return err
	})
	return size, lastAudit, err
}
