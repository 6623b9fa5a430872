package service

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// admission bounds the calls keyd holds in memory at once, fairly between
// callers. It admits a call when its stream opens, before gRPC has read
// its request (an InTapHandle), once the caller is authenticated (its
// client certificate verified, or the local socket): a burst beyond the
// bound costs keyd a header frame per call, not a buffered request. At
// most capacity calls are admitted, and one caller identity (a node, a
// backend) at most its share: the capacity divided among the identities
// holding admissions and one more, so a caller that floods is refused
// (ResourceExhausted with a RetryInfo saying when the backlog should have
// drained) while others are admitted. Of the admitted calls at most
// inflight run; the others wait, and a freed slot goes to the waiting
// identities in turn, oldest call first within each. A stream that sends
// no request within firstMessage is ended and its admission returned. An
// admission ends with its stream, however the stream ends.
//
// Waiting in keyd beats refusing while the wait is short: a waiting call
// starts the moment a slot frees, a refused one only after its caller's
// backoff. So the queue is sized by memory, and refusal is for what memory
// cannot hold (docs/benchmarks.md, "Burst load", compares the two).
//
// keyd runs two: the calls of authenticated callers that mint or verify
// (Issue, Verify, UnwrapImageKey), and the bootstrap lane of TLS callers
// without a client certificate (NodeCertificate, a pod's Revoke, the
// public keys and bundles), shared fairly by peer address; see
// Server.tap.
type admission struct {
	capacity     int64 // inflight + queued
	inflight     int
	firstMessage time.Duration

	mu       sync.Mutex
	admitted int64            // calls between their stream's opening and its end
	perID    map[string]int64 // of admitted, by caller identity
	running  int
	waiting  map[string][]*waiter // by identity, oldest first
	ring     []string             // identities with waiters, served in turn
	next     int

	// callNanos is a moving average of how long a running call takes, for
	// the retry hint's estimate of when the backlog drains.
	callNanos atomic.Int64
}

type waiter struct {
	ch      chan struct{} // closed when the call may run
	granted bool          // under admission.mu
}

// firstMessage bounds the time between a stream's opening and its request:
// an admitted stream that sends nothing gives its admission back.
const firstMessage = 5 * time.Second

// ticket is an admitted stream's, in its context.
type ticket struct {
	a     *admission
	id    string
	state atomic.Int32 // ticketWaiting, then ticketStarted or ticketExpired
}

const (
	ticketWaiting = iota
	ticketStarted
	ticketExpired
)

type ticketKey struct{}

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
	return &admission{capacity: int64(inflight + queued), inflight: inflight, firstMessage: firstMessage,
		perID: map[string]int64{}, waiting: map[string][]*waiter{}}
}

// admit admits or refuses a call of identity id as its stream opens (on
// the connection's reader: it must not block).
func (a *admission) admit(ctx context.Context, id string) (context.Context, error) {
	a.mu.Lock()
	ids := int64(len(a.perID))
	if a.perID[id] == 0 {
		ids++
	}
	// A share leaves room for one more identity: a caller alone takes at
	// most half, so a newcomer is admitted at once, not when the first
	// caller's calls have drained.
	share := max(1, a.capacity/(ids+1))
	if a.admitted >= a.capacity || a.perID[id] >= share || a.lateLocked(ctx) {
		a.mu.Unlock()
		return nil, a.refusal()
	}
	a.admitted++
	a.perID[id]++
	a.mu.Unlock()
	t := &ticket{a: a, id: id}
	ctx, cancel := context.WithCancel(ctx)
	ctx = context.WithValue(ctx, ticketKey{}, t)
	// The stream's context ends with the stream on every path: answered,
	// cancelled, reset, its connection gone, or no request in time.
	context.AfterFunc(ctx, func() { a.leave(id) })
	timer := time.AfterFunc(a.firstMessage, func() {
		if t.state.CompareAndSwap(ticketWaiting, ticketExpired) {
			cancel()
		}
	})
	context.AfterFunc(ctx, func() { timer.Stop() })
	return ctx, nil
}

