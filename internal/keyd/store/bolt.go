package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
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

var keyJournal = []byte("journal") // in bucketMeta: the id the journal must carry

// Applying the journal to the bbolt file: when this many entries wait, when
// the journal is this full, and at least this often while any wait.
// applyEvery is a variable for tests that hold entries in the journal.
const (
	applyEntries = 2048
	applyBytes   = journalSize / 4
)

var applyEvery = 250 * time.Millisecond

// Bolt is the embedded store: one bbolt file, fsynced on every commit, and
// beside it the journal (FILE.journal) that makes an audit append durable
// with one small sync before bbolt has it. Reads see journalled entries.
type Bolt struct {
	db *bolt.DB

	mu      sync.Mutex
	j       *journal
	jpath   string
	tail    AuditEntry   // the newest audit entry, journalled or applied
	pending []AuditEntry // journalled, not yet in the bbolt file; never changed in place
	binds   map[string][]PodBinding
	nonces  map[[32]byte]time.Time
	claims  *claims // nonces granted by ClaimNonce in this process
	closed  bool

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the store file (mode 0600) and applies what a
// crash left in its journal. It fails fast when another process holds the
// file.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	var id []byte
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketSecrets, bucketRevocations, bucketAudit, bucketPods, bucketNonces, bucketRenewals, bucketLeases} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %s, this keyd reads %s", v, schemaVersion)
		}
		if id = bytes.Clone(meta.Get(keyJournal)); len(id) != journalIDSize {
			id = make([]byte, journalIDSize)
			if _, err := rand.Read(id); err != nil {
				return err
			}
			return meta.Put(keyJournal, id)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	b := &Bolt{db: db, jpath: JournalPath(path), claims: newClaims(), kick: make(chan struct{}, 1), done: make(chan struct{})}
	if err := b.recover(id); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	b.wg.Add(1)
	go b.applier()
	return b, nil
}

// recover applies the journal's unapplied frames to the file, then starts
// a fresh journal.
func (b *Bolt) recover(id []byte) error {
	err := b.db.Update(func(tx *bolt.Tx) error {
		if k, v := tx.Bucket(bucketAudit).Cursor().Last(); k != nil {
			b.tail = AuditEntry{Seq: binary.BigEndian.Uint64(k), Data: bytes.Clone(v)}
		}
		entries, err := replayJournal(b.jpath, id, b.tail.Seq)
		if err != nil || len(entries) == 0 {
			return err
		}
		if err := appendEntries(tx, b.tail.Seq, entries); err != nil {
			return fmt.Errorf("apply journal: %w", err)
		}
		b.tail = entries[len(entries)-1]
		return nil
	})
	if err != nil {
		return err
	}
	b.j, err = createJournal(b.jpath, id)
	return err
}

// applier applies the journal to the file in the background.
func (b *Bolt) applier() {
	defer b.wg.Done()
	t := time.NewTicker(applyEvery)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-b.kick:
		case <-t.C:
		}
		b.mu.Lock()
		if !b.closed && len(b.pending) > 0 {
			// A failure leaves the entries journalled; the next round, or
			// an appender that needs the room, tries again.
			_ = b.applyLocked()
		}
		b.mu.Unlock()
	}
}

// applyLocked writes the journalled entries into the bbolt file in one
// synced transaction and rewinds the journal.
func (b *Bolt) applyLocked() error {
	if len(b.pending) > 0 {
		err := b.db.Update(func(tx *bolt.Tx) error { return appendEntries(tx, b.pending[0].Seq-1, b.pending) })
		if err != nil {
			return fmt.Errorf("store: apply journal: %w", err)
		}
	}
	b.pending, b.binds, b.nonces = nil, nil, nil
	b.j.rewind()
	return nil
}

// flush applies the journal: what reads the bbolt file as a whole (a
// backup, a migration) sees every entry. then, when not nil, runs before
// any append follows (a backup begins its read transaction there).
func (b *Bolt) flush(then func() error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if err := b.applyLocked(); err != nil {
		return err
	}
	if then == nil {
		return nil
	}
	return then()
}

// Close applies the journal, removes it and closes the file. When the
// journal cannot be applied it stays, and the next open applies it.
func (b *Bolt) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	close(b.done)
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	applyErr := b.applyLocked()
	err := errors.Join(applyErr, b.j.close())
	if applyErr == nil {
		err = errors.Join(err, os.Remove(b.jpath))
	}
	return errors.Join(err, b.db.Close())
}

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

// keepsBinding is the binding rule: a stored binding stays when it is for
// the same node and lasts at least as long as the new one.
func keepsBinding(old podBinding, pb PodBinding) bool {
	return old.Node == pb.Node && !old.Until.Before(pb.Until)
}

