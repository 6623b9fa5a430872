package service

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

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

var issueInfo = &tap.Info{FullMethodName: keydv1.Keyd_Issue_FullMethodName}

func TestAdmissionRunsQueuesThenRefuses(t *testing.T) {
	a := newAdmission(2, 1)
	// Three streams are admitted (two run, one waits); the fourth is
	// refused as it opens, with a hint within bounds.
	var cancels []context.CancelFunc
	var ctxs []context.Context
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		ctx, err := a.tap(ctx, issueInfo)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		ctxs, cancels = append(ctxs, ctx), append(cancels, cancel)
	}
	if _, err := a.tap(context.Background(), issueInfo); err == nil {
		t.Fatal("a fourth stream was admitted")
	} else if d := retryDelay(t, err); d < minRetryHint || d > maxRetryHint {
		t.Fatalf("retry hint %v", d)
	}
	// Other methods are never refused.
	if _, err := a.tap(context.Background(), &tap.Info{FullMethodName: keydv1.Keyd_Revoke_FullMethodName}); err != nil {
		t.Fatalf("Revoke refused: %v", err)
	}
	r1, err := a.run(ctxs[0])
	if err != nil {
		t.Fatal(err)
	}
	r2, err := a.run(ctxs[1])
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan func())
	go func() {
		r, err := a.run(ctxs[2])
		if err != nil {
			t.Error(err)
		}
		started <- r
	}()
	select {
	case <-started:
		t.Fatal("a waiting call ran while every slot was taken")
	case <-time.After(50 * time.Millisecond):
	}
	r1()
	r3 := <-started
	// A stream's end, however it ends, frees its admission.
	cancels[0]()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := a.tap(context.Background(), issueInfo); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an ended stream kept its admission")
		}
		time.Sleep(time.Millisecond)
	}
	// A waiting call whose caller gives up stops waiting.
	wctx, wcancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := a.run(wctx); done <- err }()
	wcancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("a cancelled wait: %v", err)
	}
	r2()
	r3()
	if len(a.slots) != 0 {
		t.Fatalf("%d slots held after every release", len(a.slots))
	}
	for _, c := range cancels {
		c()
	}
}

func TestAdmissionWithoutQueueRefusesBeyondInflight(t *testing.T) {
	a := newAdmission(4, 0)
	ok, refused := 0, 0
	for i := 0; i < 10; i++ {
		if _, err := a.tap(context.Background(), issueInfo); err == nil {
			ok++
		} else if status.Code(err) == codes.ResourceExhausted {
			refused++
		}
	}
	if ok != 4 || refused != 6 {
		t.Fatalf("%d admitted, %d refused; want 4 and 6", ok, refused)
	}
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
