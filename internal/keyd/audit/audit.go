// Package audit is keyd's tamper-evident log. Every issue, verify, deny and
// revoke appends a record; each record carries the MAC of its predecessor
// and its own MAC under a key only the HSM can produce, so altering,
// removing or reordering any record breaks the chain at that record's
// position. Records name who asked for what and the outcome; they never
// hold a secret value or a token.
//
// Records are written in group-committed batches. A version 2 record is
// MACed in software under a batch key, HMAC-SHA256 computed by the HSM over
// the position of the first record written under that key (the record's
// Batch field). The writer keeps a key for up to KeyLifetime before asking
// the HSM for the next, so a busy log costs one HSM operation per
// KeyLifetime rather than one per batch or record, and every record is
// still authenticated on its own. Version 1 records (one HSM MAC each)
// still verify.
package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emmansun/gmsm/sm3"

	"github.com/podkey/podkey/internal/keyd/store"
)

// Actions.
const (
	ActionIssue           = "issue"
	ActionVerify          = "verify"
	ActionRevoke          = "revoke"
	ActionSecretPut       = "secret.put"
	ActionSecretDelete    = "secret.delete"
	ActionPolicySet       = "policy.set"
	ActionKeyRotate       = "key.rotate"
	ActionKeyRetire       = "key.retire"
	ActionNodeCertificate = "node.certificate"
	ActionRenew           = "renew"
	ActionImageUnwrap     = "image.unwrap"
	ActionImageKeyCreate  = "image.key.create"
	ActionStoreBackup     = "store.backup"
	ActionApproval        = "approval" // an approved request executed (or refused): every signature
	ActionBreakGlass      = "approval.break-glass"
	ActionRosterSet       = "approval.roster"
	ActionEscrowRecover   = "tlcp.escrow.recover"
	ActionEscrowDestroy   = "tlcp.escrow.destroy"
	ActionDatabasePut     = "database.put"
	ActionDatabaseDelete  = "database.delete"
	ActionDatabaseRevoke  = "database.revoke" // a pod's login dropped, its sessions ended
)

// Results.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
)

// Record is one audit entry. Its JSON form (with MAC empty) is what the
// chain authenticates.
type Record struct {
	Version        int       `json:"v"`
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	Action         string    `json:"action"`
	Result         string    `json:"result"`
	Reason         string    `json:"reason,omitempty"`
	Namespace      string    `json:"namespace,omitempty"`
	ServiceAccount string    `json:"serviceAccount,omitempty"`
	Pod            string    `json:"pod,omitempty"`
	PodUID         string    `json:"podUID,omitempty"`
	Node           string    `json:"node,omitempty"`
	Objects        []string  `json:"objects,omitempty"` // name/kind/suite/g<generation>
	KeyID          string    `json:"keyID,omitempty"`   // access key ids are public identifiers
	TokenID        string    `json:"tokenID,omitempty"` // the jti of the pod token an issuance was made on
	Batch          uint64    `json:"batch,omitempty"`   // version 2: position of the first record under its key
	KeyGen         int       `json:"keyGen,omitempty"`  // version 2: the HSM audit key's generation the batch key is from (absent: 1)
	// Approval is the request that authorized an administrative
	// operation, with every signature (dual control).
	Approval *Approval `json:"approval,omitempty"`
	// Checkpoint, in a checkpoint record, signs the content hash of the
	// records before it (see checkpoint.go).
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// Alg is the record MAC's algorithm: "" HMAC-SHA256, AlgSM3 HMAC-SM3
	// (a generation of the audit key made for HMAC-SM3: its batch keys
	// come from HMAC-SM3 inside the HSM too).
	Alg  string `json:"alg,omitempty"`
	Prev []byte `json:"prev"`
	MAC  []byte `json:"mac,omitempty"`
}

