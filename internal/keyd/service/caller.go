package service

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// Which lane a Keyd call takes as its stream opens (Server.tap):
//
//   - a caller on the local socket, or over TLS with a client certificate
//     podkey's CA verifies (a node's, a backend's): Issue, Verify and
//     UnwrapImageKey go through admission, fairly by the certificate's
//     identity; its other calls are small and run at once;
//   - a TLS caller without one may only bootstrap: NodeCertificate (its
//     node token proves it), Revoke with a pod token, and the public CA
//     bundle, JWK Set and image keys, through the bootstrap lane, fairly
//     by peer address;
//   - anything else it asks is refused Unauthenticated at once: no
//     admission, no request read, no audit record (a metric counts it).
var (
	heavyMethods = map[string]bool{keydv1.Keyd_Issue_FullMethodName: true, keydv1.Keyd_Verify_FullMethodName: true,
		keydv1.Keyd_UnwrapImageKey_FullMethodName: true}
	bootstrapMethods = map[string]bool{keydv1.Keyd_NodeCertificate_FullMethodName: true, keydv1.Keyd_Revoke_FullMethodName: true,
		keydv1.Keyd_CABundle_FullMethodName: true, keydv1.Keyd_TokenKeys_FullMethodName: true, keydv1.Keyd_ImageKeys_FullMethodName: true}
)

// Bootstrap lane bounds: a node bootstraps once, then renews with its
// certificate; these hold a cluster-wide restart's bootstraps waiting.
const (
	bootstrapInflight = 16
	bootstrapQueued   = 240
)

// maxStreamsPerConn bounds the concurrent streams of one TLS connection.
const maxStreamsPerConn = 256

// tap classifies a Keyd call and admits or refuses it (grpc.InTapHandle:
// it runs on the connection's reader and must not block).
func (s *Server) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	m := info.FullMethodName
	if !strings.HasPrefix(m, "/"+keydv1.Keyd_ServiceDesc.ServiceName+"/") {
		return ctx, nil // health; the Admin API is on the local socket only
	}
	id, ok, certErr := s.callerIdentity(ctx)
	switch {
	case ok && heavyMethods[m]:
		ctx, err := s.admission.admit(ctx, id)
		if err != nil {
			s.metrics.refused.Inc()
		}
		return ctx, err
	case ok:
		return ctx, nil
	case bootstrapMethods[m]:
		ctx, err := s.bootstrap.admit(ctx, peerHost(ctx))
		if err != nil {
			s.metrics.bootstrapRefused.Inc()
		}
		return ctx, err
	}
	s.metrics.unauthenticated.Inc()
	if certErr != nil { // a certificate was presented: say what is wrong with it
		return nil, certErr
	}
	return nil, status.Error(codes.Unauthenticated,
		"no client certificate podkey's CA verifies: node agents obtain one with NodeCertificate, workloads use their podkey certificate (intl suite)")
}

// peerHost is the caller's address without its port.
func peerHost(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "peer:?"
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		host = p.Addr.String()
	}
	return "peer:" + host
}

// callerIdentity names an authenticated caller: "local" on the unix
// socket, or its verified client certificate's identity (a node's SPIFFE
// URI, a workload's). ok is false for a TLS caller without one; err says
// why a certificate it presented was not accepted.
func (s *Server) callerIdentity(ctx context.Context) (id string, ok bool, err error) {
	if fromUnixSocket(ctx) {
		return "local", true, nil
	}
	p, found := peer.FromContext(ctx)
	if !found {
		return "", false, nil
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || len(info.State.PeerCertificates) == 0 {
		return "", false, nil
	}
	return s.verified.identity(info.State.PeerCertificates, func() error {
		_, err := s.verifyClientCert(info.State.PeerCertificates)
		return err
	}, s.opts.Now())
}

// verifyClientCert checks a client certificate chain against podkey's
// intl CA generations, as of now.
func (s *Server) verifyClientCert(certs []*x509.Certificate) (*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.clientCAs(), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: s.opts.Now()}); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, status.Errorf(codes.Unauthenticated, "node client certificate expired at %s: renew it with NodeCertificate",
				leaf.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
		}
		return nil, status.Errorf(codes.Unauthenticated, "client certificate not accepted: %v", err)
	}
	return leaf, nil
}

// certCache remembers verified client certificates for a while, so the
// tap verifies a connection's certificate once, not per stream: a chain
// verification per stream would cost the connection's reader more than
// the call.
type certCache struct {
	mu sync.Mutex
	m  map[[32]byte]cachedCert
}

type cachedCert struct {
	id       string
	verified time.Time
}

// recheckAfter bounds how long a verification is reused: a CA generation
// retired meanwhile stops admitting within it.
const (
	recheckAfter  = time.Minute
	certCacheSize = 8192
)

func (c *certCache) identity(certs []*x509.Certificate, verify func() error, now time.Time) (string, bool, error) {
	leaf := certs[0]
	key := sha256.Sum256(leaf.Raw)
	c.mu.Lock()
	e, hit := c.m[key]
	c.mu.Unlock()
	if hit && now.Sub(e.verified) < recheckAfter && now.Before(leaf.NotAfter) {
		return e.id, true, nil
	}
	if err := verify(); err != nil {
		return "", false, err
	}
	e = cachedCert{id: certIdentity(leaf), verified: now}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= certCacheSize {
		c.m = map[[32]byte]cachedCert{}
	}
	c.m[key] = e
	c.mu.Unlock()
	return e.id, true, nil
}

// certIdentity names a verified certificate's holder: its first URI SAN
// (a node's spiffe://.../podkey/node/<name>, a workload's SPIFFE id), or
// its subject.
func certIdentity(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	return fmt.Sprintf("cert:%s", c.Subject.String())
}
