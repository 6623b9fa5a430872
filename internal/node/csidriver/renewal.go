package csidriver

import (
	"context"
	"time"

	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/pod"
)

// followRenewals asks keyd for forced renewals every RenewalPoll until ctx
// ends, keeping those in force. A failed poll is tried again at the next
// tick: until then volumes renew on their own schedule, and keyd refuses
// the renewed scope's old API keys anyway.
func (d *Driver) followRenewals(ctx context.Context) {
	var after uint64
	t := time.NewTicker(d.opts.RenewalPoll)
	defer t.Stop()
	for {
		after = d.pollRenewals(ctx, after)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pollRenewals fetches the orders after seq, merges them, drops those past
// and returns the newest seq seen.
func (d *Driver) pollRenewals(ctx context.Context, after uint64) uint64 {
	cctx, cancel := context.WithTimeout(ctx, d.opts.KeydTimeout)
	defer cancel()
	resp, err := d.opts.Renewals.Renewals(cctx, &keydv1.RenewalsRequest{AfterSeq: after})
	if err != nil {
		if ctx.Err() == nil {
			d.opts.Logger.Debug("forced renewals not fetched; trying again later", "error", status.Convert(err).Message())
		}
		return after
	}
	now := d.opts.Now()
	var next []*keydv1.Renewal
	if cur := d.renewals.Load(); cur != nil {
		for _, r := range *cur {
			if now.Before(r.Until.AsTime()) {
				next = append(next, r)
			}
		}
	}
	for _, r := range resp.Renewals {
		after = max(after, r.Seq)
		next = append(next, r)
		d.opts.Logger.Info("forced renewal ordered", "seq", r.Seq, "namespace", r.Namespace, "serviceAccount", r.ServiceAccount, "podUID", r.PodUid)
	}
	d.renewals.Store(&next)
	return after
}

// RenewalOrdered reports whether a forced renewal covers the pod and came
// after what it holds was issued (keyd's issue times are to the second: a
// volume issued in the renewal's second renews once more).
func (d *Driver) RenewalOrdered(p pod.Identity, issued time.Time) bool {
	rs := d.renewals.Load()
	if rs == nil || len(*rs) == 0 {
		return false
	}
	for _, r := range *rs {
		if r.Scope().Covers(p.Namespace, p.ServiceAccount, p.UID) && !issued.After(r.At.AsTime()) {
			return true
		}
	}
	return false
}
