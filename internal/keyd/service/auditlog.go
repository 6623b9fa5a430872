package service

import (
	"context"
	"fmt"
	"sync"
	"time"

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
	return s.appendBound(ctx, audit.Record{Action: action, Result: result, Reason: reason, Objects: objects}, id, b)
}

// appendBound appends rec about id and, in the same transaction, b.
func (s *Server) appendBound(ctx context.Context, rec audit.Record, id pod.Identity, b *store.PodBinding) error {
	rec.Namespace, rec.ServiceAccount, rec.Pod, rec.PodUID, rec.Node = id.Namespace, id.ServiceAccount, id.Name, id.UID, id.Node
	err := s.audit.AppendBound(ctx, rec, b)
	if err != nil {
		s.opts.Logger.Error("audit append failed", "action", rec.Action, "error", err)
	}
	return err
}

// auditDeny records a refusal. The claimed identity is recorded as claimed.
// Refusals of callers without a verified certificate (the bootstrap lane)
// are coalesced: see coalesceDeny.
func (s *Server) auditDeny(ctx context.Context, action string, p *keydv1.PodIdentity, reason string, id *pod.Identity) {
	if _, ok, _ := s.callerIdentity(ctx); !ok {
		s.coalesceDeny(ctx, action, reason)
		return
	}
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

// denyEvery bounds how often refusals of callers without a verified
// certificate reach the audit log: one record per action and interval
// counts them, so what such callers make durable is bounded (a record
// every 10 s per action) whatever their rate. The metric counts each.
const denyEvery = 10 * time.Second

type denials struct {
	mu      sync.Mutex
	pending map[string]*denial // by action
}

type denial struct {
	n      int
	since  time.Time
	reason string
}

// coalesceDeny counts a refusal of a caller without a verified
// certificate and writes the action's summary record when its interval
// has passed. The caller's own strings are not recorded: the reason is
// keyd's, clipped.
func (s *Server) coalesceDeny(ctx context.Context, action, reason string) {
	s.metrics.unauthenticatedDenied.Inc()
	now := time.Now()
	s.denied.mu.Lock()
	if s.denied.pending == nil {
		s.denied.pending = map[string]*denial{}
	}
	var flush *denial
	d := s.denied.pending[action]
	switch {
	case d == nil: // the first: recorded at once; the rest counted from now
		s.denied.pending[action] = &denial{since: now}
		flush = &denial{n: 1, since: now, reason: clip(reason)}
	default:
		d.n++
		d.reason = clip(reason)
		if now.Sub(d.since) >= denyEvery {
			flush = d
			s.denied.pending[action] = &denial{since: now}
		}
	}
	s.denied.mu.Unlock()
	if flush == nil {
		return
	}
	_ = s.auditResult(ctx, action, audit.ResultDenied,
		fmt.Sprintf("%d refused from callers without a client certificate since %s; the last: %s", flush.n, flush.since.UTC().Format(time.RFC3339), flush.reason),
		pod.Identity{}, nil)
}
