package service

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
)

// toStatus maps an internal error to a gRPC status once, at the edge. The
// messages come from podkey's own errors, which name what failed and never
// include a token, a secret or a signature.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, credential.ErrInvalid), errors.Is(err, accesskey.ErrMalformed):
		code = codes.InvalidArgument
	case errors.Is(err, credential.ErrNotEnrolled), errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, accesskey.ErrForged), errors.Is(err, credential.ErrExpired),
		errors.Is(err, credential.ErrBadSignature), errors.Is(err, errStale), errors.Is(err, errReplay):
		code = codes.Unauthenticated
	case errors.Is(err, credential.ErrRevoked):
		code = codes.PermissionDenied
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, hsm.ErrClosed), errors.Is(err, store.ErrUnavailable):
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}
