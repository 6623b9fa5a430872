// Package service is podkey's key service: it authenticates callers,
// authorizes them by policy, mints credentials from the HSM-backed keyring,
// verifies API-key signatures, records revocations and audits all of it.
// It serves the Keyd API over TLS (certificate from the HSM-held CA) and,
// together with the Admin API, on a local unix socket.
package service

import (
	"errors"
	"log/slog"
	"time"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/identity"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Server. Every field says its default.
type Options struct {
	// HSM selects the token. Required (PIN included).
	HSM hsm.Config
	// StorePath is the bbolt file. Default /var/lib/podkey/keyd.db.
	StorePath string
	// Postgres, when set, is a PostgreSQL connection string (libpq form or
	// URL; TLS with sslmode=verify-full and sslrootcert) and keyd keeps its
	// state there instead of StorePath. It comes from a file or the
	// environment, never a flag value, and is never logged. Default empty.
	Postgres string
	// Listen is the TLS address; empty disables TCP. Default empty.
	Listen string
	// Socket is the local unix socket (mode 0600, for the CLI and node
	// agents on the same host); empty disables it. Default
	// /run/podkey/keyd.sock.
	Socket string
	// JWKSListen is the HTTPS address serving the token keys' JWK Set at
	// JWKSPath, for token receivers; empty disables it. Default empty.
	JWKSListen string
	// TLSNames are the DNS names and IP addresses in the serving
	// certificate. Default localhost and 127.0.0.1.
	TLSNames []string
	// PolicyFile, when set, replaces the stored policy at start.
	PolicyFile string
	// InsecureLocalIdentity trusts the pod identity that a caller on the
	// unix socket claims, without verifying a pod token. Development only.
	// Default false: pod identity must be proven.
	InsecureLocalIdentity bool
	// Identity verifies pod and node tokens with TokenReview. When nil, only
	// InsecureLocalIdentity can establish a pod identity.
	Identity *identity.Verifier
	// NodeCertTTL is the life of node agents' client certificates.
	// Default 1h; agents renew at two thirds of it.
	NodeCertTTL time.Duration
	// TrustDomain names workload certificates' SPIFFE URIs. Default
	// cluster.local.
	TrustDomain string
	// RevocationTTL is how long a revoked pod stays refused: at least the
	// longest credential life. Default 30 days (object.MaxTTL).
	RevocationTTL time.Duration
	// MaxInflight bounds the Issue and Verify calls that run at once.
	// Default: derived from the memory limit and the CPUs (see admission).
	MaxInflight int
	// MaxQueued bounds the Issue and Verify calls that wait for one of
	// those; calls beyond it are refused with ResourceExhausted and a
	// retry hint. Default (0): derived from the memory limit; negative: no
	// queue, refuse at once.
	MaxQueued int
	// Registerer receives keyd's metrics. Default: a registry of its own,
	// not served.
	Registerer prometheus.Registerer
	// Logger receives structured logs; never secrets. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Defaults.
const (
	DefaultStorePath = "/var/lib/podkey/keyd.db"
	DefaultSocket    = keydv1.DefaultSocket
)

func (o *Options) setDefaults() error {
	if o.HSM.TokenLabel == "" {
		return errors.New("keyd: HSM token label is required")
	}
	if o.StorePath == "" {
		o.StorePath = DefaultStorePath
	}
	if len(o.TLSNames) == 0 {
		o.TLSNames = []string{"localhost", "127.0.0.1"}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.NodeCertTTL == 0 {
		o.NodeCertTTL = time.Hour
	}
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.RevocationTTL == 0 {
		o.RevocationTTL = 30 * 24 * time.Hour
	}
	return nil
}
