package service

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// retryDelay returns the RetryInfo delay of a refusal, or fails.
func retryDelay(t *testing.T, err error) time.Duration {
	t.Helper()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("want ResourceExhausted, got %v", err)
	}
	d := keydv1.RetryDelay(err)
	if d == 0 {
		t.Fatalf("refusal without RetryInfo: %v", err)
	}
	return d
}

// admitN admits streams for id until one is refused; it returns the
// admitted streams' contexts and cancels.
func admitN(t *testing.T, a *admission, id string, max int) ([]context.Context, []context.CancelFunc) {
	t.Helper()
	var ctxs []context.Context
	var cancels []context.CancelFunc
	for range max {
		parent, cancel := context.WithCancel(context.Background())
		ctx, err := a.admit(parent, id)
		if err != nil {
			cancel()
			if d := retryDelay(t, err); d < minRetryHint || d > maxRetryHint {
				t.Fatalf("retry hint %v", d)
			}
			break
		}
		ctxs, cancels = append(ctxs, ctx), append(cancels, cancel)
	}
	t.Cleanup(func() {
		for _, c := range cancels {
			c()
		}
	})
	return ctxs, cancels
}

// One caller alone takes at most half the capacity; each newcomer is
// admitted at once, up to its share, while the first is refused.
func TestOneCallerCannotTakeEverything(t *testing.T) {
	a := newAdmission(2, 8) // capacity 10
	flood, _ := admitN(t, a, "node-a", 100)
	if len(flood) != 5 {
		t.Fatalf("a caller alone was admitted %d of 10", len(flood))
	}
	b, _ := admitN(t, a, "node-b", 100)
	if len(b) != 3 { // 10 / (2 identities + 1)
		t.Fatalf("the second caller was admitted %d", len(b))
	}
	c, _ := admitN(t, a, "node-c", 100)
	if len(c) != 2 { // what is left
		t.Fatalf("the third caller was admitted %d", len(c))
	}
	if _, err := a.admit(context.Background(), "node-a"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("the flooding caller admitted again: %v", err)
	}
}

// A freed slot goes to the identities with waiting calls in turn: a
// caller with many waiting calls does not make another wait behind all
// of them.
func TestFreedSlotsGoToIdentitiesInTurn(t *testing.T) {
	a := newAdmission(1, 40)
	aCtx, _ := admitN(t, a, "node-a", 6)
	bCtx, _ := admitN(t, a, "node-b", 2)
	if len(aCtx) != 6 || len(bCtx) != 2 {
		t.Fatalf("admitted %d and %d", len(aCtx), len(bCtx))
	}
	first, err := a.run(aCtx[0], "node-a")
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 8)
	start := func(ctx context.Context, id string) {
		go func() {
			r, err := a.run(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			order <- id
			r()
		}()
	}
	for _, ctx := range aCtx[1:] {
		start(ctx, "node-a")
	}
	time.Sleep(20 * time.Millisecond) // node-a's calls wait first
	for _, ctx := range bCtx {
		start(ctx, "node-b")
	}
	time.Sleep(20 * time.Millisecond)
	first()
	var got []string
	for range 7 {
		got = append(got, <-order)
	}
	bDone := 0
	for i, id := range got {
		if id == "node-b" {
			bDone++
			if bDone == 2 && i > 3 {
				t.Fatalf("node-b's two calls ran %dth and later, behind node-a's queue: %v", i+1, got)
			}
		}
	}
	if bDone != 2 {
		t.Fatalf("order %v", got)
	}
}

// A stream's end frees its admission; a waiting call whose caller gives
// up stops waiting; a stream that sends no request in time is ended.
func TestAdmissionEndsWithTheStream(t *testing.T) {
	a := newAdmission(1, 3) // capacity 4, a caller alone 2
	ctxs, cancels := admitN(t, a, "n", 10)
	if len(ctxs) != 2 {
		t.Fatalf("admitted %d", len(ctxs))
	}
	r, err := a.run(ctxs[0], "n")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { _, err := a.run(ctxs[1], "n"); done <- err }()
	time.Sleep(20 * time.Millisecond)
	cancels[1]()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("a cancelled wait: %v", err)
	}
	r()
	cancels[0]()
	eventually(t, func() bool { n, running := a.stats(); return n == 0 && running == 0 }, "every admission returned")

	a.firstMessage = 30 * time.Millisecond
	ctx, err := a.admit(context.Background(), "idle")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a stream without a request kept its admission")
	}
	eventually(t, func() bool { n, _ := a.stats(); return n == 0 }, "the idle stream's admission returned")
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not within 5s: %s", what)
		}
	}
}

// A call whose deadline would pass while it waits behind those admitted
// before it is refused at once with a retry hint, not queued to time
// out; a call with time enough, or none set, is admitted.
func TestLateCallsAreRefusedNotQueued(t *testing.T) {
	a := newAdmission(1, 40)
	a.callNanos.Store(int64(100 * time.Millisecond))
	r, err := a.run(mustAdmit(t, a, context.Background(), "first"), "first")
	if err != nil {
		t.Fatal(err)
	}
	defer r()
	for i := range 10 { // a second of work ahead: ten calls of 100 ms, one at a time
		mustAdmit(t, a, context.Background(), fmt.Sprintf("n%d", i))
	}
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = a.admit(short, "late")
	if status.Code(err) != codes.ResourceExhausted || keydv1.RetryDelay(err) <= 0 {
		t.Fatalf("a call that would time out in the queue: %v", err)
	}
	long, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	mustAdmit(t, a, long, "patient")
}

func mustAdmit(t *testing.T, a *admission, ctx context.Context, id string) context.Context {
	t.Helper()
	ctx, err := a.admit(ctx, id)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	return ctx
}

func TestAdmissionBoundsFollowTheMemoryLimit(t *testing.T) {
	in, q := admissionBounds(0, 0)
	if in < 1 || q < 0 {
		t.Fatalf("derived bounds %d/%d", in, q)
	}
	if in, q := admissionBounds(7, 9); in != 7 || q != 9 {
		t.Fatalf("configured bounds %d/%d", in, q)
	}
	if _, q := admissionBounds(7, -1); q != 0 {
		t.Fatalf("no queue: %d", q)
	}
}
