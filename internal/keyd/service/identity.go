package service

import (
	"context"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/keyring"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
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
func claimedIdentity(p *keydv1.PodIdentity) (pod.Identity, error) {
	if p == nil {
		return pod.Identity{}, status.Error(codes.InvalidArgument, "pod identity is required")
	}
	id := p.Identity()
	for _, f := range []struct {
		name, v string
		max     int
	}{{"namespace", id.Namespace, 63}, {"service account", id.ServiceAccount, 253}, {"name", id.Name, 253}, {"UID", id.UID, 128}} {
		if err := validPodField(f.name, f.v, f.max); err != nil {
			return id, err
		}
	}
	if !object.ValidName(id.Namespace) {
		return id, status.Errorf(codes.InvalidArgument, "pod namespace %q is invalid", id.Namespace)
	}
	if len(id.Node) > 253 {
		return id, status.Error(codes.InvalidArgument, "node name is too long")
	}
	return id, nil
}

// nodeURIPrefix starts the URI SAN of node agents' client certificates:
// spiffe://<trust domain>/podkey/node/<node name>.
const nodeURIPath = "/podkey/node/"

func (s *Server) nodeURI(node string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: s.opts.TrustDomain, Path: nodeURIPath + node}
}

// callerCert is the caller's client certificate from podkey's intl CA
// (a node's or a workload's), verified here rather than in the handshake so
// that a missing, expired or foreign certificate is refused with a message
// that says so.
func (s *Server) callerCert(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil, status.Error(codes.Unauthenticated,
			"no client certificate: node agents obtain one with NodeCertificate, workloads use their podkey certificate (intl suite)")
	}
	return s.verifyClientCert(info.State.PeerCertificates)
}

// callerNode is the node named by the caller's client certificate.
func (s *Server) callerNode(ctx context.Context) (string, error) {
	leaf, err := s.callerCert(ctx)
	if err != nil {
		return "", err
	}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" && u.Host == s.opts.TrustDomain && strings.HasPrefix(u.Path, nodeURIPath) {
			if node := strings.TrimPrefix(u.Path, nodeURIPath); node != "" {
				return node, nil
			}
		}
	}
	return "", status.Error(codes.Unauthenticated, "client certificate names no podkey node")
}

func (s *Server) clientCAs() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, g := range s.kr.Generations(keyring.CA, suite.Intl) {
		if c, err := s.kr.CA(suite.Intl, g); err == nil {
			pool.AddCert(c.Cert)
		}
	}
	return pool
}

// identityStatus maps a token verification failure to a gRPC status whose
// message says which check failed (never the token).
func identityStatus(err error) error {
	switch {
	case errors.Is(err, identity.ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, identity.ErrForbidden):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, identity.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// authenticate establishes the pod a request is for.
//
//   - Over TLS the caller must be a node agent with a valid client
//     certificate; the pod token is reviewed, must name that node, and must
//     be for the pod the request names (the volume's pod).
//   - On the local socket (an operator on the keyd host) the pod token is
//     reviewed without a node check, or, in --insecure-local-identity mode
//     only, the claimed identity is trusted.
func (s *Server) authenticate(ctx context.Context, p *keydv1.PodIdentity, token string) (pod.Identity, error) {
	id, _, err := s.authenticateToken(ctx, p, token)
	return id, err
}

// authenticateToken is authenticate, also returning the token's ID (jti)
// when its review reports one.
func (s *Server) authenticateToken(ctx context.Context, p *keydv1.PodIdentity, token string) (pod.Identity, string, error) {
	claimed, err := claimedIdentity(p)
	if err != nil {
		return claimed, "", err
	}
	if len(token) > 16<<10 {
		return claimed, "", status.Error(codes.InvalidArgument, "pod token is larger than 16 KiB")
	}
	local := fromUnixSocket(ctx)
	if local && s.opts.InsecureLocalIdentity {
		return claimed, "", nil
	}
	if s.opts.Identity == nil {
		if s.opts.InsecureLocalIdentity {
			return claimed, "", status.Error(codes.Unauthenticated,
				"claimed pod identity is accepted only on the local socket in insecure local identity mode")
		}
		return claimed, "", status.Errorf(codes.Unauthenticated,
			"pod identity for %s/%s cannot be verified: keyd has no Kubernetes API access for TokenReview (--kubeconfig or in-cluster)",
			claimed.Namespace, claimed.Name)
	}
	node := ""
	if !local {
		if node, err = s.callerNode(ctx); err != nil {
			return claimed, "", err
		}
	}
	proven, jti, err := s.opts.Identity.PodToken(ctx, token)
	if err != nil {
		return claimed, "", identityStatus(err)
	}
	if node != "" && proven.Node != node {
		return claimed, "", status.Errorf(codes.PermissionDenied,
			"pod token is for a pod on node %q, but the caller is node %q", proven.Node, node)
	}
	if proven.UID != claimed.UID || proven.Namespace != claimed.Namespace {
		return claimed, "", status.Errorf(codes.PermissionDenied,
			"pod token is for pod %s/%s (uid %s), not the volume's pod %s/%s (uid %s)",
			proven.Namespace, proven.Name, proven.UID, claimed.Namespace, claimed.Name, claimed.UID)
	}
	return proven, jti, nil
}

// authorizeRevoke decides whether the caller may revoke the pod. An
// operator on the local socket may revoke any pod (revocation only takes
// away). A pod token, when still valid, is checked like Issue's. Without
// one (the pod is gone, or the revocation was queued on the node), a node
// agent may revoke only a pod that keyd served through that node: one it
// holds a binding for. A pod keyd never served through the caller is
// refused, so no node can revoke, and so deny new credentials to, a pod
// that runs elsewhere.
func (s *Server) authorizeRevoke(ctx context.Context, p *keydv1.PodIdentity, token string) (pod.Identity, error) {
	claimed, err := claimedIdentity(p)
	if err != nil {
		return claimed, err
	}
	if fromUnixSocket(ctx) && token == "" {
		return claimed, nil
	}
	if token != "" || fromUnixSocket(ctx) || s.opts.Identity == nil {
		id, err := s.authenticate(ctx, p, token)
		if err == nil || token == "" || status.Code(err) != codes.Unauthenticated || fromUnixSocket(ctx) {
			return id, err
		}
		// The token no longer proves the pod (deleted): fall through to the
		// node's authority.
	}
	node, err := s.callerNode(ctx)
	if err != nil {
		return claimed, err
	}
	bound, _, err := s.st.PodNode(ctx, claimed.UID, s.opts.Now())
	if err != nil {
		return claimed, status.Errorf(codes.Internal, "%v", err)
	}
	if bound != node {
		return claimed, status.Errorf(codes.PermissionDenied,
			"node %q may not revoke pod %s: keyd did not serve it through that node (a node may revoke only what it obtained)", node, claimed.UID)
	}
	claimed.Node = node
	return claimed, nil
}
