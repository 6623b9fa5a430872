package keydclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// NodeOptions configure a node agent's connection to keyd. Every field
// says its default.
type NodeOptions struct {
	// Address is keyd's TLS address, or several: see NewClient. Required.
	Address string
	// CAFile verifies keyd's serving certificate. Required.
	CAFile string
	// ServerName overrides the name checked in keyd's certificate.
	ServerName string
	// TokenFile holds the node agent's bound service-account token
	// (audience podkey-node), re-read at every renewal since the kubelet
	// rotates it. Required.
	TokenFile string
	// RenewFraction of a certificate's life after which it is renewed.
	// Default 2/3.
	RenewFraction float64
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// NodeConn is a gRPC connection to keyd authenticated with the node's
// client certificate. It renews the certificate before it expires and
// moves new calls to a connection that presents the new one, letting calls
// in flight on the old connection finish; no call is dropped.
type NodeConn struct {
	o      NodeOptions
	roots  *roots
	cur    atomic.Pointer[grpc.ClientConn]
	expiry atomic.Int64 // unix seconds of the current certificate's NotAfter

	mu     sync.Mutex
	closed bool
}

var _ grpc.ClientConnInterface = (*NodeConn)(nil)

// DialNode obtains the first node certificate and connects.
func DialNode(ctx context.Context, o NodeOptions) (*NodeConn, error) {
	if o.Address == "" || o.CAFile == "" || o.TokenFile == "" {
		return nil, errors.New("keyd address, CA bundle and node token file are required")
	}
	if o.RenewFraction <= 0 || o.RenewFraction >= 1 {
		o.RenewFraction = 2.0 / 3.0
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	roots, err := newRoots(o.CAFile)
	if err != nil {
		return nil, err
	}
	n := &NodeConn{o: o, roots: roots}
	if err := n.renew(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *NodeConn) tlsConfig(cert *tls.Certificate) *tls.Config {
	c := n.roots.tlsConfig(n.o.Address, n.o.ServerName)
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// renew asks keyd for a new certificate with the node token over TLS
// (server-authenticated only) and swaps in a connection that presents it.
func (n *NodeConn) renew(ctx context.Context) error {
	tok, err := os.ReadFile(n.o.TokenFile)
	if err != nil {
		return fmt.Errorf("read node token: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	boot, err := NewClient(n.o.Address, n.tlsConfig(nil))
	if err != nil {
		return err
	}
	defer boot.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := keydv1.NewKeydClient(boot).NodeCertificate(cctx, &keydv1.NodeCertificateRequest{
		NodeToken: strings.TrimSpace(string(tok)), Csr: csr})
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	blk, _ := pem.Decode(resp.CertPem)
	if blk == nil {
		return errors.New("node certificate: keyd returned no certificate")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key, Leaf: leaf}
	conn, err := NewClient(n.o.Address, n.tlsConfig(cert))
	if err != nil {
		return err
	}
	// Connect now, while the node starts, rather than on its first pod's
	// publish: at a cluster-wide restart the handshakes then come before
	// the pods, not among them.
	conn.Connect()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		conn.Close()
		return errors.New("node connection closed")
	}
	old := n.cur.Swap(conn)
	n.expiry.Store(leaf.NotAfter.Unix())
	if old != nil {
		// Calls already started on the old connection finish; it closes
		// once they had a minute to do so.
		time.AfterFunc(time.Minute, func() { old.Close() })
	}
	n.o.Logger.Info("node client certificate obtained", "node", leaf.Subject.CommonName, "expiry", leaf.NotAfter.UTC())
	return nil
}

// Expiry is the current certificate's NotAfter.
func (n *NodeConn) Expiry() time.Time { return time.Unix(n.expiry.Load(), 0) }

// Run renews the certificate at RenewFraction of its life, retrying with
// backoff on failure, until ctx ends.
func (n *NodeConn) Run(ctx context.Context) {
	backoff := time.Second
	for {
		exp := n.Expiry()
		life := time.Until(exp)
		wait := time.Duration(float64(life) * n.o.RenewFraction)
		if backoff > time.Second {
			wait = min(backoff, life/2)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 100*time.Millisecond)):
		}
		if err := n.renew(ctx); err != nil {
			n.o.Logger.Error("node certificate renewal failed; retrying", "error", err, "expiry", exp.UTC())
			backoff = min(backoff*2, 5*time.Minute)
			continue
		}
		backoff = time.Second
	}
}

// Invoke implements grpc.ClientConnInterface on the current connection.
func (n *NodeConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return n.cur.Load().Invoke(ctx, method, args, reply, opts...)
}

// NewStream implements grpc.ClientConnInterface on the current connection.
func (n *NodeConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return n.cur.Load().NewStream(ctx, desc, method, opts...)
}

// Close closes the current connection.
func (n *NodeConn) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	if c := n.cur.Load(); c != nil {
		return c.Close()
	}
	return nil
}

// NodeCertificateExpiry is the metric of when the node's client
// certificate expires (NodeConn.Expiry); it renews well before, so an
// expiry drawing near means renewal is failing.
func NodeCertificateExpiry(expiry func() time.Time) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_csi_node_certificate_expiry_timestamp_seconds",
		Help: "When the node agent's keyd client certificate expires (Unix seconds); renewed after two thirds of its life."},
		func() float64 { return float64(expiry().Unix()) })
}
