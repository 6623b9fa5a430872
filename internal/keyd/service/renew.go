package service

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
)

// ForceRenewal records an operator's order of fresh credentials for a
// pod, a service account or a namespace. From its time on, Verify refuses
// what the scope's pods obtained until then (a renewal is a revocation of
// the past, never of the future); node agents learn of it through
// Renewals and renew the volumes it covers at their next republish. The
// order is kept for RevocationTTL, longer than any credential lives.
func (a *adminService) ForceRenewal(ctx context.Context, req *keydv1.ForceRenewalRequest) (*keydv1.Renewal, error) {
	s := a.s
	r := store.Renewal{Scope: req.Scope()}
	switch {
	case r.UID != "":
		if len(r.UID) > 128 || r.Namespace != "" || r.ServiceAccount != "" {
			return nil, status.Error(codes.InvalidArgument, "a pod's renewal names its UID (at most 128 bytes) and nothing else")
		}
	case r.Namespace == "" || !object.ValidName(r.Namespace):
		return nil, status.Errorf(codes.InvalidArgument, "a renewal names a pod UID, a namespace, or a namespace and service account; namespace %q is invalid", r.Namespace)
	case len(r.ServiceAccount) > 253:
		return nil, status.Error(codes.InvalidArgument, "service account name is too long")
	}
	now := s.opts.Now().UTC()
	r.At, r.Until = now, now.Add(s.opts.RevocationTTL)
	r, err := s.st.AddRenewal(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := s.audit.Append(ctx, audit.Record{Action: audit.ActionRenew, Result: audit.ResultOK, Namespace: r.Namespace,
		ServiceAccount: r.ServiceAccount, PodUID: r.UID, Reason: fmt.Sprintf("renewal %d: credentials obtained until now refused", r.Seq)}); err != nil {
		return nil, auditUnavailable(err)
	}
	s.opts.Logger.Info("renewal ordered", "seq", r.Seq, "namespace", r.Namespace, "serviceAccount", r.ServiceAccount, "podUID", r.UID)
	return keydv1.NewRenewal(r.Seq, r.Scope, r.At, r.Until), nil
}

// Renewals serves node agents (node certificate) and the local socket.
func (k *keydService) Renewals(ctx context.Context, req *keydv1.RenewalsRequest) (*keydv1.RenewalsResponse, error) {
	s := k.s
	if !fromUnixSocket(ctx) {
		if _, err := s.callerNode(ctx); err != nil {
			return nil, err
		}
	}
	rs, err := s.st.Renewals(ctx, req.AfterSeq, s.opts.Now())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &keydv1.RenewalsResponse{}
	for _, r := range rs {
		resp.Renewals = append(resp.Renewals, keydv1.NewRenewal(r.Seq, r.Scope, r.At, r.Until))
	}
	return resp, nil
}
