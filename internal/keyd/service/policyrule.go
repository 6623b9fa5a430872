package service

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/policy"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
)

func (a *adminService) AddPolicyRule(ctx context.Context, req *keydv1.PolicyRule) (*keydv1.PolicyRuleResponse, error) {
	return a.s.changeRule(ctx, req, true)
}

func (a *adminService) RemovePolicyRule(ctx context.Context, req *keydv1.PolicyRule) (*keydv1.PolicyRuleResponse, error) {
	return a.s.changeRule(ctx, req, false)
}

// changeRule adds or removes one rule as a single read-modify-write in the
// store, so two operators changing rules at once both get their change.
func (s *Server) changeRule(ctx context.Context, req *keydv1.PolicyRule, add bool) (*keydv1.PolicyRuleResponse, error) {
	r := policy.Rule{Namespace: req.Namespace, ServiceAccount: req.ServiceAccount, Objects: req.Objects}
	for _, k := range req.Kinds {
		kind, err := object.ParseKind(k)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		r.Kinds = append(r.Kinds, kind)
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	var next *policy.Policy
	err := s.st.UpdatePolicy(ctx, func(cur []byte) ([]byte, error) {
		p := policy.Empty()
		if cur != nil {
			var err error
			if p, err = policy.Parse(cur); err != nil {
				return nil, fmt.Errorf("stored policy: %w", err)
			}
		}
		if add {
			if err := p.Add(r); err != nil {
				return nil, status.Error(codes.InvalidArgument, err.Error())
			}
		} else if p.Remove(r) == 0 {
			return nil, status.Error(codes.NotFound, "no rule matches")
		}
		next = p
		return p.Marshal()
	})
	if err != nil {
		return nil, toStatus(err)
	}
	s.policy.Store(next)
	s.confirmPolicy()
	change := "removed"
	if add {
		change = "added"
	}
	reason := fmt.Sprintf("rule %s (namespace %s, service account %s, objects %s); %d rules", change, r.Namespace, r.ServiceAccount,
		strings.Join(r.Objects, ","), len(next.Rules))
	if err := s.audit.Append(ctx, audit.Record{Action: audit.ActionPolicySet, Result: audit.ResultOK, Reason: reason}); err != nil {
		return nil, auditUnavailable(err)
	}
	return &keydv1.PolicyRuleResponse{Rules: uint32(len(next.Rules))}, nil
}
