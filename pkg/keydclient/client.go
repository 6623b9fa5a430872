// Package keydclient dials keyd: over its local unix socket, or over TLS
// with the podkey CA bundle as the only trusted roots (re-read when the
// file changes, so a rotated CA is followed).
package keydclient

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Options select how to reach keyd. Every field says its default.
type Options struct {
	// Socket is keyd's unix socket. Used when Address is empty.
	Socket string
	// Address is keyd's TLS address (host:port), several separated by
	// commas, or a gRPC target such as dns:///keyd.podkey.svc:9443: see
	// NewClient. Default empty.
	Address string
	// CAFile is the PEM bundle that verifies keyd's serving certificate.
	// Required with Address.
	CAFile string
	// ServerName overrides the name checked in the certificate. Default:
	// the host of Address.
	ServerName string
}

// Dial connects lazily; the first RPC reports an unreachable keyd. extra
// options apply to a socket connection (the CLI's interceptors).
func Dial(o Options, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	if o.Address == "" {
		if o.Socket == "" {
			return nil, errors.New("keyd socket or address is required")
		}
		return grpc.NewClient("unix://"+o.Socket, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, extra...)...)
	}
	if o.CAFile == "" {
		return nil, errors.New("a CA bundle (--ca-file) is required to reach keyd over TLS")
	}
	r, err := newRoots(o.CAFile)
	if err != nil {
		return nil, err
	}
	return NewClient(o.Address, r.tlsConfig(o.Address, o.ServerName))
}

// loadRoots reads a PEM CA bundle that must hold at least one certificate.
func loadRoots(file string) (*x509.CertPool, error) {
	pemData, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("CA bundle %s holds no certificate", file)
	}
	return pool, nil
}
