package service

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/keyring"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/suite"
)

// kindsOf are the credential kinds each root key issues.
var kindsOf = map[keyring.Purpose]object.Kind{keyring.MAC: object.APIKey, keyring.Derive: object.DerivedKey,
	keyring.CA: object.Certificate, keyring.JWT: object.Token}

// nodeCertMaxTTL bounds a node certificate's life (keyd --node-cert-ttl),
// for CA generations: node certificates are issued under the current CA
// until the rotation that replaces it.
const nodeCertMaxTTL = 24 * time.Hour

// RetireKey retires an old generation of a root key.
func (a *adminService) RetireKey(ctx context.Context, req *keydv1.RetireKeyRequest) (*keydv1.RetireKeyResponse, error) {
	p := keyring.Purpose(req.Purpose)
	if _, ok := kindsOf[p]; !ok {
		return nil, status.Errorf(codes.InvalidArgument, "purpose %q cannot be retired by generation (want mac, derive, ca or jwt)", req.Purpose)
	}
	st, err := suite.Parse(req.Suite)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	gen := int(req.Generation)
	label := keyring.Label(p, st, gen)
	if req.Force && strings.TrimSpace(req.Reason) == "" {
		return nil, status.Error(codes.InvalidArgument, "a forced retirement needs a reason (it is audited)")
	}
	if len(req.Reason) > 500 {
		return nil, status.Error(codes.InvalidArgument, "reason is longer than 500 bytes")
	}
	if gen == a.s.kr.Current(p, st) {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is the current generation: rotate first", label)
	}
	until, err := a.inUseUntil(ctx, p, st, gen)
	now := a.s.opts.Now()
	var inUse string
	switch {
	case err != nil:
		inUse = status.Convert(err).Message()
	case now.Before(until):
		inUse = fmt.Sprintf("%s issued credentials that may be valid until %s", label, until.UTC().Format(time.RFC3339))
	}
	if inUse != "" && !req.Force {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: retire it later, or force it with a reason", inUse)
	}
	if err := a.s.kr.Retire(ctx, p, st, gen); err != nil {
		return nil, toStatus(err)
	}
	reason := "no credential it issued can still be valid"
	if inUse != "" {
		reason = "forced (" + inUse + ")"
	}
	if req.Reason != "" {
		reason += ": " + req.Reason
	}
	if err := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionKeyRetire, Result: audit.ResultOK, Reason: reason,
		Objects: []string{label}}); err != nil {
		return nil, auditUnavailable(err)
	}
	out := &keydv1.RetireKeyResponse{}
	if !until.IsZero() {
		out.InUseUntil = timestamppb.New(until)
	}
	return out, nil
}

// inUseUntil is when the last credential generation gen of the root key
// issued expires at the latest, from the audit log: its newest issuance
// plus the longest ttl an object may have, and for a CA the rotation that
// replaced it plus the longest node certificate.
func (a *adminService) inUseUntil(ctx context.Context, p keyring.Purpose, s suite.Name, gen int) (time.Time, error) {
	kind := string(kindsOf[p])
	suffix := fmt.Sprintf("/%s/%s/g%d", kind, s, gen)
	next := keyring.Label(p, s, gen+1)
	var until time.Time
	var replaced bool
	err := audit.Export(ctx, a.s.st, func(line []byte) error {
		var r audit.Record
		if json.Unmarshal(line, &r) != nil {
			return nil
		}
		switch r.Action {
		case audit.ActionIssue:
			for _, o := range r.Objects {
				if strings.HasSuffix(o, suffix) {
					until = later(until, r.Time.Add(object.MaxTTL))
				}
			}
		case audit.ActionKeyRotate:
			for _, o := range r.Objects {
				if o == next {
					replaced = true
					if p == keyring.CA {
						until = later(until, r.Time.Add(nodeCertMaxTTL))
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return until, toStatus(err)
	}
	if !replaced && p == keyring.CA {
		return until, status.Errorf(codes.FailedPrecondition, "the audit log does not show when %s was replaced, so node certificates it signed may be valid: force it with a reason", keyring.Label(p, s, gen))
	}
	return until, nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