// putBinding writes a binding unless keepsBinding says the stored one stays.
func putBinding(tx *bolt.Tx, pb PodBinding) error {
	bk := tx.Bucket(bucketPods)
	if v := bk.Get([]byte(pb.PodUID)); v != nil {
		var old podBinding
		if json.Unmarshal(v, &old) == nil && keepsBinding(old, pb) {
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
	// Journalled bindings first, then the file (see ScanAudit): the rule
	// applied again to bindings the file already has changes nothing.
	b.mu.Lock()
	journalled := b.binds[podUID]
	b.mu.Unlock()
	var pb podBinding
	err := b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketPods).Get([]byte(podUID)); v != nil {
			return json.Unmarshal(v, &pb)
		}
		return nil
	})
	if err != nil {
		return "", time.Time{}, err
	}
	for _, j := range journalled {
		if !keepsBinding(pb, j) {
			pb = podBinding{Node: j.Node, Until: j.Until}
		}
	}
	if !now.Before(pb.Until) {
		return "", time.Time{}, nil
	}
	return pb.Node, pb.Until, nil
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
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.j.err != nil {
		return b.j.err
	}
	entries, err := seal(AuditEntry{Seq: b.tail.Seq, Data: bytes.Clone(b.tail.Data)})
	if err != nil || len(entries) == 0 {
		return err
	}
	if err := checkSeqs(b.tail.Seq, entries); err != nil {
		return err
	}
	// The store keeps its own copy: the caller's slices are theirs again
	// when this returns.
	own := make([]AuditEntry, len(entries))
	for i, e := range entries {
		own[i] = AuditEntry{Seq: e.Seq, Data: bytes.Clone(e.Data)}
		if e.Bind != nil {
			bind := *e.Bind
			own[i].Bind = &bind
		}
		if e.Nonce != nil {
			n := *e.Nonce
			own[i].Nonce = &n
		}
	}
	frame := appendFrame(nil, own)
	if len(frame) > maxFrame || !frameFits(own) {
		// Larger than the journal: straight into the file, after what the
		// journal holds.
		if err := b.applyLocked(); err != nil {
			return err
		}
		if err := b.db.Update(func(tx *bolt.Tx) error { return appendEntries(tx, b.tail.Seq, own) }); err != nil {
			return err
		}
		b.tail = own[len(own)-1]
		return nil
	}
	if !b.j.fits(len(frame)) {
		if err := b.applyLocked(); err != nil {
			return err
		}
	}
	if err := b.j.write(frame); err != nil {
		return err
	}
	b.pending = append(b.pending, own...)
	for _, e := range own {
		if e.Bind != nil {
			if b.binds == nil {
				b.binds = map[string][]PodBinding{}
			}
			b.binds[e.Bind.PodUID] = append(b.binds[e.Bind.PodUID], *e.Bind)
		}
		if e.Nonce != nil {
			if b.nonces == nil {
				b.nonces = map[[32]byte]time.Time{}
			}
			b.nonces[e.Nonce.Key] = e.Nonce.Until
		}
	}
	b.tail = own[len(own)-1]
	if len(b.pending) >= applyEntries || b.j.used() >= applyBytes {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// checkSeqs is ErrAuditSeq unless entries follow position last, gapless.
func checkSeqs(last uint64, entries []AuditEntry) error {
	for i, e := range entries {
		if e.Seq != last+1+uint64(i) {
			return fmt.Errorf("%w: next is %d, got %d", ErrAuditSeq, last+1+uint64(i), e.Seq)
		}
	}
	return nil
}

// appendEntries writes entries that must follow position last, with their
// bindings and nonces.
func appendEntries(tx *bolt.Tx, last uint64, entries []AuditEntry) error {
	if err := checkSeqs(last, entries); err != nil {
		return err
	}
	bk := tx.Bucket(bucketAudit)
	// Keys only ever grow: pack pages full instead of splitting at half.
	bk.FillPercent = 1.0
	for _, e := range entries {
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

func (b *Bolt) ClaimNonce(ctx context.Context, n Nonce, now time.Time) (bool, error) {
	// The file first, outside the lock (a bbolt read may wait for a
	// writer that takes it); a nonce cannot leave b.nonces for the file
	// without passing through claims first, which the lock guards.
	stored := false
	if err := b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketNonces).Get(n.Key[:]); v != nil {
			stored = !now.After(fromUnixNano(v))
		}
		return nil
	}); err != nil || stored {
		return false, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if until, ok := b.nonces[n.Key]; ok && !now.After(until) {
		return false, nil
	}
	return b.claims.first(n.Key, n.Until, now), nil
}

func (b *Bolt) NonceSeen(_ context.Context, key [32]byte, now time.Time) (bool, error) {
	b.mu.Lock()
	until, journalled := b.nonces[key]
	b.mu.Unlock()
	if journalled && !now.After(until) {
		return true, nil
	}
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
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return AuditEntry{}, ErrClosed
	}
	return AuditEntry{Seq: b.tail.Seq, Data: bytes.Clone(b.tail.Data)}, nil
}

func (b *Bolt) ScanAudit(ctx context.Context, from uint64, fn func(AuditEntry) error) error {
	// The journalled entries first, then the file: an entry applied in
	// between is in the file, and what the file ends before is in the
	// snapshot (the applier never drops entries the file does not hold).
	b.mu.Lock()
	pending := b.pending
	b.mu.Unlock()
	seen := uint64(0)
	if from > 0 {
		seen = from - 1
	}
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			seen = binary.BigEndian.Uint64(k)
			if err := fn(AuditEntry{Seq: seen, Data: append([]byte(nil), v...)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range pending {
		if e.Seq <= seen {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(AuditEntry{Seq: e.Seq, Data: bytes.Clone(e.Data)}); err != nil {
			return err
		}
	}
	return nil
}

// Backup writes a consistent copy of the whole store to w from one read
// transaction, while writers go on, and returns its size and the sequence
// number of its last audit record (0 when the log is empty).
func (b *Bolt) Backup(w io.Writer) (size int64, lastAudit uint64, err error) {
	var tx *bolt.Tx
	if err := b.flush(func() (err error) { tx, err = b.db.Begin(false); return err }); err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	if k, _ := tx.Bucket(bucketAudit).Cursor().Last(); k != nil {
		lastAudit = binary.BigEndian.Uint64(k)
	}
	size, err = tx.WriteTo(w)
	return size, lastAudit, err
}
