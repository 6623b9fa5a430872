package service

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// admission bounds the Issue and Verify calls keyd holds in memory at
// once. It admits a call when its stream opens, before gRPC has read its
// request (an InTapHandle), so that a burst beyond the bound costs keyd a
// header frame per call, not a buffered request: at most inflight+queued
// calls are admitted; any call beyond that is refused at once with
// ResourceExhausted and a RetryInfo saying when the backlog should have
// drained. Of the admitted calls, at most inflight run; the others wait
// for a slot, in arrival order as far as the Go scheduler keeps it. An
// admission ends with its stream, however the stream ends.
//
// Waiting in keyd beats refusing while the wait is short: a waiting call
// starts the moment a slot frees, a refused one only after its caller's
// backoff. So the queue is sized by memory, and refusal is for what memory
// cannot hold (docs/benchmarks.md, "Burst load", compares the two). Revoke,
// NodeCertificate and the Admin API are not bounded: they are rare, small
// and must not wait behind a burst of pods.
type admission struct {
	slots    chan struct{}
	capacity int64        // inflight + queued
	admitted atomic.Int64 // calls between their stream's opening and its end

	// callNanos is a moving average of how long a running call takes, for
	// the retry hint's estimate of when the backlog drains.
	callNanos atomic.Int64
}

// Per-call memory budget for deriving the bounds from keyd's memory limit:
// measured at about 40 KiB per concurrent Issue call under a 10,000-call
// burst (goroutine stack, gRPC stream and buffers, request, credentials,
// audit record), rounded up with room for the garbage collector.
const (
	admissionCallBudget = 128 << 10
	// admissionShare of the memory limit goes to admitted calls; the rest
	// is keyd's own (keyring, policy, store cache, gRPC connections).
	admissionShare = 0.5
	// Without a memory limit, the defaults assume the chart's 256 Mi.
	admissionDefaultLimit = 256 << 20
)

// admissionBounds derives (inflight, queued) from the Go memory limit
// (GOMEMLIMIT, which TuneRuntime sets from the container's limit) where
// not configured (zero): inflight is what the CPUs can use (calls wait on
// the HSM and on the audit log's fsync, so a few dozen per core), queued
// the rest of the memory share. A negative queued means no queue.
func admissionBounds(inflight, queued int) (int, int) {
	limit := memoryLimit()
	total := int(float64(limit) * admissionShare / admissionCallBudget)
	if inflight <= 0 {
		inflight = min(32*runtime.GOMAXPROCS(0), max(total/4, 1))
	}
	switch {
	case queued < 0:
		queued = 0
	case queued == 0:
		queued = max(total-inflight, 0)
	}
	return inflight, queued
}

// memoryLimit is the Go memory limit, or the chart's default without one.
func memoryLimit() int64 {
	limit := debug.SetMemoryLimit(-1)
	if limit <= 0 || limit == int64(^uint64(0)>>1) {
		return admissionDefaultLimit
	}
	return limit
}

func newAdmission(inflight, queued int) *admission {
	return &admission{slots: make(chan struct{}, inflight), capacity: int64(inflight + queued)}
}

// bounded reports whether admission applies to a method.
func bounded(method string) bool {
	return method == keydv1.Keyd_Issue_FullMethodName || method == keydv1.Keyd_Verify_FullMethodName
}

// tap admits or refuses a call as its stream opens (grpc.InTapHandle: it
// runs on the connection's reader and must not block).
func (a *admission) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if !bounded(info.FullMethodName) {
		return ctx, nil
	}
	if a.admitted.Add(1) > a.capacity {
		a.admitted.Add(-1)
		return nil, a.refusal()
	}
	// The stream's context ends with the stream on every path: answered,
	// cancelled, reset, or its connection gone.
	context.AfterFunc(ctx, func() { a.admitted.Add(-1) })
	return ctx, nil
}

// run waits for a running slot and returns its release.
func (a *admission) run(ctx context.Context) (func(), error) {
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	start := time.Now()
	return func() {
		<-a.slots
		// Fold the call's duration into the average (weight 1/16: a
		// burst's calls move it within a few dozen calls).
		d := time.Since(start).Nanoseconds()
		for {
			old := a.callNanos.Load()
			avg := d
			if old > 0 {
				avg = old + (d-old)/16
			}
			if a.callNanos.CompareAndSwap(old, avg) {
				return
			}
		}
	}, nil
}

// Retry hints stay within these bounds: never sooner than a round trip
// is worth, never so late that a pod waits on an idle keyd.
const (
	minRetryHint = 200 * time.Millisecond
	maxRetryHint = 10 * time.Second
)

// refusal is ResourceExhausted with the time the present backlog takes to
// drain: the admitted calls, run cap(slots) at a time, each for the
// average call's duration.
func (a *admission) refusal() error {
	hint := time.Second // no call has finished yet: a guess
	if avg := a.callNanos.Load(); avg > 0 {
		hint = time.Duration(a.admitted.Load() * avg / int64(cap(a.slots)))
	}
	hint = min(max(hint, minRetryHint), maxRetryHint)
	st := status.New(codes.ResourceExhausted, "podkey-keyd is at its limit of calls in progress; retry after the hinted delay")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(hint)}); err == nil {
		st = d
	}
	return st.Err()
}

// tap is admission's tap, counting refusals.
func (s *Server) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	ctx, err := s.admission.tap(ctx, info)
	if err != nil {
		s.metrics.refused.Inc()
	}
	return ctx, err
}

// admitUnary runs an admitted Issue or Verify call when a slot is free.
func (s *Server) admitUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if !bounded(info.FullMethod) {
		return h(ctx, req)
	}
	release, err := s.admission.run(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return h(ctx, req)
}
