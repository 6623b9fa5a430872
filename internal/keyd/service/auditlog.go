package service

import (
	"context"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/pod"
)

// What keyd's calls record in the audit log: every issue, verify, deny,
// revoke and unwrap. Records name callers and objects, never a secret or
// a token.

// auditResult appends a record.
func (s *Server) auditResult(ctx context.Context, action, result, reason string, id pod.Identity, objects []string) error {
	return s.auditBound(ctx, action, result, reason, id, objects, nil)
}

// auditBound appends a record and, in the same transaction, the binding b.
func (s *Server) auditBound(ctx context.Context, action, result, reason string, id pod.Identity, objects []string, b *store.PodBinding) error {
	err := s.audit.AppendBound(ctx, audit.Record{Action: action, Result: result, Reason: reason,
		Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, Pod: id.Name, PodUID: id.UID,
		Node: id.Node, Objects: objects}, b)
	if err != nil {
		s.opts.Logger.Error("audit append failed", "action", action, "error", err)
	}
	return err
}

// auditDeny records a refusal. The claimed identity is recorded as claimed.
func (s *Server) auditDeny(ctx context.Context, action string, p *keydv1.PodIdentity, reason string, id *pod.Identity) {
	var who pod.Identity
	switch {
	case id != nil:
		who = *id
	case p != nil:
		who = pod.Identity{Namespace: clip(p.Namespace), ServiceAccount: clip(p.ServiceAccount),
			Name: clip(p.PodName), UID: clip(p.PodUid), Node: clip(p.NodeName)}
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

// auditImage records an image-key operation: the node, the image key and
// the key set (never a key).
func (s *Server) auditImage(ctx context.Context, result, reason, node, keyID, keySet string) error {
	objects := []string{}
	if keyID != "" {
		objects = append(objects, "image-key/"+keyID)
	}
	if keySet != "" {
		objects = append(objects, "key-set/"+keySet)
	}
	return s.auditResult(ctx, audit.ActionImageUnwrap, result, reason, pod.Identity{Node: node}, objects)
}
