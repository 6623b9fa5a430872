package service

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeDB answers the store clock after a delay the test sets, on a local
// clock the test moves.
type fakeDB struct {
	local         *time.Time
	offset, delay time.Duration
	err           error
}

func (f *fakeDB) Clock(context.Context) (time.Time, error) {
	*f.local = f.local.Add(f.delay / 2)
	at := f.local.Add(f.offset)
	*f.local = f.local.Add(f.delay / 2)
	return at, f.err
}

// The offset is measured at the middle of the round trip; a slow round
// trip does not replace a precise measurement, but is kept when there is
// none; a failed read keeps the offset in use.
func TestStoreClockOffset(t *testing.T) {
	local := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	db := &fakeDB{local: &local, offset: -7 * time.Minute, delay: 4 * time.Second}
	c := newStoreClock(db, func() time.Time { return local })
	if err := c.measure(context.Background()); err != nil {
		t.Fatal(err)
	}
	if off, e := c.Offset(); off != -7*time.Minute || e != 2*time.Second {
		t.Fatalf("first, slow measurement: offset %v ± %v", off, e)
	}
	db.offset, db.delay = 3*time.Second, 10*time.Millisecond
	if err := c.measure(context.Background()); err != nil {
		t.Fatal(err)
	}
	if off, e := c.Offset(); off != 3*time.Second || e != 5*time.Millisecond {
		t.Fatalf("a precise measurement: offset %v ± %v", off, e)
	}
	if got := c.Now(); !got.Equal(local.Add(3 * time.Second)) {
		t.Fatalf("Now = %v, want the local time plus the offset", got)
	}
	db.offset, db.delay = time.Hour, time.Second
	_ = c.measure(context.Background())
	if off, _ := c.Offset(); off != 3*time.Second {
		t.Fatalf("a slow round trip replaced a precise offset: %v", off)
	}
	db.err, db.delay = errors.New("down"), 0
	if err := c.measure(context.Background()); err == nil {
		t.Fatal("a failed read did not fail")
	}
	if off, _ := c.Offset(); off != 3*time.Second {
		t.Fatalf("a failed read changed the offset: %v", off)
	}
}
