// Package service is podkey's key service: it authenticates callers,
// authorizes them by policy, mints credentials from the HSM-backed keyring,
// verifies API-key signatures, records revocations and audits all of it.
// It serves the Keyd API over TLS (certificate from the HSM-held CA) and,
// together with the Admin API, on a local unix socket.
package service

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// Options configure a Server. Every field says its default.
type Options struct {
	// Keyring is the root keys on a logged-in HSM token (keyring.Open).
	// Required. Its opener closes it, and its token, after the Server.
	Keyring *keyring.Keyring
	// Store is keyd's state: a bbolt file (store.OpenBolt) or PostgreSQL
	// shared by replicas (store.OpenPostgres). Required. Its opener
	// closes it after the Server.
	Store store.Store
	// SharedPorts lets several replicas on one host share the TLS, JWKS
	// and metrics ports (SO_REUSEPORT; see Listen): set it when the
	// Store is shared. Default false.
	SharedPorts bool
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
	// TLSRequirePostQuantum limits the TLS listener and the JWK Set's
	// HTTPS to hybrid post-quantum key exchanges (X25519MLKEM768,
	// SecP256r1MLKEM768, SecP384r1MLKEM1024): a client offering none is
	// refused in the handshake. Default false: they are preferred, and
	// classical groups still accepted.
	TLSRequirePostQuantum bool
	// PolicyFile, when set, is the policy at start: it replaces the
	// stored one (PolicyFileSeeds false), or is stored only where the
	// store holds none (PolicyFileSeeds true). A replacement is audited
	// with what it drops; with a shared store it replaces the policy of
	// every replica, so keyd warns when it drops rules. Default empty.
	PolicyFile string
	// PolicyFileSeeds makes PolicyFile a first policy only. Default false.
	PolicyFileSeeds bool
	// InsecureLocalIdentity trusts the pod identity that a caller on the
	// unix socket claims, without verifying a pod token. Development only.
	// Default false: pod identity must be proven.
	InsecureLocalIdentity bool
	// Identity verifies pod and node tokens with TokenReview. When nil, only
	// InsecureLocalIdentity can establish a pod identity.
	Identity *identity.Verifier
	// PodGone, when set, tells a pod known not to exist any more (the local
	// token verifier's pod informer): its database logins are revoked
	// without waiting for their expiry. Default: none.
	PodGone func(namespace, name, uid string) bool
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
	// Now is the clock. Default: the store's when it has one (a shared
	// PostgreSQL: see storeClock), else time.Now.
	Now func() time.Time
	// CheckpointInterval is how often keyd appends a signed audit
	// checkpoint when records were added. Default 1m; negative: never
	// (only on demand).
	CheckpointInterval time.Duration
	// CheckpointSuite signs checkpoints: gm (SM3, SM2) or intl (SHA-256,
	// ECDSA P-256). Default: gm when the gm token-signing key is inside
	// the module, else intl.
	CheckpointSuite suite.Name
	// CheckpointDir, when set, receives every checkpoint as a file, for
	// the operator to ship off the host.
	CheckpointDir string
	// EscrowRetention is how long a TLCP encryption key stays escrowed
	// after its issuance; then it is destroyed, audited. Default 400 days
	// (a year of recovery after the longest certificate life).
	EscrowRetention time.Duration
	// ReplicaName names this replica in checkpoints. Default the host name.
	ReplicaName string
	// LocalClock is this host's clock, that the store's clock is read
	// through when Now is not given. Default time.Now; a test gives a
	// skewed one.
	LocalClock func() time.Time
}

// DefaultSocket is where keyd serves its local socket unless told otherwise.
const DefaultSocket = keydv1.DefaultSocket

func (o *Options) setDefaults() error {
	if o.Keyring == nil || o.Store == nil {
		return errors.New("keyd: a keyring and a store are required")
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
	if o.CheckpointSuite != "" && o.CheckpointSuite != suite.GM && o.CheckpointSuite != suite.Intl {
		return fmt.Errorf("keyd: audit checkpoint suite %q: want gm or intl", o.CheckpointSuite)
	}
	if o.EscrowRetention == 0 {
		o.EscrowRetention = 400 * 24 * time.Hour
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Minute
	}
	if o.ReplicaName == "" {
		o.ReplicaName, _ = os.Hostname()
	}
	if o.RevocationTTL == 0 {
		o.RevocationTTL = 30 * 24 * time.Hour
	}
	return nil
}