// lateLocked says whether a call with ctx's deadline would reach it
// waiting behind the calls admitted before it (a.mu held): keyd refuses
// it now, with the hint, rather than queue work its caller will have
// given up on. At a 10,000-node restart, queued calls outlived the node's
// 10 s per-call deadline, and keyd spent its time on answers nobody read.
func (a *admission) lateLocked(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	avg := a.callNanos.Load()
	if !ok || avg <= 0 {
		return false
	}
	ahead := max(a.admitted-int64(a.running), 0)
	wait := time.Duration(ahead*avg/int64(a.inflight) + avg)
	return time.Until(dl) < wait
}

func (a *admission) leave(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.admitted--
	if a.perID[id]--; a.perID[id] <= 0 {
		delete(a.perID, id)
	}
}

// run waits, in the identities' turn, for a running slot and returns its
// release. ctx must carry the call's ticket.
func (a *admission) run(ctx context.Context, id string) (func(), error) {
	a.mu.Lock()
	if a.running < a.inflight && len(a.ring) == 0 {
		a.running++
		a.mu.Unlock()
		return a.release(time.Now()), nil
	}
	w := &waiter{ch: make(chan struct{})}
	if len(a.waiting[id]) == 0 {
		a.ring = append(a.ring, id)
	}
	a.waiting[id] = append(a.waiting[id], w)
	a.mu.Unlock()
	select {
	case <-w.ch:
		return a.release(time.Now()), nil
	case <-ctx.Done():
	}
	a.mu.Lock()
	if w.granted { // handed a slot as the caller gave up: give it on
		a.mu.Unlock()
		a.release(time.Now())()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	q := a.waiting[id]
	for i := range q {
		if q[i] == w {
			a.waiting[id] = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(a.waiting[id]) == 0 {
		a.dropFromRing(id)
	}
	a.mu.Unlock()
	return nil, status.FromContextError(ctx.Err()).Err()
}

// dropFromRing removes id, whose queue is empty, from the turn order.
func (a *admission) dropFromRing(id string) {
	delete(a.waiting, id)
	for i, r := range a.ring {
		if r == id {
			a.ring = append(a.ring[:i], a.ring[i+1:]...)
			if a.next > i {
				a.next--
			}
			break
		}
	}
	if len(a.ring) > 0 {
		a.next %= len(a.ring)
	} else {
		a.next = 0
	}
}

// release frees a running slot: it goes to the next identity in turn
// with a waiting call, or back to the pool.
func (a *admission) release(start time.Time) func() {
	return func() {
		a.mu.Lock()
		if len(a.ring) > 0 {
			id := a.ring[a.next%len(a.ring)]
			w := a.waiting[id][0]
			a.waiting[id] = a.waiting[id][1:]
			if len(a.waiting[id]) == 0 {
				a.dropFromRing(id)
			} else {
				a.next = (a.next + 1) % len(a.ring)
			}
			w.granted = true
			close(w.ch)
		} else {
			a.running--
		}
		a.mu.Unlock()
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
	}
}

// stats is the admitted and running calls, for metrics.
func (a *admission) stats() (admitted, running int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.admitted, int64(a.running)
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
		admitted, _ := a.stats()
		hint = time.Duration(admitted * avg / int64(a.inflight))
	}
	hint = min(max(hint, minRetryHint), maxRetryHint)
	st := status.New(codes.ResourceExhausted, "podkey-keyd is at its limit of calls in progress; retry after the hinted delay")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(hint)}); err == nil {
		st = d
	}
	return st.Err()
}

// admitUnary runs an admitted call when its identity's turn gives it a
// slot; calls without a ticket (not bounded) run at once.
func (s *Server) admitUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	t, _ := ctx.Value(ticketKey{}).(*ticket)
	if t == nil {
		return h(ctx, req)
	}
	if !t.state.CompareAndSwap(ticketWaiting, ticketStarted) {
		return nil, status.Errorf(codes.DeadlineExceeded, "no request within %s of the stream's opening", t.a.firstMessage)
	}
	release, err := t.a.run(ctx, t.id)
	if err != nil {
		return nil, err
	}
	defer release()
	return h(ctx, req)
}