// Approval is an approved request as audited: the document as signed
// (its digest under the roster's suite) and the signatures, so an auditor
// re-verifies each against the roster's public keys.
type Approval struct {
	ID         string              `json:"id"`
	Op         string              `json:"op"`
	Digest     string              `json:"digest"`
	Request    string              `json:"request"`
	Signatures []ApprovalSignature `json:"signatures"`
	RosterVer  int                 `json:"rosterVersion"`
	BreakGlass bool                `json:"breakGlass,omitempty"`
}

// ApprovalSignature is one person's signature in an Approval.
type ApprovalSignature struct {
	Name      string `json:"name"`
	Role      string `json:"role,omitempty"`
	Requester bool   `json:"requester,omitempty"`
	Sig       []byte `json:"sig"`
}

// MACFunc computes the chain MAC (HMAC-SHA256 under the HSM audit key).
type MACFunc func(ctx context.Context, data []byte) ([]byte, error)

// AlgSM3 names HMAC-SM3 in a record's Alg.
const AlgSM3 = "HMAC-SM3"

// SM3Keys are Keys some of whose generations are HMAC-SM3 keys: their
// batch keys come from HMAC-SM3 in the HSM and their records are MACed
// with HMAC-SM3.
type SM3Keys interface {
	SM3(ctx context.Context, gen int) (bool, error)
}

// keyAlg is the record MAC algorithm of a key generation.
func keyAlg(ctx context.Context, keys Keys, gen int) (string, error) {
	k, ok := keys.(SM3Keys)
	if !ok {
		return "", nil
	}
	sm3, err := k.SM3(ctx, gen)
	if err != nil || !sm3 {
		return "", err
	}
	return AlgSM3, nil
}

// Keys are the generations of the HSM audit key.
type Keys interface {
	// MAC computes the HMAC under generation gen (1: the first):
	// HMAC-SHA256, or HMAC-SM3 for a generation SM3Keys names.
	MAC(ctx context.Context, gen int, data []byte) ([]byte, error)
	// Current is the generation new batch keys come from. A writer never
	// goes back to an older generation than the chain's tail has.
	Current() int
}

// MAC makes a MACFunc the Keys of an audit key never rotated.
func (f MACFunc) MAC(ctx context.Context, gen int, data []byte) ([]byte, error) {
	if gen != 1 {
		return nil, fmt.Errorf("audit: key generation %d does not exist", gen)
	}
	return f(ctx, data)
}

// Current implements Keys: a single generation.
func (MACFunc) Current() int { return 1 }

const (
	domain      = "podkey-audit-v1\n"
	batchDomain = "podkey-audit-batch-v2\n"
	version     = 2
)

func (r Record) authenticated() ([]byte, error) {
	r.MAC = nil
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return append([]byte(domain), b...), nil
}

// batchKey is the key of the records from position first on: the HSM's
// MAC over it, which nobody without the HSM key can compute.
func batchKey(ctx context.Context, keys Keys, gen int, first uint64) ([]byte, error) {
	return keys.MAC(ctx, gen, binary.BigEndian.AppendUint64([]byte(batchDomain), first))
}

// keyGen is a record's audit key generation.
func (r *Record) keyGen() int { return max(1, r.KeyGen) }

// recordMAC is a record's MAC: under the HSM for version 1, under its
// batch key for version 2.
func recordMAC(ctx context.Context, keys Keys, key []byte, r *Record) ([]byte, error) {
	data, err := r.authenticated()
	if err != nil {
		return nil, err
	}
	if r.Version == 1 {
		return keys.MAC(ctx, 1, data)
	}
	hash := sha256.New
	if r.Alg == AlgSM3 {
		hash = sm3.New
	}
	h := hmac.New(hash, key)
	h.Write(data)
	return h.Sum(nil), nil
}

