package service

import (
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/policy"
)

// PolicyMaxAge bounds how old keyd's confirmation of the policy in force
// may be when it authorizes: past it (the store unreachable, or holding a
// policy this keyd cannot parse, such as one a newer replica wrote), Issue
// and UnwrapImageKey are refused Unavailable, so clients go to another
// replica, and the health service says NOT_SERVING, so the readiness
// probe takes the replica out. A rule removed through any replica is in
// force everywhere within this bound, or nothing is authorized by it.
const PolicyMaxAge = 5 * time.Second

// confirmPolicy records that the policy in force is the store's, now (on
// the monotonic clock: this is elapsed time, not the credentials' clock).
func (s *Server) confirmPolicy() {
	now := time.Now()
	s.policySeen.Store(&now)
}

// policyAge is how long ago the policy in force was last confirmed.
func (s *Server) policyAge() time.Duration {
	seen := s.policySeen.Load()
	if seen == nil {
		return PolicyMaxAge + 1
	}
	return time.Since(*seen)
}

// currentPolicy is the policy to authorize by, or Unavailable when it may
// no longer be the store's.
func (s *Server) currentPolicy() (*policy.Policy, error) {
	if age := s.policyAge(); age > PolicyMaxAge {
		return nil, status.Errorf(codes.Unavailable, "this keyd could not confirm the stored policy for %s (store unreachable, or a policy it cannot read): it authorizes nothing until it can; try another replica", age.Truncate(time.Second))
	}
	return s.policy.Load(), nil
}

// updateHealth serves NOT_SERVING while the policy is unconfirmed, and
// says so once in the log when that changes.
func (s *Server) updateHealth() {
	want := healthpb.HealthCheckResponse_SERVING
	if s.policyAge() > PolicyMaxAge {
		want = healthpb.HealthCheckResponse_NOT_SERVING
	}
	if prev := healthpb.HealthCheckResponse_ServingStatus(s.serving.Swap(int32(want))); prev == want {
		return
	}
	s.health.SetServingStatus("", want)
	if want == healthpb.HealthCheckResponse_SERVING {
		s.opts.Logger.Info("policy confirmed against the store again: serving")
	} else {
		s.opts.Logger.Warn("policy not confirmed against the store: not serving Issue or UnwrapImageKey", "maxAge", PolicyMaxAge)
	}
}
