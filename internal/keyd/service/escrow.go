package service

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// RecoverEscrow returns an escrowed TLCP encryption key. approveUnary has
// checked the approval when a roster is set; without one there is no
// recovery at all: never an unapproved path.
func (a *adminService) RecoverEscrow(ctx context.Context, req *keydv1.RecoverEscrowRequest) (*keydv1.RecoveredKey, error) {
	roster, err := a.s.kr.Rosters().Load(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "approval roster unreadable: %v", err)
	}
	if roster == nil {
		return nil, status.Error(codes.FailedPrecondition, "recovering an escrowed key needs dual control: set an approval roster first (podkey approval roster set); there is no other way")
	}
	if req.Reason == "" {
		return nil, status.Error(codes.InvalidArgument, "a recovery needs a reason (audited)")
	}
	e, err := a.s.issuer.Recover(ctx, req.Serial)
	result, reason := audit.ResultOK, clip(req.Reason)
	if err != nil {
		result, reason = audit.ResultError, clip(err.Error())
	}
	rec := audit.Record{Action: audit.ActionEscrowRecover, Result: result, Reason: reason, Objects: []string{"escrow:" + clip(req.Serial)}}
	if err == nil {
		rec.Namespace, rec.ServiceAccount, rec.Pod, rec.PodUID = e.Namespace, e.ServiceAccount, e.Pod, e.PodUID
	}
	if aerr := a.s.audit.Append(ctx, rec); aerr != nil {
		clear(e.Key)
		return nil, auditUnavailable(aerr)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no escrow for serial %q (never issued, or destroyed after its retention)", req.Serial)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	defer clear(e.Key)
	return &keydv1.RecoveredKey{Serial: e.Serial, Namespace: e.Namespace, ServiceAccount: e.ServiceAccount, Pod: e.Pod, PodUid: e.PodUID,
		NotAfter: timestamppb.New(e.NotAfter), KeyPem: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: e.Key})}, nil
}

// pruneEscrows destroys escrows older than the retention, each audited.
func (s *Server) pruneEscrows(ctx context.Context) error {
	list, err := s.st.Secrets(ctx, credential.EscrowNamespace)
	if err != nil {
		return err
	}
	cutoff := s.opts.Now().Add(-s.opts.EscrowRetention)
	for _, e := range list {
		if e.Created.After(cutoff) {
			continue
		}
		if err := s.st.DeleteSecret(ctx, credential.EscrowNamespace, e.Name); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := s.audit.Append(ctx, audit.Record{Action: audit.ActionEscrowDestroy, Result: audit.ResultOK,
			Reason: fmt.Sprintf("retention of %v passed", s.opts.EscrowRetention), Objects: []string{"escrow:" + e.Name}}); err != nil {
			return err
		}
	}
	return nil
}
