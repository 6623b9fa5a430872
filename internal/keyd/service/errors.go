package service

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/credential"
	"github.com/podkey/podkey/internal/keyd/dbcred"
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
	case errors.Is(err, credential.ErrInvalid), errors.Is(err, accesskey.ErrMalformed), errors.Is(err, dbcred.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, credential.ErrNotEnrolled), errors.Is(err, store.ErrNotFound), errors.Is(err, dbcred.ErrUndefined):
		code = codes.NotFound
	case errors.Is(err, dbcred.ErrInUse), errors.Is(err, dbcred.ErrRefused):
		// A database that refuses the admin's statements needs its
		// administrator (privileges, the group role), not a retry.
		code = codes.FailedPrecondition
	case errors.Is(err, dbcred.ErrUnavailable):
		code = codes.Unavailable
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
	return withCause(code, err.Error(), err)
}

// callError is a status for the caller that keeps its cause for keyd's own
// log: a database failure's detail (which names the database, its user
// and socket) is logged, never sent (store.Detail).
type callError struct {
	st    *status.Status
	cause error
}

func (e *callError) Error() string              { return e.st.Err().Error() }
func (e *callError) GRPCStatus() *status.Status { return e.st }
func (e *callError) Unwrap() error              { return e.cause }

func withCause(code codes.Code, msg string, cause error) error {
	return &callError{st: status.New(code, msg), cause: cause}
}

// auditUnavailable refuses a call whose audit record was not stored: no
// record, no answer.
func auditUnavailable(err error) error {
	return withCause(codes.Unavailable, "audit log unavailable: "+err.Error(), err)
}

// storeUnavailable refuses a call the store could not serve.
func storeUnavailable(err error) error {
	return withCause(codes.Unavailable, "store unavailable: "+err.Error(), err)
}
