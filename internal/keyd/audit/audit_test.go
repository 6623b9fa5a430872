package audit_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/store"
)

// The HSM-backed MAC is exercised in keyd's integration tests; here a
// software HMAC stands in so the chain logic is tested alone.
func softMAC(_ context.Context, data []byte) ([]byte, error) {
	m := hmac.New(sha256.New, []byte("test-key"))
	m.Write(data)
	return m.Sum(nil), nil
}

// newStore opens a fresh store, closed when the test ends.
func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// countingMAC is softMAC counting its calls (HSM operations).
func countingMAC() (audit.MACFunc, *atomic.Int64) {
	var calls atomic.Int64
	return func(ctx context.Context, data []byte) ([]byte, error) { calls.Add(1); return softMAC(ctx, data) }, &calls
}

// appendConcurrently appends n issue records from n goroutines at once.
func appendConcurrently(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := l.Append(context.Background(), audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK, Pod: fmt.Sprint(i)}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
}

func TestConcurrentAppendsFormOneChain(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	l := audit.Open(st, audit.MACFunc(softMAC))
	appendConcurrently(t, l, 200)
	l.Close()
	if err := l.Append(ctx, audit.Record{}); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	n, err := audit.Verify(ctx, st, audit.MACFunc(softMAC))
	if err != nil || n != 200 {
		t.Fatalf("verify: %d %v", n, err)
	}
	// A reopened log continues the chain.
	l2 := audit.Open(st, audit.MACFunc(softMAC))
	if err := l2.Append(ctx, audit.Record{Action: audit.ActionRevoke, Result: audit.ResultOK}); err != nil {
		t.Fatal(err)
	}
	l2.Close()
	if n, err := audit.Verify(ctx, st, audit.MACFunc(softMAC)); err != nil || n != 201 {
		t.Fatalf("verify after reopen: %d %v", n, err)
	}
}

// sm3Keys are software keys whose every generation is HMAC-SM3, as the
// keyring's are on a module with HMAC-SM3.
type sm3Keys struct{ audit.MACFunc }

func (sm3Keys) SM3(context.Context, int) (bool, error) { return true, nil }

func TestTamperingIsLocated(t *testing.T) {
	ctx := context.Background()
	for _, keys := range []struct {
		name string
		keys audit.Keys
		alg  string
	}{{"hmac-sha256", audit.MACFunc(softMAC), ""}, {"hmac-sm3", sm3Keys{audit.MACFunc(softMAC)}, audit.AlgSM3}} {
		for _, tc := range []struct {
			name   string
			mutate func(r *audit.Record)
		}{
			{"content", func(r *audit.Record) { r.Namespace = "evil" }},
			{"result", func(r *audit.Record) { r.Result = audit.ResultOK }},
			{"link", func(r *audit.Record) { r.Prev = []byte("x") }},
			{"algorithm", func(r *audit.Record) {
				if r.Alg == "" {
					r.Alg = audit.AlgSM3
				} else {
					r.Alg = ""
				}
			}},
		} {
			t.Run(keys.name+"/"+tc.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "a.db")
				st, _ := store.OpenBolt(path)
				l := audit.Open(st, keys.keys)
				for i := 0; i < 5; i++ {
					_ = l.Append(ctx, audit.Record{Action: audit.ActionVerify, Result: audit.ResultDenied, Namespace: "ns"})
				}
				l.Close()
				// Rewrite record 3 in place, as someone with file access could.
				var entries []store.AuditEntry
				_ = st.ScanAudit(ctx, 1, func(e store.AuditEntry) error { entries = append(entries, e); return nil })
				st.Close()
				var r audit.Record
				_ = json.Unmarshal(entries[2].Data, &r)
				if r.Alg != keys.alg {
					t.Fatalf("record MAC algorithm %q, want %q", r.Alg, keys.alg)
				}
				tc.mutate(&r)
				entries[2].Data, _ = json.Marshal(r)
				rewriteAudit(t, path, entries)
				st, _ = store.OpenBolt(path)
				defer st.Close()
				_, err := audit.Verify(ctx, st, keys.keys)
				var te *audit.TamperError
				if !errors.As(err, &te) || te.Seq != 3 {
					t.Fatalf("want tamper at 3, got %v", err)
				}
			})
		}
	}
}

