package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/store"
)

func lease(uid, object string) store.Lease {
	now := time.Now().UTC().Truncate(time.Second)
	return store.Lease{Key: store.LeaseKey(uid, object), Object: object, Connection: "orders", Namespace: "shop",
		ServiceAccount: "api", Pod: "api-1", PodUID: uid, Role: "pk_" + uid, Wrapped: []byte("wrapped-" + uid),
		State: store.LeasePending, Created: now, PasswordAt: now, Expiry: now.Add(time.Hour)}
}

// Of concurrent creates of one pod's lease exactly one wins; the lease
// survives a restart; listings carry no wrapped password and select by
// pod; updates and deletes are compare-and-swap on the version.
func leasesAreOnePerPodAndSwappedByVersion(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
	l := lease("uid-a", "db")
	var won, exists atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch err := s.CreateLease(ctx, l); {
			case err == nil:
				won.Add(1)
			case errors.Is(err, store.ErrExists):
				exists.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 || exists.Load() != 15 {
		t.Fatalf("16 creates of one lease: %d won, %d told it exists", won.Load(), exists.Load())
	}
	for _, other := range []store.Lease{lease("uid-a", "db2"), lease("uid-b", "db"), lease("uid-ab", "db")} {
		if err := s.CreateLease(ctx, other); err != nil {
			t.Fatal(err)
		}
	}
	s = o.Reopen(t, s)
	got, err := s.Lease(ctx, l.Key)
	if err != nil || got.Version != 1 || !bytes.Equal(got.Wrapped, l.Wrapped) || got.Role != l.Role || !got.Expiry.Equal(l.Expiry) {
		t.Fatalf("lease after a restart: %+v %v", got, err)
	}
	if _, err := s.Lease(ctx, "nobody/db"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a missing lease: %v", err)
	}
	all, err := s.ListLeases(ctx, "")
	if err != nil || len(all) != 4 {
		t.Fatalf("all leases: %d %v", len(all), err)
	}
	for _, x := range all {
		if x.Wrapped != nil {
			t.Fatalf("a listing carries a wrapped password: %+v", x)
		}
	}
	mine, err := s.ListLeases(ctx, "uid-a")
	if err != nil || len(mine) != 2 || mine[0].PodUID != "uid-a" || mine[1].PodUID != "uid-a" {
		t.Fatalf("one pod's leases (uid-ab is another pod): %+v %v", mine, err)
	}

	got.State = store.LeaseActive
	upd, err := s.UpdateLease(ctx, got)
	if err != nil || upd.Version != 2 {
		t.Fatalf("update: %+v %v", upd, err)
	}
	if _, err := s.UpdateLease(ctx, got); !errors.Is(err, store.ErrChanged) {
		t.Fatalf("an update from a stale read: %v", err)
	}
	// Concurrent updates from one read: exactly one lands.
	var landed atomic.Int32
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := upd
			x.Role = fmt.Sprintf("r%d", i)
			if _, err := s.UpdateLease(ctx, x); err == nil {
				landed.Add(1)
			} else if !errors.Is(err, store.ErrChanged) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if landed.Load() != 1 {
		t.Fatalf("8 updates from one read: %d landed", landed.Load())
	}
	cur, err := s.Lease(ctx, l.Key)
	if err != nil || cur.Version != 3 || cur.State != store.LeaseActive {
		t.Fatalf("after the updates: %+v %v", cur, err)
	}
	if err := s.DeleteLease(ctx, l.Key, 2); !errors.Is(err, store.ErrChanged) {
		t.Fatalf("a delete from a stale read: %v", err)
	}
	if err := s.DeleteLease(ctx, l.Key, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteLease(ctx, l.Key, 3); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a second delete: %v", err)
	}
	if _, err := s.UpdateLease(ctx, cur); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an update of a deleted lease: %v", err)
	}
	// A pod's new lease after the old one was dropped starts again.
	if err := s.CreateLease(ctx, l); err != nil {
		t.Fatal(err)
	}
}
