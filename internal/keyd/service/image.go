package service

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keyring"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/suite"
)

// imageNode is the node an unwrap is for: the caller's node certificate,
// or on the local socket in insecure local identity mode the node the
// request claims.
func (s *Server) imageNode(ctx context.Context, claimed string) (string, error) {
	if fromUnixSocket(ctx) && s.opts.InsecureLocalIdentity {
		if err := validPodField("node_name", claimed, 253); err != nil {
			return "", err
		}
		return claimed, nil
	}
	return s.callerNode(ctx)
}

func (k *keydService) UnwrapImageKey(ctx context.Context, req *keydv1.UnwrapImageKeyRequest) (*keydv1.UnwrapImageKeyResponse, error) {
	s := k.s
	st, err := suite.Parse(req.Suite)
	if err != nil || req.Suite == "" {
		return nil, status.Errorf(codes.InvalidArgument, "suite must be gm or intl, got %q", clip(req.Suite))
	}
	entries := req.ImageKeyEntries()
	keySet, err := imagecrypt.KeySet(st, entries)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	node, err := s.imageNode(ctx, req.NodeName)
	if err != nil {
		s.auditImage(ctx, audit.ResultDenied, status.Convert(err).Message(), clip(req.NodeName), "", keySet)
		return nil, err
	}
	// The first entry the policy lets this node use and this keyd holds:
	// one private-key operation whatever the number of recipients.
	pol, err := s.currentPolicy()
	if err != nil {
		return nil, err
	}
	var chosen *imagecrypt.Entry
	var allowed []string
	for i := range entries {
		if !pol.AllowedImageKey(node, entries[i].KeyID) {
			continue
		}
		allowed = append(allowed, entries[i].KeyID)
		if s.kr.HasImageKey(ctx, entries[i].KeyID) {
			chosen = &entries[i]
			break
		}
	}
	if chosen == nil {
		code, msg := codes.PermissionDenied, fmt.Sprintf("policy does not allow node %q to unwrap images encrypted for image keys %s (key set %s)",
			node, strings.Join(imagecrypt.KeyIDs(entries), ", "), keySet)
		if len(allowed) > 0 {
			code, msg = codes.NotFound, fmt.Sprintf("node %q may unwrap image keys %s, but keyd holds none of them (key set %s)",
				node, strings.Join(allowed, ", "), keySet)
		}
		s.auditImage(ctx, audit.ResultDenied, msg, node, "", keySet)
		return nil, status.Error(code, msg)
	}
	cek, err := s.kr.UnwrapImageEntry(ctx, st, *chosen)
	if err != nil {
		s.auditImage(ctx, audit.ResultError, err.Error(), node, chosen.KeyID, keySet)
		return nil, imageStatus(err)
	}
	// Nothing leaves keyd before the unwrap is durably recorded.
	if err := s.auditImage(ctx, audit.ResultOK, "", node, chosen.KeyID, keySet); err != nil {
		secmem.Zero(cek)
		return nil, auditUnavailable(err)
	}
	return &keydv1.UnwrapImageKeyResponse{Cek: cek, KeyId: chosen.KeyID, KeySet: keySet}, nil
}

// imageStatus maps an unwrap failure: a blob that fails authentication or
// parsing is the caller's (InvalidArgument), a key this keyd does not hold
// NotFound, the rest as every other call.
func imageStatus(err error) error {
	switch {
	case errors.Is(err, imagecrypt.ErrUnwrap), errors.Is(err, imagecrypt.ErrMalformed):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, keyring.ErrNoImageKey):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, hsm.ErrObjectExists):
		return status.Error(codes.AlreadyExists, err.Error())
	}
	return toStatus(err)
}

func (k *keydService) ImageKeys(ctx context.Context, _ *keydv1.ImageKeysRequest) (*keydv1.ImageKeysResponse, error) {
	keys, err := k.s.kr.ImageKeys(ctx)
	if err != nil {
		return nil, imageStatus(err)
	}
	out := &keydv1.ImageKeysResponse{}
	for _, r := range keys {
		m, err := keydv1.NewImageKey(r)
		if err != nil {
			return nil, toStatus(err)
		}
		out.Keys = append(out.Keys, m)
	}
	return out, nil
}

func (a *adminService) CreateImageKey(ctx context.Context, req *keydv1.CreateImageKeyRequest) (*keydv1.ImageKey, error) {
	st, err := suite.Parse(req.Suite)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !imagecrypt.ValidKeyID(req.KeyId) {
		return nil, status.Errorf(codes.InvalidArgument, "image key id %q is invalid (lower case, digits, '-' and '.', at most 63)", clip(req.KeyId))
	}
	r, err := a.s.kr.CreateImageKey(ctx, req.KeyId, st)
	result, reason := audit.ResultOK, ""
	if err != nil {
		result, reason = audit.ResultError, err.Error()
	}
	if aerr := a.s.audit.Append(ctx, audit.Record{Action: audit.ActionImageKeyCreate, Result: result, Reason: reason,
		Objects: []string{"image-key/" + req.KeyId, "suite/" + string(st)}}); aerr != nil && err == nil {
		return nil, auditUnavailable(aerr)
	}
	if err != nil {
		return nil, imageStatus(err)
	}
	m, err := keydv1.NewImageKey(r)
	if err != nil {
		return nil, toStatus(err)
	}
	return m, nil
}
