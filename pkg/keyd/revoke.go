package keyd

import (
	"context"
	"time"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/audit"
	"github.com/podkey/podkey/pkg/credential"
	"github.com/podkey/podkey/pkg/store"
)

// revoke records the pod as refused for RevocationTTL, which is at least
// the life of any credential it can hold, and audits it.
func (s *Server) revoke(ctx context.Context, id credential.Identity) (time.Time, error) {
	now := s.opts.Now().UTC()
	until := now.Add(s.opts.RevocationTTL)
	if err := s.st.Revoke(ctx, store.Revocation{PodUID: id.PodUID, Until: until, Revoked: now}); err != nil {
		return time.Time{}, err
	}
	return until, s.auditResult(ctx, audit.ActionRevoke, audit.ResultOK, "", id, nil)
}

// bindPod remembers the node a pod is served through, for RevocationTTL
// (longer than any credential), so that only that node may later revoke
// it without a pod token. A renewal through the same node writes nothing
// until half of that time has passed: one durable write per pod, not per
// issuance.
func (s *Server) bindPod(ctx context.Context, id credential.Identity) error {
	if id.NodeName == "" {
		return nil
	}
	now := s.opts.Now()
	node, until, err := s.st.PodNode(ctx, id.PodUID, now)
	if err != nil {
		return err
	}
	if node == id.NodeName && until.Sub(now) > s.opts.RevocationTTL/2 {
		return nil
	}
	return s.st.BindPod(ctx, id.PodUID, id.NodeName, now.Add(s.opts.RevocationTTL))
}

func (s *Server) auditResult(ctx context.Context, action, result, reason string, id credential.Identity, objects []string) error {
	err := s.audit.Append(ctx, audit.Record{Action: action, Result: result, Reason: reason,
		Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, Pod: id.PodName, PodUID: id.PodUID,
		Node: id.NodeName, Objects: objects})
	if err != nil {
		s.opts.Logger.Error("audit append failed", "action", action, "error", err)
	}
	return err
}

// auditDeny records a refusal. The claimed identity is recorded as claimed.
func (s *Server) auditDeny(ctx context.Context, action string, p *keydv1.PodIdentity, reason string, id *credential.Identity) {
	var who credential.Identity
	switch {
	case id != nil:
		who = *id
	case p != nil:
		who = credential.Identity{Namespace: clip(p.Namespace), ServiceAccount: clip(p.ServiceAccount),
			PodName: clip(p.PodName), PodUID: clip(p.PodUid), NodeName: clip(p.NodeName)}
	}
	_ = s.auditResult(ctx, action, audit.ResultDenied, reason, who, nil)
}

// clip bounds caller-supplied strings recorded from refused requests.
func clip(s string) string {
	if len(s) > 253 {
		return s[:253] + "..."
	}
	return s
}
