// Package keydcmd is the podkey-keyd command: its flags, and the wiring of
// the key service to the HSM, the store, the Kubernetes API (TokenReview
// and the published CA bundle) and its listeners.
package keydcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/hsmflags"
	"github.com/podkey/podkey/internal/host/kube"
	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/identity/localtoken"
	"github.com/podkey/podkey/internal/keyd/identity/tokenreview"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/trustbundle"
	"github.com/podkey/podkey/internal/version"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jwks"
)

// DefaultStorePath is keyd's bbolt file unless told otherwise.
const DefaultStorePath = "/var/lib/podkey/keyd.db"

// Main runs podkey-keyd and returns its exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	return command.Run(NewCommand(), args, stdout, stderr)
}

type flags struct {
	hsm         hsmflags.Flags
	keyd        service.Options
	storePath   string
	log         command.LogFlags
	kubeconfig  string
	nodeSA      string
	identity    identity.Options
	podIdentity string
	local       localtoken.Options
	caConfigMap string
	metricsAddr string
	pgFile      string
	pgInsecure  bool
	policyMode  string
	cpuProfile  string
}

// NewCommand builds the podkey-keyd command.
func NewCommand() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:     "podkey-keyd",
		Short:   "The podkey key service: mints per-pod credentials from an HSM",
		Version: version.Version,
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), cmd.ErrOrStderr(), &f) },
	}
	f.register(cmd.Flags())
	return cmd
}

