package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// Dual control. Once an approval roster is on the token, each
// administrative call that approval.Needs must carry a request document
// approved by the roster's quorum for that operation; keyd checks it,
// claims its id in the store (so it executes once, on any replica), audits
// it with every signature, then runs the call. Without a roster the admin
// socket's file mode is the only control, as before.

// approveUnary enforces dual control on the admin socket's unary calls.
func (s *Server) approveUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok {
		if err := s.approve(ctx, approval.Op(info.FullMethod), m); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

// approveStream does the same for BackupStore, checking the one request
// message before the handler sees it.
func (s *Server) approveStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &approvedStream{ServerStream: ss, s: s, op: approval.Op(info.FullMethod)})
}

type approvedStream struct {
	grpc.ServerStream
	s    *Server
	op   string
	done bool
}

func (a *approvedStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if pm, ok := m.(proto.Message); ok && !a.done {
		a.done = true
		return a.s.approve(a.Context(), a.op, pm)
	}
	return nil
}

// approve lets a call of op with request m go ahead, or refuses it.
func (s *Server) approve(ctx context.Context, op string, m proto.Message) error {
	if !approval.Needs(op, m) {
		return nil
	}
	doc := approval.Attached(m)
	roster, err := s.kr.Rosters().Load(ctx)
	if err != nil {
		return status.Errorf(codes.Unavailable, "approval roster unreadable: %v", err)
	}
	if roster == nil {
		if len(doc) > 0 {
			return status.Error(codes.FailedPrecondition, "dual control is not set up (no approval roster): this call carries an approval nobody can check")
		}
		return nil
	}
	refuse := func(code codes.Code, reason string, a *audit.Approval) error {
		s.metrics.approvals.WithLabelValues(op, "refused").Inc()
		if err := s.audit.Append(ctx, audit.Record{Action: audit.ActionApproval, Result: audit.ResultDenied,
			Reason: clip(reason), Objects: []string{op}, Approval: a}); err != nil {
			return auditUnavailable(err)
		}
		return status.Error(code, reason)
	}
	if len(doc) == 0 {
		return refuse(codes.PermissionDenied, fmt.Sprintf("dual control is on: %s needs a request approved by %s (made with podkey --request-out; see podkey approval --help)", op, roster.Rule(op)), nil)
	}
	params, err := approval.Params(m)
	if err != nil {
		return status.Errorf(codes.Internal, "approval parameters: %v", err)
	}
	now := s.opts.Now()
	v, err := approval.Check(roster, doc, op, params, now)
	switch {
	case errors.Is(err, approval.ErrMalformed):
		return refuse(codes.InvalidArgument, err.Error(), nil)
	case err != nil:
		return refuse(codes.PermissionDenied, err.Error(), nil)
	}
	evidence := v.Evidence(roster.Version)
	granted, err := s.st.ClaimNonce(ctx, store.Nonce{Key: approval.ClaimKey(v.Request), Until: v.Request.Expires}, now)
	if err != nil {
		return storeUnavailable(err)
	}
	if !granted {
		return refuse(codes.PermissionDenied, fmt.Sprintf("request %s was executed already: a request executes once", v.Request.ID), evidence)
	}
	if v.BreakGlass {
		if err := s.breakGlass(ctx, roster, v, now); err != nil {
			return refuse(codes.PermissionDenied, err.Error(), evidence)
		}
		s.metrics.breakGlass.Inc()
		s.opts.Logger.Error("BREAK-GLASS: an operation executes on one person's signature; re-arming needs an approved roster change",
			"op", op, "requester", v.Request.Requester, "request", v.Request.ID)
	}
	s.metrics.approvals.WithLabelValues(op, "executed").Inc()
	action := audit.ActionApproval
	if v.BreakGlass {
		action = audit.ActionBreakGlass
	}
	if err := s.audit.Append(ctx, audit.Record{Action: action, Result: audit.ResultOK, Objects: []string{op}, Approval: evidence}); err != nil {
		return auditUnavailable(err)
	}
	return nil
}

// breakGlass claims the roster's armed break-glass (once, across replicas)
// and disarms it on the token.
func (s *Server) breakGlass(ctx context.Context, roster *approval.Roster, v *approval.Verified, now time.Time) error {
	granted, err := s.st.ClaimNonce(ctx, store.Nonce{Key: approval.BreakGlassClaimKey(v.Epoch), Until: now.Add(100 * 365 * 24 * time.Hour)}, now)
	if err != nil {
		return err
	}
	if !granted {
		return errors.New("break-glass was used already (another replica, or a moment ago)")
	}
	for range 5 {
		next := *roster
		next.Version++
		next.BreakGlass.Armed = false
		err = s.kr.Rosters().Save(ctx, &next)
		if !errors.Is(err, keyring.ErrRosterChanged) {
			return err
		}
		if roster, err = s.kr.Rosters().Load(ctx); err != nil {
			return err
		}
	}
	return err
}

func (a *adminService) GetRoster(ctx context.Context, _ *keydv1.GetRosterRequest) (*keydv1.RosterDocument, error) {
	r, err := a.s.kr.Rosters().Load(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "approval roster unreadable: %v", err)
	}
	if r == nil {
		return nil, status.Error(codes.NotFound, "no approval roster: dual control is off")
	}
	b, err := r.Marshal()
	if err != nil {
		return nil, toStatus(err)
	}
	return &keydv1.RosterDocument{Yaml: b}, nil
}

// SetRoster replaces the roster (approved by approveUnary when one is
// set). keyd numbers the versions, and re-arming break-glass starts a
// new epoch: a break-glass claim of the last one does not spend it.
func (a *adminService) SetRoster(ctx context.Context, req *keydv1.RosterDocument) (*keydv1.RosterDocument, error) {
	next, err := approval.ParseRoster(req.Yaml)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	cur, err := a.s.kr.Rosters().Load(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "approval roster unreadable: %v", err)
	}
	next.Version, next.BreakGlass.Epoch = 1, 1
	if cur != nil {
		next.Version, next.BreakGlass.Epoch = cur.Version+1, cur.BreakGlass.Epoch
		if next.BreakGlass.Armed && !cur.BreakGlass.Armed {
			next.BreakGlass.Epoch++
		}
	}
	err = a.s.kr.Rosters().Save(ctx, next)
	if errors.Is(err, keyring.ErrRosterChanged) {
		return nil, status.Error(codes.Aborted, err.Error())
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "saving the approval roster: %v", err)
	}
	var people []string
	for _, p := range next.People {
		people = append(people, fmt.Sprintf("%s%v", p.Name, p.Roles))
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionRosterSet, Result: audit.ResultOK,
		Reason: clip(fmt.Sprintf("version %d: %s; break-glass armed=%v", next.Version, strings.Join(people, " "), next.BreakGlass.Armed))}); err != nil {
		return nil, auditUnavailable(err)
	}
	return a.GetRoster(ctx, nil)
}