// Log appends records with group commit: concurrent appends are chained in
// arrival order and written in one durable transaction. Append returns only
// when its record is on disk.
type Log struct {
	st      store.Store
	keys    Keys
	anchors Anchors // nil: none

	// The newest anchor known (writer goroutine only): the stored chain
	// may not end before anchorSeq.
	anchorLoaded bool
	anchorSeq    uint64
	anchoredAt   time.Time
	// seenSeq is the longest chain this writer has read or written: a
	// shared store's chain only grows, so a shorter one was cut.
	seenSeq uint64

	// The chain's tail as this log last wrote it (writer goroutine only);
	// re-read from the store when unknown or when another writer moved it.
	tailSeq   uint64
	tailMAC   []byte
	tailGen   int // audit key generation of the tail record
	tailKnown bool

	// The batch key in use (writer goroutine only), for records from
	// keyFirst on, until keyBorn+keyLifetime.
	key         []byte
	keyGen      int
	keyAlg      string // the records' MAC algorithm under it
	keyFirst    uint64
	keyBorn     time.Time
	keyLifetime time.Duration

	failures atomic.Uint64 // appends the store did not take (see Failures)

	reqs   chan *pending
	done   chan struct{} // closed by Close
	exited chan struct{} // closed when the writer has stopped
	wg     sync.WaitGroup
}

type pending struct {
	rec   Record
	bind  *store.PodBinding
	nonce *store.Nonce
	err   chan error
}

// maxBatch bounds one transaction.
const maxBatch = 512

// commitDelay is how long a batch waits for more appends when the last
// one showed that others append concurrently: one journal sync costs a
// fixed amount of CPU however many records it carries, so a batch that
// waits a fraction of a sync for its peers makes the next syncs fewer.
// A lone caller never waits (its last batch held one record).
const commitDelay = 100 * time.Microsecond

// KeyLifetime is how long the writer keeps a batch key. The key is as
// sensitive as the HSM audit key's use, which keyd holds anyway; a short
// lifetime bounds how far records written under one key reach.
const KeyLifetime = time.Second

// Open starts a log that continues the chain stored in st.
func Open(st store.Store, keys Keys) *Log { return open(st, keys, nil, KeyLifetime) }

// OpenAnchored is Open that also anchors the chain in anchors every
// AnchorEvery and on Close, and refuses to continue a stored chain that
// ends before its newest anchor (ErrTruncated: every append fails).
func OpenAnchored(st store.Store, keys Keys, anchors Anchors) *Log {
	return open(st, keys, anchors, KeyLifetime)
}

func open(st store.Store, keys Keys, anchors Anchors, keyLifetime time.Duration) *Log {
	l := &Log{st: st, keys: keys, anchors: anchors, keyLifetime: keyLifetime,
		reqs: make(chan *pending, maxBatch), done: make(chan struct{}), exited: make(chan struct{})}
	l.wg.Add(1)
	go l.run()
	return l
}

// Failures counts appends the store refused or failed (a request given up
// by its caller, or made after Close, is not counted).
func (l *Log) Failures() uint64 { return l.failures.Load() }

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit log closed")

// Append chains and durably stores rec. Seq, Prev, MAC and Version are set
// by the log; Time defaults to now.
func (l *Log) Append(ctx context.Context, rec Record) error { return l.AppendBound(ctx, rec, nil) }

// AppendBound is Append that also stores the pod binding b (when not nil)
// in the same transaction as the record, so one fsync makes both durable.
func (l *Log) AppendBound(ctx context.Context, rec Record, b *store.PodBinding) error {
	return l.append(ctx, &pending{rec: rec, bind: b, err: make(chan error, 1)})
}

// AppendNonce is Append that also stores the signed request's nonce n in
// the same transaction as the record.
func (l *Log) AppendNonce(ctx context.Context, rec Record, n *store.Nonce) error {
	return l.append(ctx, &pending{rec: rec, nonce: n, err: make(chan error, 1)})
}

func (l *Log) append(ctx context.Context, p *pending) error {
	if p.rec.Time.IsZero() {
		p.rec.Time = time.Now().UTC()
	}
	select {
	case <-l.done:
		return ErrClosed
	default:
	}
	select {
	case l.reqs <- p:
	case <-l.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-p.err:
		if err != nil {
			l.failures.Add(1)
		}
		return err
	case <-l.exited:
		// Closed while queued: the writer answered it or never saw it.
		select {
		case err := <-p.err:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		// The record may still be written; the caller's request fails.
		return ctx.Err()
	}
}

// Close stops the log after pending records are written.
func (l *Log) Close() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
}