func (f *flags) register(fs *pflag.FlagSet) {
	o := &f.keyd
	f.hsm.Register(fs)
	fs.StringVar(&f.storePath, "store", command.EnvOr("PODKEY_STORE", DefaultStorePath), "bbolt store file (env PODKEY_STORE)")
	fs.StringVar(&f.pgFile, "postgres-file", os.Getenv("PODKEY_POSTGRES_FILE"), "file holding a PostgreSQL connection string: keep state there instead of --store (or env PODKEY_POSTGRES_URL; never a flag value)")
	fs.BoolVar(&f.pgInsecure, "postgres-insecure-transport", false, "DEVELOPMENT ONLY: reach PostgreSQL over TCP without verified TLS (default: TCP needs sslmode=verify-full, or verify-ca with sslrootcert)")
	fs.StringVar(&o.Socket, "socket", command.EnvOr("PODKEY_SOCKET", service.DefaultSocket), "local unix socket for the CLI and node agents; empty disables")
	fs.StringVar(&o.Listen, "listen", os.Getenv("PODKEY_LISTEN"), "TLS listen address, e.g. :7443; empty disables")
	fs.StringVar(&o.JWKSListen, "jwks-listen", os.Getenv("PODKEY_JWKS_LISTEN"), "HTTPS address serving the token keys' JWK Set at "+jwks.WellKnownPath+" for token receivers, e.g. :8443; empty disables")
	fs.StringSliceVar(&o.TLSNames, "tls-name", nil, "DNS name or IP in the serving certificate (repeatable; default localhost,127.0.0.1)")
	fs.BoolVar(&o.TLSRequirePostQuantum, "tls-require-post-quantum", false, "accept only hybrid post-quantum key exchanges (X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024) on the TLS listener and the JWK Set's HTTPS; by default they are preferred and classical ones accepted")
	fs.StringVar(&o.PolicyFile, "policy-file", os.Getenv("PODKEY_POLICY_FILE"), "YAML policy loaded at start, replacing the stored one")
	fs.StringVar(&f.policyMode, "policy-file-mode", "replace", "what --policy-file does to a stored policy: replace it (audited; with replicas it replaces every replica's, dropping rules added at run time) or seed (used only when the store holds none)")
	fs.BoolVar(&o.InsecureLocalIdentity, "insecure-local-identity", false, "DEVELOPMENT ONLY: trust pod identities claimed on the local socket")
	fs.StringVar(&o.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload certificates")
	fs.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for TokenReview (default: in-cluster when available)")
	fs.StringVar(&f.identity.PodAudience, "pod-token-audience", "podkey", "audience of pod tokens")
	fs.StringVar(&f.identity.NodeAudience, "node-token-audience", "podkey-node", "audience of node agents' tokens")
	fs.StringVar(&f.nodeSA, "node-service-account", "podkey/podkey-csi", "the node agent's service account, namespace/name")
	fs.DurationVar(&f.identity.CacheTTL, "token-review-cache-ttl", 10*time.Second, "reuse a successful TokenReview this long (keyed by a hash of the token); negative disables")
	fs.StringVar(&f.podIdentity, "pod-identity", "local-with-fallback", "how pod and node tokens are verified: local (the issuer's keys and pod and service account caches, no API call per token), local-with-fallback (local; TokenReview while the caches cannot decide) or tokenreview (an API call per token)")
	fs.StringSliceVar(&f.local.Issuers, "service-account-issuer", nil, "accepted token issuers, for local verification (default: the API server's discovery document's)")
	fs.StringVar(&f.local.KeyFile, "service-account-key-file", "", "the issuer's public keys (JWK Set or PEM), for clusters that do not serve /openid/v1/jwks (default: read from the API server)")
	fs.StringVar(&f.caConfigMap, "ca-configmap", os.Getenv("PODKEY_CA_CONFIGMAP"), "publish the CA certificates in this ConfigMap, namespace/name (keys "+trustbundle.KeyIntl+", "+trustbundle.KeyGM+"), for clients to verify keyd")
	fs.DurationVar(&o.NodeCertTTL, "node-cert-ttl", time.Hour, "life of node agents' client certificates")
	fs.DurationVar(&o.EscrowRetention, "tlcp-escrow-retention", 400*24*time.Hour, "how long a TLCP encryption key stays escrowed after its issuance before it is destroyed (audited)")
	fs.DurationVar(&o.CheckpointInterval, "audit-checkpoint-interval", time.Minute, "append an HSM-signed audit checkpoint this often when records were added (negative: only on demand)")
	fs.StringVar(&o.CheckpointDir, "audit-checkpoint-dir", os.Getenv("PODKEY_AUDIT_CHECKPOINT_DIR"), "also write every audit checkpoint here as a file, for shipping off the host (env PODKEY_AUDIT_CHECKPOINT_DIR)")
	fs.StringVar((*string)(&o.CheckpointSuite), "audit-checkpoint-suite", "", "sign audit checkpoints with gm (SM3, SM2) or intl (SHA-256, ECDSA P-256); default gm when the module holds the gm signing key, else intl")
	fs.StringVar(&f.metricsAddr, "metrics-addr", os.Getenv("PODKEY_METRICS_ADDR"), "HTTP address serving Prometheus metrics at /metrics, e.g. :9810; empty disables")
	fs.IntVar(&o.MaxInflight, "max-inflight", 0, "Issue and Verify calls run at once (0: derived from the memory limit and CPUs)")
	fs.IntVar(&o.MaxQueued, "max-queued", 0, "Issue and Verify calls waiting beyond those; more are refused with ResourceExhausted and a retry hint (0: derived from the memory limit; -1: no queue)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of keyd's whole run, from start to stop, to this file (for profiling under load)")
	f.log.Register(fs)
}

// run prepares the process, wires keyd and serves until ctx ends.
func run(ctx context.Context, stderr io.Writer, f *flags) error {
	o := f.keyd
	var err error
	if o.Logger, err = f.log.Logger(stderr); err != nil {
		return err
	}
	if err := secmem.HardenProcess(); err != nil {
		o.Logger.Warn("could not disable core dumps", "error", err)
	}
	service.TuneRuntime(o.Logger)
	if f.cpuProfile != "" {
		stop, err := command.StartCPUProfile(f.cpuProfile)
		if err != nil {
			return command.Exit(command.ExitUsage, err)
		}
		defer stop()
	}
	switch f.policyMode {
	case "replace":
	case "seed":
		o.PolicyFileSeeds = true
	default:
		return command.UsageError("--policy-file-mode %q: want replace or seed", f.policyMode)
	}
	if o.InsecureLocalIdentity {
		o.Logger.Warn("insecure local identity mode: claimed pod identities are trusted on the local socket; for development only")
	}
	kubeCfg, err := f.identityVerifier(ctx, &o)
	if err != nil {
		return err
	}
	pub, err := f.bundlePublisher(kubeCfg, o.Logger)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	o.Registerer = reg
	where, closeDeps, err := f.open(ctx, &o)
	if err != nil {
		return err
	}
	defer closeDeps()
	srv, err := service.New(ctx, o)
	if err != nil {
		return command.Exit(command.ExitUnavailable, err)
	}
	defer srv.Close()
	if f.metricsAddr != "" {
		if err := serveMetrics(ctx, f.metricsAddr, o.SharedPorts, reg, o.Logger); err != nil {
			return command.Exit(command.ExitUsage, err)
		}
	}
	if pub != nil {
		pub.Bundle = func() map[string]string {
			// Read the token's generations first: a CA rotated through another
			// replica moments ago must not drop out of the published bundle.
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := o.Keyring.Refresh(rctx); err != nil {
				o.Logger.Warn("reading the token's key generations before publishing the CA bundle failed", "error", err)
			}
			return map[string]string{trustbundle.KeyIntl: string(srv.CABundle(suite.Intl)), trustbundle.KeyGM: string(srv.CABundle(suite.GM))}
		}
		go pub.Run(ctx)
	}
	o.Logger.Info("podkey-keyd started", "version", version.Version, "token", o.Keyring.Token().Label(), "store", where)
	if err := srv.Serve(ctx); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	o.Logger.Info("podkey-keyd stopped")
	return nil
}

// open opens what keyd runs on: the HSM token and its keyring, and the
// store (PostgreSQL when a connection string is given, else the bbolt
// file), into o. where names the store for the log, never the connection
// string (it may hold a password); closeDeps closes all of it.
func (f *flags) open(ctx context.Context, o *service.Options) (where string, closeDeps func(), err error) {
	cfg, err := f.hsm.Config()
	if err != nil {
		return "", nil, err
	}
	pg, err := store.ConnString(f.pgFile)
	if err != nil {
		return "", nil, command.Exit(command.ExitUsage, err)
	}
	tok, err := hsm.Open(cfg)
	if err != nil {
		return "", nil, command.Exit(command.ExitUnavailable, err)
	}
	if o.Keyring, err = keyring.Open(ctx, tok); err != nil {
		tok.Close()
		return "", nil, command.Exit(command.ExitUnavailable, err)
	}
	closeKeys := func() { o.Keyring.Close(); tok.Close() }
	where = f.storePath
	if pg != "" {
		where, o.SharedPorts = "postgresql", true
		if f.pgInsecure {
			o.Logger.Warn("insecure PostgreSQL transport allowed: the store that authorizes every call may be reached without verified TLS; for development only")
		}
		st, err := store.OpenPostgres(ctx, pg, store.PostgresOptions{InsecureTransport: f.pgInsecure})
		if err != nil {
			closeKeys()
			return "", nil, command.Exit(command.ExitUnavailable, err)
		}
		o.Store = st // assigned only when non-nil: a nil pointer in the interface is not nil
	} else {
		st, err := store.OpenBolt(f.storePath)
		if err != nil {
			closeKeys()
			return "", nil, command.Exit(command.ExitUnavailable, err)
		}
		o.Store = st
	}
	return where, func() { o.Store.Close(); closeKeys() }, nil
}

// identityVerifier sets o.Identity to a verifier of pod and node tokens
// when keyd can reach the Kubernetes API (a kubeconfig, or in a cluster),
// and returns that API's configuration (nil without one).
func (f *flags) identityVerifier(ctx context.Context, o *service.Options) (*rest.Config, error) {
	if f.kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		if !o.InsecureLocalIdentity {
			o.Logger.Warn("no Kubernetes API access (--kubeconfig or in-cluster): pod identities cannot be verified and Issue will refuse them")
		}
		return nil, nil
	}
	cfg, err := kube.Config(f.kubeconfig)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, err)
	}
	rev, err := tokenreview.New(cfg)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, err)
	}
	io := f.identity
	io.NodeServiceAccount = f.nodeSA
	var reviewer identity.Reviewer = rev
	switch f.podIdentity {
	case "tokenreview":
	case "local", "local-with-fallback":
		lv, err := localtoken.New(ctx, cfg, f.local)
		if err != nil && f.podIdentity == "local" {
			return nil, command.Exit(command.ExitUnavailable, err)
		}
		if err != nil {
			o.Logger.Warn("local token verification unavailable; every token goes to TokenReview", "error", err)
			break
		}
		fb := localtoken.Fallback{Local: lv, Log: o.Logger}
		if f.podIdentity == "local-with-fallback" {
			fb.Remote = rev
		}
		// Local checks are cheap, and a cached success would outlive a
		// deleted pod by the cache's life.
		reviewer, io.CacheTTL = fb, -1
		o.PodGone = lv.PodGone // database logins of pods gone while no node told keyd
		o.Logger.Info("tokens are verified locally", "issuers", lv.Issuers(), "fallback", fb.Remote != nil)
	default:
		return nil, command.Exit(command.ExitUsage, fmt.Errorf("--pod-identity %q: want local, local-with-fallback or tokenreview", f.podIdentity))
	}
	o.Identity = identity.NewVerifier(reviewer, io)
	o.Logger.Info("pod and node identities are verified", "mode", f.podIdentity, "podAudience", io.PodAudience,
		"nodeAudience", io.NodeAudience, "nodeServiceAccount", f.nodeSA)
	return cfg, nil
}

// bundlePublisher returns the publisher of the CA bundle ConfigMap named
// by --ca-configmap, or nil when none is named.
func (f *flags) bundlePublisher(kubeCfg *rest.Config, log *slog.Logger) (*trustbundle.Publisher, error) {
	if f.caConfigMap == "" {
		return nil, nil
	}
	ns, name, ok := strings.Cut(f.caConfigMap, "/")
	if !ok || ns == "" || name == "" || kubeCfg == nil {
		return nil, command.Exit(command.ExitUsage, fmt.Errorf("--ca-configmap %q: want namespace/name, and Kubernetes API access", f.caConfigMap))
	}
	client, err := corev1client.NewForConfig(kubeCfg)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, err)
	}
	return &trustbundle.Publisher{Client: client, Namespace: ns, Name: name, Logger: log}, nil
}

// serveMetrics serves /metrics on addr until ctx ends. Metrics carry
// method names, result codes and counts only.
func serveMetrics(ctx context.Context, addr string, shared bool, reg *prometheus.Registry, log *slog.Logger) error {
	lis, err := service.Listen(addr, shared)
	if err != nil {
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", err)
		}
	}()
	log.Info("serving metrics", "address", lis.Addr().String())
	return nil
}