// TestAppendRacingCloseNeverHangs: every Append returns, with success or
// ErrClosed, however it interleaves with Close.
func TestAppendRacingCloseNeverHangs(t *testing.T) {
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		st, err := store.OpenBolt(filepath.Join(t.TempDir(), "a.db"))
		if err != nil {
			t.Fatal(err)
		}
		l := audit.Open(st, audit.MACFunc(softMAC))
		var wg sync.WaitGroup
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := l.Append(ctx, audit.Record{Action: audit.ActionVerify}); err != nil && !errors.Is(err, audit.ErrClosed) {
					t.Error(err)
				}
			}()
		}
		l.Close()
		wg.Wait()
		st.Close()
	}
}

func TestFailuresAreCounted(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	l := audit.Open(st, audit.MACFunc(softMAC))
	defer l.Close()
	if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK}); err != nil {
		t.Fatal(err)
	}
	if l.Failures() != 0 {
		t.Fatalf("%d failures after a good append", l.Failures())
	}
	st.Close() // the store goes away under the log
	if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK}); err == nil {
		t.Fatal("an append to a closed store succeeded")
	}
	if l.Failures() != 1 {
		t.Fatalf("%d failures, want 1", l.Failures())
	}
}

// twoKeys is an audit key with two generations, the current one set by
// the test.
type twoKeys struct {
	cur  atomic.Int64
	keys map[int][]byte
}

func (k *twoKeys) MAC(_ context.Context, gen int, data []byte) ([]byte, error) {
	key, ok := k.keys[gen]
	if !ok {
		return nil, fmt.Errorf("no generation %d", gen)
	}
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil), nil
}

func (k *twoKeys) Current() int { return int(k.cur.Load()) }

func TestAuditKeyRotationKeepsOneChain(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	keys := &twoKeys{keys: map[int][]byte{1: []byte("generation-one-key"), 2: []byte("generation-two-key")}}
	keys.cur.Store(1)
	l := audit.Open(st, keys)
	for range 3 {
		if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	keys.cur.Store(2)
	for range 3 {
		if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if n, err := audit.Verify(ctx, st, keys); err != nil || n != 6 {
		t.Fatalf("verify across the rotation: %d, %v", n, err)
	}
	var gens []int
	_ = st.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
		var r audit.Record
		_ = json.Unmarshal(e.Data, &r)
		gens = append(gens, r.KeyGen)
		return nil
	})
	if fmt.Sprint(gens) != "[0 0 0 2 2 2]" {
		t.Fatalf("key generations %v", gens)
	}
	// A writer that has not heard of the rotation (another replica) never
	// goes back: it follows the tail's generation.
	keys.cur.Store(1)
	l = audit.Open(st, keys)
	if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if n, err := audit.Verify(ctx, st, keys); err != nil || n != 7 {
		t.Fatalf("after a stale writer: %d, %v", n, err)
	}
	// Without the new generation the chain cannot be verified past it.
	delete(keys.keys, 2)
	if _, err := audit.Verify(ctx, st, keys); err == nil {
		t.Fatal("records of a missing generation verified")
	}
}

// lockWatch is a store whose append transaction (the chain's lock on a
// shared store) is watched: inLock is set while its seal runs.
type lockWatch struct {
	store.Store
	inLock atomic.Bool
}

func (w *lockWatch) AppendAuditAfter(ctx context.Context, seal func(store.AuditEntry) ([]store.AuditEntry, error)) error {
	return w.Store.AppendAuditAfter(ctx, func(last store.AuditEntry) ([]store.AuditEntry, error) {
		w.inLock.Store(true)
		defer w.inLock.Store(false)
		return seal(last)
	})
}

// watchedKeys fails any HSM operation asked for while the lock is held.
type watchedKeys struct {
	*twoKeys
	w         *lockWatch
	underLock atomic.Int64
}

func (k *watchedKeys) MAC(ctx context.Context, gen int, data []byte) ([]byte, error) {
	if k.w.inLock.Load() {
		k.underLock.Add(1)
	}
	return k.twoKeys.MAC(ctx, gen, data)
}

