// Package apikey is the backend side of podkey's API keys: HTTP middleware
// that verifies requests signed with podkey's request signing scheme by
// asking keyd (the backend never holds a secret), puts the caller's
// identity in the request context, and refuses with 401/403 and a reason
// code. Results are never cached: each request is verified, so a replay
// is caught by keyd.
package apikey

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
)

// Verifier is keyd's Verify; keydv1.KeydClient satisfies it.
type Verifier interface {
	Verify(ctx context.Context, in *keydv1.VerifyRequest, opts ...grpc.CallOption) (*keydv1.VerifyResponse, error)
}

// Caller is the verified identity of a request's signer.
type Caller struct {
	Namespace      string
	ServiceAccount string
	PodUID         string
	Object         string
	Suite          string
	Generation     int64
	Expiry         time.Time
}

type callerKey struct{}

// CallerFrom returns the caller the middleware verified.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Reason codes in refusals' JSON bodies.
const (
	ReasonMissing     = "missing_signature"
	ReasonMalformed   = "malformed_signature"
	ReasonRetired     = "retired_scheme"
	ReasonStale       = "stale_request"
	ReasonReplayed    = "replayed_request"
	ReasonForged      = "unknown_or_forged_key"
	ReasonExpired     = "expired_key"
	ReasonRevoked     = "revoked_key"
	ReasonBad         = "bad_signature"
	ReasonUnavailable = "verifier_unavailable"
	ReasonBusy        = "verifier_busy" // keyd refused for load; Retry-After says when to try again
)

// Refusal is the JSON body of a refused request.
type Refusal struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

func refuse(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", reqsign.Version)
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(Refusal{Error: reason, Message: msg})
}

// classify maps keyd's refusal to an HTTP status and reason code.
func classify(err error) (int, string) {
	st := status.Convert(err)
	msg := st.Message()
	switch st.Code() {
	case codes.PermissionDenied:
		return http.StatusForbidden, ReasonRevoked
	case codes.InvalidArgument:
		if strings.Contains(msg, "retired") {
			return http.StatusUnauthorized, ReasonRetired
		}
		return http.StatusUnauthorized, ReasonMalformed
	case codes.Unauthenticated:
		switch {
		case strings.Contains(msg, "replay"):
			return http.StatusUnauthorized, ReasonReplayed
		case strings.Contains(msg, "freshness"):
			return http.StatusUnauthorized, ReasonStale
		case strings.Contains(msg, "expired"):
			return http.StatusUnauthorized, ReasonExpired
		case strings.Contains(msg, "not authentic"):
			return http.StatusUnauthorized, ReasonForged
		case strings.Contains(msg, "signature does not match"):
			return http.StatusUnauthorized, ReasonBad
		}
		return http.StatusUnauthorized, ReasonBad
	case codes.ResourceExhausted:
		return http.StatusServiceUnavailable, ReasonBusy
	}
	return http.StatusServiceUnavailable, ReasonUnavailable
}

// retryAfter is keyd's RetryInfo hint in whole seconds, rounded up; 0
// without one.
func retryAfter(err error) int {
	return int((keydv1.RetryDelay(err) + time.Second - 1) / time.Second)
}

// Middleware verifies every request before next sees it.
func Middleware(v Verifier, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			refuse(w, http.StatusUnauthorized, ReasonMissing, "sign the request with a podkey API key")
			return
		}
		a, sts, err := reqsign.Canonical(r)
		if errors.Is(err, reqsign.ErrRetired) {
			refuse(w, http.StatusUnauthorized, ReasonRetired, err.Error())
			return
		}
		if err != nil {
			refuse(w, http.StatusUnauthorized, ReasonMalformed, err.Error())
			return
		}
		resp, err := v.Verify(r.Context(), &keydv1.VerifyRequest{AccessKeyId: a.AccessKeyID, StringToSign: sts, Signature: a.Signature})
		if err != nil {
			code, reason := classify(err)
			if secs := retryAfter(err); secs > 0 && code == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", strconv.Itoa(secs))
			}
			msg := status.Convert(err).Message()
			if errors.Is(err, context.Canceled) {
				msg = "request canceled"
			}
			refuse(w, code, reason, msg)
			return
		}
		c := Caller{Namespace: resp.Namespace, ServiceAccount: resp.ServiceAccount, PodUID: resp.PodUid, Object: resp.Object,
			Suite: resp.Suite, Generation: resp.Generation, Expiry: resp.Expiry.AsTime()}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}
