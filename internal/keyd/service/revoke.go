package service

import (
	"context"
	"time"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/pod"
)

// revoke refuses the pod's credentials issued before the cutoff (now, or
// the caller's earlier issuedBefore) for RevocationTTL, which is at least
// the life of any credential it can hold, and audits it. Credentials
// issued after the cutoff stay valid: a revocation never poisons what the
// pod obtains later through its node.
func (s *Server) revoke(ctx context.Context, id pod.Identity, issuedBefore time.Time) (time.Time, error) {
	now := s.opts.Now().UTC()
	cutoff := now
	if !issuedBefore.IsZero() && issuedBefore.Before(now) {
		cutoff = issuedBefore.UTC()
	}
	until := now.Add(s.opts.RevocationTTL)
	if err := s.st.Revoke(ctx, store.Revocation{PodUID: id.UID, Until: until, Revoked: cutoff}); err != nil {
		return time.Time{}, err
	}
	if err := s.auditResult(ctx, audit.ActionRevoke, audit.ResultOK, "", id, nil); err != nil {
		return until, err
	}
	// The pod's database logins are dropped after their grace, by the
	// reaper, whether or not the databases answer now.
	if _, err := s.dbs.RevokePod(ctx, id.UID); err != nil {
		return until, err
	}
	return until, nil
}

// podBinding is the binding an issuance writes with its audit record: the
// node a pod is served through, for RevocationTTL (longer than any
// credential), so that only that node may later revoke it without a pod
// token. A renewal through the same node needs none until half of that
// time has passed: one durable write per pod, not per issuance. nil when
// there is nothing to write.
func (s *Server) podBinding(ctx context.Context, id pod.Identity) (*store.PodBinding, error) {
	if id.Node == "" {
		return nil, nil
	}
	now := s.opts.Now()
	node, until, err := s.st.PodNode(ctx, id.UID, now)
	if err != nil {
		return nil, err
	}
	if node == id.Node && until.Sub(now) > s.opts.RevocationTTL/2 {
		return nil, nil
	}
	return &store.PodBinding{PodUID: id.UID, Node: id.Node, Until: now.Add(s.opts.RevocationTTL)}, nil
}
