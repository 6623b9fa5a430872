package audit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/store"
)

// A batch key costs one HSM operation, and a record altered in the middle
// of a batch is still located exactly.
func TestBatchesCostOneHSMOperationAndLocateTampering(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a.db")
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	counted, calls := countingMAC()
	l := audit.Open(st, audit.MACFunc(counted))
	appendConcurrently(t, l, 300)
	l.Close()
	var entries []store.AuditEntry
	_ = st.ScanAudit(ctx, 1, func(e store.AuditEntry) error { entries = append(entries, e); return nil })
	batches := map[uint64]int{}
	mid := -1
	for i, e := range entries {
		var r audit.Record
		_ = json.Unmarshal(e.Data, &r)
		if r.Version != 2 || r.Batch == 0 {
			t.Fatalf("record %d: version %d batch %d", r.Seq, r.Version, r.Batch)
		}
		batches[r.Batch]++
		if r.Batch < r.Seq && i+1 < len(entries) && mid < 0 {
			mid = i
		}
	}
	if int(calls.Load()) != len(batches) {
		t.Fatalf("%d HSM operations for %d batches", calls.Load(), len(batches))
	}
	if mid < 0 {
		t.Skip("every record was committed alone; no batch to tamper with")
	}
	t.Logf("%d records in %d batches", len(entries), len(batches))
	st.Close()

	var r audit.Record
	_ = json.Unmarshal(entries[mid].Data, &r)
	r.Pod = "someone-else"
	entries[mid].Data, _ = json.Marshal(r)
	rewriteAudit(t, path, entries[mid:mid+1])
	st, _ = store.OpenBolt(path)
	defer st.Close()
	_, err = audit.Verify(ctx, st, audit.MACFunc(softMAC))
	var te *audit.TamperError
	if !errors.As(err, &te) || te.Seq != r.Seq {
		t.Fatalf("want tamper at %d (inside batch %d), got %v", r.Seq, r.Batch, err)
	}
}

// A store written with version 1 records (one HSM MAC each) keeps
// verifying once version 2 batches follow them.
func TestVersion1RecordsStillVerify(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a.db")
	var v1 []store.AuditEntry
	prev := []byte{}
	for seq := uint64(1); seq <= 2; seq++ {
		r := audit.Record{Version: 1, Seq: seq, Time: time.Unix(1700000000, 0).UTC(), Action: audit.ActionIssue, Result: audit.ResultOK, Prev: prev}
		b, _ := json.Marshal(r)
		r.MAC, _ = softMAC(ctx, append([]byte("podkey-audit-v1\n"), b...))
		data, _ := json.Marshal(r)
		v1 = append(v1, store.AuditEntry{Seq: seq, Data: data})
		prev = r.MAC
	}
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.AppendAudit(ctx, v1); err != nil {
		t.Fatal(err)
	}
	l := audit.Open(st, audit.MACFunc(softMAC))
	for i := 0; i < 3; i++ {
		if err := l.Append(ctx, audit.Record{Action: audit.ActionVerify, Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if n, err := audit.Verify(ctx, st, audit.MACFunc(softMAC)); err != nil || n != 5 {
		t.Fatalf("verify: %d %v", n, err)
	}
	st.Close()
	// Record 2 (version 1) altered: located there.
	var r audit.Record
	_ = json.Unmarshal(v1[1].Data, &r)
	r.Result = audit.ResultDenied
	v1[1].Data, _ = json.Marshal(r)
	rewriteAudit(t, path, v1[1:])
	st, _ = store.OpenBolt(path)
	defer st.Close()
	var te *audit.TamperError
	if _, err := audit.Verify(ctx, st, audit.MACFunc(softMAC)); !errors.As(err, &te) || te.Seq != 2 {
		t.Fatalf("want tamper at 2, got %v", err)
	}
}

// Two logs writing one store (as two writers of a shared store would)
// keep one chain: a log whose cached tail is stale re-reads it and retries.
func TestTwoWritersKeepOneChain(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	a, b := audit.Open(st, audit.MACFunc(softMAC)), audit.Open(st, audit.MACFunc(softMAC))
	for i := 0; i < 20; i++ {
		l := a
		if i%3 == 0 {
			l = b
		}
		if err := l.Append(ctx, audit.Record{Action: audit.ActionVerify, Result: audit.ResultOK, Pod: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	b.Close()
	if n, err := audit.Verify(ctx, st, audit.MACFunc(softMAC)); err != nil || n != 20 {
		t.Fatalf("verify: %d %v", n, err)
	}
}

// The writer keeps its batch key across commits for the key's lifetime,
// and asks the HSM for a new one, starting at the next position, once it
// has expired; both chains verify, and each HSM operation is one key.
func TestBatchKeyIsKeptForItsLifetime(t *testing.T) {
	for _, c := range []struct {
		name     string
		lifetime time.Duration
	}{{"kept", time.Hour}, {"expired at once", 0}} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			st := newStore(t)
			counted, calls := countingMAC()
			l := audit.OpenWithKeyLifetime(st, audit.MACFunc(counted), c.lifetime)
			const n = 20 // one after another: each Append is its own commit
			for i := 0; i < n; i++ {
				if err := l.Append(ctx, audit.Record{Action: audit.ActionVerify, Result: audit.ResultOK, Pod: fmt.Sprint(i)}); err != nil {
					t.Fatal(err)
				}
			}
			l.Close()
			firsts := map[uint64]bool{}
			_ = st.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
				var r audit.Record
				_ = json.Unmarshal(e.Data, &r)
				firsts[r.Batch] = true
				return nil
			})
			want := 1
			if c.lifetime == 0 {
				want = n
			}
			if int(calls.Load()) != want || len(firsts) != want {
				t.Fatalf("%d HSM operations and %d batch keys for %d commits; want %d", calls.Load(), len(firsts), n, want)
			}
			if got, err := audit.Verify(ctx, st, audit.MACFunc(softMAC)); err != nil || got != n {
				t.Fatalf("verify: %d %v", got, err)
			}
		})
	}
}