// No HSM operation runs while the chain's lock is held, also when other
// writers (replicas) move the tail and rotate the audit key between
// batches: a slow or unreachable HSM must not stop the other replicas.
func TestNoHSMCallUnderTheChainLock(t *testing.T) {
	ctx := context.Background()
	w := &lockWatch{Store: newStore(t)}
	keys := &watchedKeys{twoKeys: &twoKeys{keys: map[int][]byte{1: []byte("g1"), 2: []byte("g2")}}, w: w}
	keys.cur.Store(1)
	a := audit.Open(w, keys)
	b := audit.Open(w, keys) // another replica's writer on the same store
	for i := range 40 {
		if i == 20 {
			keys.cur.Store(2)
		}
		l := a
		if i%3 == 0 {
			l = b
		}
		if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK, Pod: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	appendConcurrently(t, a, 30)
	a.Close()
	b.Close()
	if n := keys.underLock.Load(); n != 0 {
		t.Fatalf("%d HSM operations while the chain's lock was held", n)
	}
	if n, err := audit.Verify(ctx, w, keys.twoKeys); err != nil || n != 70 {
		t.Fatalf("verify: %d %v", n, err)
	}
}

// memAnchors keeps anchors in memory, as the token does.
type memAnchors struct {
	mu sync.Mutex
	a  *audit.Anchor
}

func (m *memAnchors) Load(context.Context) (audit.Anchor, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.a == nil {
		return audit.Anchor{}, false, nil
	}
	return *m.a, true, nil
}

func (m *memAnchors) Save(_ context.Context, a audit.Anchor) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.a == nil || a.Seq > m.a.Seq {
		m.a = &a
	}
	return nil
}

// cutStore shows the chain without its records after cut, as a store
// whose tail was deleted would.
type cutStore struct {
	store.Store
	cut atomic.Uint64 // 0: nothing cut
}

func (c *cutStore) visible(seq uint64) bool { n := c.cut.Load(); return n == 0 || seq <= n }

func (c *cutStore) LastAudit(ctx context.Context) (store.AuditEntry, error) {
	if n := c.cut.Load(); n > 0 {
		var e store.AuditEntry
		err := c.Store.ScanAudit(ctx, n, func(x store.AuditEntry) error {
			if x.Seq == n {
				e = x
			}
			return nil
		})
		return e, err
	}
	return c.Store.LastAudit(ctx)
}

func (c *cutStore) ScanAudit(ctx context.Context, from uint64, fn func(store.AuditEntry) error) error {
	return c.Store.ScanAudit(ctx, from, func(e store.AuditEntry) error {
		if !c.visible(e.Seq) {
			return nil
		}
		return fn(e)
	})
}

func (c *cutStore) AppendAuditAfter(ctx context.Context, seal func(store.AuditEntry) ([]store.AuditEntry, error)) error {
	if c.cut.Load() > 0 {
		last, err := c.LastAudit(ctx)
		if err != nil {
			return err
		}
		_, err = seal(last) // the writer sees the cut tail and must refuse
		if err == nil {
			return errors.New("the writer sealed onto a cut chain")
		}
		return err
	}
	return c.Store.AppendAuditAfter(ctx, seal)
}

// Deleting the newest records leaves a chain that verifies record by
// record; against its anchor it is truncated, and a writer refuses to go
// on from it, whether it saw the longer chain itself or only its anchor.
func TestTruncatedTailIsDetected(t *testing.T) {
	ctx := context.Background()
	st := &cutStore{Store: newStore(t)}
	anchors := &memAnchors{}
	keys := audit.MACFunc(softMAC)
	appendN := func(l *audit.Log, n int) error {
		for i := range n {
			if err := l.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK, Pod: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		return nil
	}
	l := audit.OpenAnchored(st, keys, anchors)
	if err := appendN(l, 10); err != nil {
		t.Fatal(err)
	}
	l.Close() // anchors the tail
	if n, err := audit.VerifyAnchored(ctx, st, keys, anchors); err != nil || n != 10 {
		t.Fatalf("intact: %d %v", n, err)
	}
	st.cut.Store(7)
	if n, err := audit.Verify(ctx, st, keys); err != nil || n != 7 {
		t.Fatalf("the cut chain alone verifies: %d %v", n, err)
	}
	if _, err := audit.VerifyAnchored(ctx, st, keys, anchors); !errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("against its anchor: %v", err)
	}
	// A writer started afterwards knows only the anchor.
	l2 := audit.OpenAnchored(st, keys, anchors)
	if err := appendN(l2, 1); !errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("a new writer went on from a cut chain: %v", err)
	}
	l2.Close()
	// A running writer that wrote the longer chain itself, anchored or not.
	st.cut.Store(0)
	l3 := audit.OpenAnchored(st, keys, anchors)
	defer l3.Close()
	if err := appendN(l3, 3); err != nil {
		t.Fatal(err)
	}
	st.cut.Store(12) // one of its own records, not yet anchored
	if err := appendN(l3, 1); !errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("the writer went on from a chain cut behind it: %v", err)
	}
	// A forged anchor does not count.
	a, _, _ := anchors.Load(ctx)
	a.Seq = 3
	anchors.a = &a
	if _, err := audit.VerifyAnchored(ctx, st, keys, anchors); err == nil || errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("a forged anchor: %v", err)
	}
}
