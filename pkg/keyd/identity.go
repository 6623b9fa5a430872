package keyd

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/credential"
	"github.com/podkey/podkey/pkg/object"
)

// fromUnixSocket reports whether the call arrived on the local socket.
func fromUnixSocket(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	return ok && p.Addr != nil && p.Addr.Network() == "unix"
}

func validPodField(name, v string, max int) error {
	if v == "" {
		return status.Errorf(codes.InvalidArgument, "pod %s is required", name)
	}
	if len(v) > max {
		return status.Errorf(codes.InvalidArgument, "pod %s is longer than %d", name, max)
	}
	return nil
}

// claimedIdentity validates the shape of a claimed pod identity.
func claimedIdentity(p *keydv1.PodIdentity) (credential.Identity, error) {
	if p == nil {
		return credential.Identity{}, status.Error(codes.InvalidArgument, "pod identity is required")
	}
	id := credential.Identity{Namespace: p.Namespace, ServiceAccount: p.ServiceAccount,
		PodName: p.PodName, PodUID: p.PodUid, NodeName: p.NodeName}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"namespace", id.Namespace, 63}, {"service account", id.ServiceAccount, 253}, {"name", id.PodName, 253}, {"UID", id.PodUID, 128}} {
		if err := validPodField(f.name, f.v, f.max); err != nil {
			return id, err
		}
	}
	if !object.ValidName(id.Namespace) {
		return id, status.Errorf(codes.InvalidArgument, "pod namespace %q is invalid", id.Namespace)
	}
	if len(id.NodeName) > 253 {
		return id, status.Error(codes.InvalidArgument, "node name is too long")
	}
	return id, nil
}

// authenticate establishes the pod a request is for. Proving pod identity
// needs a verified pod token (TokenReview); until that is configured, only
// the explicit development mode on the local socket accepts a claimed
// identity. The token itself is never logged or echoed.
func (s *Server) authenticate(ctx context.Context, p *keydv1.PodIdentity, token string) (credential.Identity, error) {
	id, err := claimedIdentity(p)
	if err != nil {
		return id, err
	}
	if len(token) > 16<<10 {
		return id, status.Error(codes.InvalidArgument, "pod token is larger than 16 KiB")
	}
	if s.opts.InsecureLocalIdentity && fromUnixSocket(ctx) {
		return id, nil
	}
	if s.opts.InsecureLocalIdentity {
		return id, status.Error(codes.Unauthenticated,
			"claimed pod identity is accepted only on the local socket in insecure local identity mode")
	}
	return id, status.Error(codes.Unauthenticated, fmt.Sprintf(
		"pod identity for %s/%s cannot be verified: this keyd has no pod token verification configured "+
			"(development: start keyd with --insecure-local-identity and use its local socket)", id.Namespace, id.PodName))
}
