package csidriver

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// Waiting out keyd's admission refusals (ResourceExhausted): the first
// wait when keyd sends no hint, the longest single wait, and the margin
// kept before the kubelet's deadline so that the kubelet hears back.
const (
	overloadFirstWait = 500 * time.Millisecond
	overloadMaxWait   = 10 * time.Second
	overloadMargin    = 5 * time.Second
)

// issue calls keyd's Issue, waiting out its overload refusals (see
// WaitOutOverload) for up to Options.OverloadWait.
func (d *Driver) issue(ctx context.Context, req *keydv1.IssueRequest) (*keydv1.IssueResponse, error) {
	return WaitOutOverload(ctx, d.opts.Issuer, req, d.opts.KeydTimeout, d.opts.OverloadWait, d.metrics.overloadRetries.Inc)
}

// WaitOutOverload calls keyd's Issue, each try bounded by timeout, and
// while keyd refuses for overload, waits as keyd's RetryInfo hints
// (doubling from overloadFirstWait without one) and tries again (calling
// retried), until wait or the caller's deadline would pass. Each wait is
// drawn uniformly from half to one and a half times the hint, so that
// the nodes keyd refused together come back spread over a whole hint
// rather than in lockstep; its mean stays the hint, the time keyd expects
// to need. A retry here starts the pod sooner than the kubelet's: the
// kubelet backs off exponentially up to two minutes, with no jitter.
// podkey-csi's publishes use it; so do benchmarks that simulate nodes.
func WaitOutOverload(ctx context.Context, issuer Issuer, req *keydv1.IssueRequest, timeout, wait time.Duration, retried func()) (*keydv1.IssueResponse, error) {
	deadline := time.Now().Add(wait)
	if dl, ok := ctx.Deadline(); ok && dl.Add(-overloadMargin).Before(deadline) {
		deadline = dl.Add(-overloadMargin)
	}
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := issuer.Issue(cctx, req)
		cancel()
		if status.Code(err) != codes.ResourceExhausted {
			return resp, err
		}
		wait := jitter(retryHint(err, attempt))
		if time.Now().Add(wait).After(deadline) {
			return nil, err
		}
		retried()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// retryHint is keyd's RetryInfo delay, or an exponential backoff.
func retryHint(err error, attempt int) time.Duration {
	if h := keydv1.RetryDelay(err); h > 0 {
		return min(h, overloadMaxWait)
	}
	return min(overloadFirstWait<<min(attempt, 8), overloadMaxWait)
}

// jitter draws uniformly from [h/2, 3h/2).
func jitter(h time.Duration) time.Duration {
	return h/2 + rand.N(h)
}