func (l *Log) run() {
	defer l.wg.Done()
	defer close(l.exited)
	defer func() { clear(l.key) }()
	prev := 0
	for {
		var batch []*pending
		select {
		case p := <-l.reqs:
			batch = append(batch, p)
		case <-l.done:
			for {
				select {
				case p := <-l.reqs:
					p.err <- ErrClosed
				default:
					l.anchor()
					return
				}
			}
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case p := <-l.reqs:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		// Concurrent appenders: wait up to commitDelay for as many as the
		// last batch held.
		if prev > 1 && len(batch) < prev {
			t := time.NewTimer(commitDelay)
		wait:
			for len(batch) < prev {
				select {
				case p := <-l.reqs:
					batch = append(batch, p)
				case <-t.C:
					break wait
				}
			}
			t.Stop()
		}
		prev = len(batch)
		err := l.commit(batch)
		for _, p := range batch {
			p.err <- err
		}
		if err == nil && time.Since(l.anchoredAt) >= AnchorEvery {
			l.anchor()
		}
	}
}

// anchor saves the tail this writer last wrote as the newest anchor.
func (l *Log) anchor() {
	if l.anchors == nil || !l.tailKnown {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	a, err := NewAnchor(ctx, l.keys, l.tailSeq, l.tailMAC, time.Now())
	if err == nil {
		err = l.anchors.Save(ctx, a)
	}
	if err == nil {
		l.anchorSeq, l.anchoredAt = max(l.anchorSeq, a.Seq), time.Now()
	}
}

// loadAnchor reads and checks the newest anchor, once.
func (l *Log) loadAnchor(ctx context.Context) error {
	if l.anchors == nil || l.anchorLoaded {
		return nil
	}
	a, ok, err := l.anchors.Load(ctx)
	if err != nil {
		return fmt.Errorf("audit: anchor: %w", err)
	}
	if ok {
		if err := a.Check(ctx, l.keys); err != nil {
			return err
		}
		l.anchorSeq = a.Seq
	}
	l.anchorLoaded = true
	return nil
}

// commitTimeout bounds one batch's store transaction: a store that stalls
// fails the batch's calls (Unavailable) instead of holding them.
const commitTimeout = store.CallTimeout

// errKeyBehind aborts a store transaction whose tail the batch key does
// not fit (another replica moved it, or rotated the audit key): the key
// is renewed outside the transaction and the batch tried again.
var errKeyBehind = errors.New("audit: batch key does not fit the stored tail")

// commit chains a batch onto the stored tail inside the store's append
// transaction, which no other writer (a keyd replica on a shared store)
// interleaves with: the batch is sealed onto the true tail, read there.
// The HSM is asked for a batch key before the transaction, never while
// the chain's lock is held: a slow HSM must not stop other replicas.
func (l *Log) commit(batch []*pending) error {
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	if err := l.loadAnchor(ctx); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		if !l.tailKnown {
			last, err := l.st.LastAudit(ctx)
			if err != nil {
				return err
			}
			if err := l.checkNotCut(last.Seq); err != nil {
				return err
			}
			if err := l.setTail(last); err != nil {
				return err
			}
		}
		if err := l.renewKey(ctx); err != nil {
			return err
		}
		var tail []byte
		err := l.st.AppendAuditAfter(ctx, func(last store.AuditEntry) ([]store.AuditEntry, error) {
			if last.Seq != l.tailSeq {
				if err := l.setTail(last); err != nil {
					return nil, err
				}
			}
			if err := l.checkNotCut(last.Seq); err != nil {
				return nil, err
			}
			if !l.keyFits() {
				return nil, errKeyBehind
			}
			entries, t, err := l.seal(ctx, batch, l.tailSeq+1, l.tailMAC)
			tail = t
			return entries, err
		})
		if errors.Is(err, errKeyBehind) && attempt < 3 {
			continue // the tail read in the transaction stays known
		}
		if err != nil {
			l.tailKnown = false // the transaction may or may not have landed
			return err
		}
		l.tailSeq, l.tailMAC, l.tailGen = l.tailSeq+uint64(len(batch)), tail, l.keyGen
		l.seenSeq = max(l.seenSeq, l.tailSeq)
		return nil
	}
}

// checkNotCut refuses a stored chain ending at last that is shorter than
// the anchor, or than a chain this writer has seen.
func (l *Log) checkNotCut(last uint64) error {
	if floor := max(l.anchorSeq, l.seenSeq); last < floor {
		return fmt.Errorf("%w (it ends at %d; %d records were there)", ErrTruncated, last, floor)
	}
	l.seenSeq = last
	return nil
}

// keyGeneration is the audit key generation the next record takes: the
// newest, never older than the tail's.
func (l *Log) keyGeneration() int { return max(l.keys.Current(), l.tailGen, 1) }

// keyFits reports whether the batch key may seal records from the tail
// on: born at or before the next position, of the generation in force.
func (l *Log) keyFits() bool {
	return l.key != nil && l.keyFirst <= l.tailSeq+1 && l.keyGen == l.keyGeneration()
}

// renewKey asks the HSM for a batch key starting at the next position when
// the one held does not fit the tail or is older than its lifetime.
func (l *Log) renewKey(ctx context.Context) error {
	if l.keyFits() && time.Since(l.keyBorn) < l.keyLifetime {
		return nil
	}
	next, gen := l.tailSeq+1, l.keyGeneration()
	clear(l.key)
	l.key = nil
	alg, err := keyAlg(ctx, l.keys, gen)
	if err != nil {
		return fmt.Errorf("audit: key generation %d: %w", gen, err)
	}
	key, err := batchKey(ctx, l.keys, gen, next)
	if err != nil {
		return fmt.Errorf("audit: MAC: %w", err)
	}
	l.key, l.keyGen, l.keyAlg, l.keyFirst, l.keyBorn = key, gen, alg, next, time.Now()
	return nil
}

// seal chains the batch after prev from position first, each record MACed
// under the current batch key, and returns the entries and the last
// record's MAC.
func (l *Log) seal(ctx context.Context, batch []*pending, first uint64, prev []byte) ([]store.AuditEntry, []byte, error) {
	var err error
	entries := make([]store.AuditEntry, len(batch))
	for i, p := range batch {
		r := p.rec
		r.Version, r.Seq, r.Batch, r.Prev = version, first+uint64(i), l.keyFirst, prev
		if r.KeyGen = 0; l.keyGen > 1 {
			r.KeyGen = l.keyGen
		}
		r.Alg = l.keyAlg
		if r.MAC, err = recordMAC(ctx, l.keys, l.key, &r); err != nil {
			return nil, nil, err
		}
		data, err := json.Marshal(r)
		if err != nil {
			return nil, nil, err
		}
		entries[i] = store.AuditEntry{Seq: r.Seq, Data: data, Bind: p.bind, Nonce: p.nonce}
		prev = r.MAC
	}
	return entries, prev, nil
}

// setTail takes the chain's tail from its newest stored entry.
func (l *Log) setTail(last store.AuditEntry) error {
	l.tailSeq, l.tailMAC, l.tailGen = last.Seq, []byte{}, 1
	if last.Seq > 0 {
		var r Record
		if err := json.Unmarshal(last.Data, &r); err != nil {
			return fmt.Errorf("audit: tail record %d unreadable: %w", last.Seq, err)
		}
		l.tailMAC, l.tailGen = r.MAC, r.keyGen()
	}
	l.tailKnown = true
	return nil
}

// TamperError locates the first record at which the chain fails.
type TamperError struct {
	Seq    uint64
	Reason string
}

func (e *TamperError) Error() string {
	return fmt.Sprintf("audit chain broken at record %d: %s", e.Seq, e.Reason)
}

// Verify walks the whole log and checks positions, links and MACs. It
// returns the number of records proven, or a *TamperError.
func Verify(ctx context.Context, st store.Store, keys Keys) (uint64, error) {
	n, _, err := verify(ctx, st, keys, 0)
	return n, err
}

// VerifyAnchored is Verify that also holds the chain against its newest
// anchor: a chain that ends before it is ErrTruncated, one whose record
// at the anchor differs is a *TamperError. Without an anchor it is Verify.
func VerifyAnchored(ctx context.Context, st store.Store, keys Keys, anchors Anchors) (uint64, error) {
	a, ok, err := anchors.Load(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit: anchor: %w", err)
	}
	if !ok {
		return Verify(ctx, st, keys)
	}
	if err := a.Check(ctx, keys); err != nil {
		return 0, err
	}
	n, at, err := verify(ctx, st, keys, a.Seq)
	if err != nil {
		return n, err
	}
	return n, checkAnchor(a, n, func(uint64) ([]byte, error) { return at, nil })
}

// verify is Verify, also returning the MAC of record macOf (nil when the
// chain does not reach it).
func verify(ctx context.Context, st store.Store, keys Keys, macOf uint64) (uint64, []byte, error) {
	var at []byte
	var (
		n        uint64
		prev     = []byte{}
		prevGen  = 1
		key      []byte // of batch keyBatch, generation keyGen
		keyBatch uint64
		keyGen   int
		keyAlgo  string
	)
	defer func() { clear(key) }()
	err := st.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
		want := n + 1
		var r Record
		if err := json.Unmarshal(e.Data, &r); err != nil {
			return &TamperError{Seq: e.Seq, Reason: "record is not valid JSON"}
		}
		switch {
		case e.Seq != want:
			return &TamperError{Seq: want, Reason: fmt.Sprintf("record missing (next stored is %d)", e.Seq)}
		case r.Seq != e.Seq:
			return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("record claims position %d", r.Seq)}
		case !bytes.Equal(r.Prev, prev):
			return &TamperError{Seq: e.Seq, Reason: "link to the previous record does not match"}
		case r.Version != 1 && r.Version != version:
			return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("unknown record version %d", r.Version)}
		case r.Version == version && (r.Batch == 0 || r.Batch > r.Seq):
			return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("batch position %d is not at or before the record", r.Batch)}
		case r.KeyGen < 0 || r.keyGen() < prevGen:
			return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("audit key generation %d comes after generation %d", r.keyGen(), prevGen)}
		}
		if r.Version == version && (key == nil || keyBatch != r.Batch || keyGen != r.keyGen()) {
			clear(key)
			var err error
			if key, err = batchKey(ctx, keys, r.keyGen(), r.Batch); err != nil {
				return err
			}
			if keyAlgo, err = keyAlg(ctx, keys, r.keyGen()); err != nil {
				return err
			}
			keyBatch, keyGen = r.Batch, r.keyGen()
		}
		if r.Version == version && r.Alg != keyAlgo {
			return &TamperError{Seq: e.Seq, Reason: fmt.Sprintf("MAC algorithm %q is not that of audit key generation %d", r.Alg, r.keyGen())}
		}
		m, err := recordMAC(ctx, keys, key, &r)
		if err != nil {
			return err
		}
		if !bytes.Equal(m, r.MAC) {
			return &TamperError{Seq: e.Seq, Reason: "MAC does not match the record's contents"}
		}
		prev, prevGen = r.MAC, r.keyGen()
		if r.Seq == macOf {
			at = r.MAC
		}
		n++
		return nil
	})
	return n, at, err
}

// Export writes every record as one JSON object per line.
func Export(ctx context.Context, st store.Store, fn func(line []byte) error) error {
	return st.ScanAudit(ctx, 1, func(e store.AuditEntry) error { return fn(e.Data) })
}
