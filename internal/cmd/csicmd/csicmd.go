// Package csicmd is the podkey-csi command: its flags, and the wiring of
// the CSI node service (package csidriver) to the keyd connection, the
// SecretProviderClass source, kubelet registration, and the metrics and
// health endpoint.
package csicmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/host/kube"
	"github.com/podkey/podkey/internal/node/podwatch"
	"github.com/podkey/podkey/internal/node/provider"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/imagekeys"
	"github.com/podkey/podkey/internal/node/registration"
	"github.com/podkey/podkey/internal/node/runas"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/version"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

type csiFlags struct {
	o                             csidriver.Options
	endpoint, regDir, regEndpoint string
	kubeconfig, classDir          string
	objectOwners                  bool
	size, maxVolumeBytes          string
	metricsAddr                   string
	keyd                          keydclient.Options
	nodeToken                     string
	mode, providerSocket          string
	rotationPoll                  time.Duration
	keyproviderSocket             string
	imageKeyCacheTTL              time.Duration
	lf                            command.LogFlags
}

// Main runs podkey-csi and returns its exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	return command.Run(NewCommand(), args, stdout, stderr)
}

// NewCommand builds the podkey-csi command.
func NewCommand() *cobra.Command {
	var f csiFlags
	cmd := &cobra.Command{
		Use:     "podkey-csi",
		Short:   "podkey's CSI node plugin: per-pod credentials on tmpfs",
		Version: version.Version,
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), cmd, &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.o.NodeID, "node-name", os.Getenv("NODE_NAME"), "this node's name (env NODE_NAME)")
	fl.StringVar(&f.o.DriverName, "driver-name", csidriver.DriverName, "CSI driver name")
	fl.StringVar(&f.endpoint, "endpoint", "/var/lib/kubelet/plugins/csi.podkey.io/csi.sock", "CSI unix socket")
	fl.StringVar(&f.o.StateDir, "state-dir", "/var/lib/podkey-csi", "node-local volume state and revocation queue (no secrets)")
	fl.StringVar(&f.o.PodsDir, "pods-dir", csidriver.DefaultPodsDir, "the kubelet's pods directory (<kubelet root>/pods); every target path must lie below it, reached without a symbolic link")
	fl.StringVar(&f.regDir, "registration-dir", registration.DefaultDir, "kubelet plugin registration directory; empty when the node-driver-registrar sidecar registers the driver")
	fl.StringVar(&f.regEndpoint, "registration-endpoint", "", "CSI socket path as the kubelet sees it (default: --endpoint)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for reading SecretProviderClasses (default: in-cluster)")
	fl.StringVar(&f.classDir, "secret-provider-class-dir", "", "read SecretProviderClasses from DIR/<namespace>/<name>.yaml instead of the Kubernetes API")
	fl.BoolVar(&f.objectOwners, "object-owners", false, "allow classes to name file owners, checked against each such pod's security context (needs get on pods)")
	fl.StringVar(&f.size, "tmpfs-size", "4Mi", "size limit of each volume's tmpfs")
	fl.StringVar(&f.maxVolumeBytes, "max-volume-bytes", "64Mi", "bound on the tmpfs bytes all volumes on this node may hold at their fullest; tmpfs pages count against podkey-csi's memory limit, which must exceed this by podkey-csi's own needs (about 64Mi)")
	fl.StringVar(&f.o.TokenAudience, "token-audience", "podkey", "audience of the pod token forwarded to keyd")
	fl.StringVar(&f.metricsAddr, "metrics-addr", ":9809", "address for /metrics and /healthz; empty disables")
	fl.StringVar(&f.keyd.Socket, "keyd-socket", "", "keyd's unix socket on this host")
	fl.StringVar(&f.keyd.Address, "keyd-addr", "", "keyd's TLS address host:port; several, comma-separated, or dns:///name:port for replicas")
	fl.StringVar(&f.keyd.ServerName, "keyd-server-name", "", "name checked in keyd's serving certificate (default: the host of the first --keyd-addr)")
	fl.StringVar(&f.keyd.CAFile, "keyd-ca-file", "", "CA bundle verifying keyd")
	fl.StringVar(&f.mode, "mode", "csi", "csi: serve podkey's CSI driver (csi.podkey.io); provider: serve the upstream secrets-store CSI driver's provider API on --provider-socket instead; both")
	fl.StringVar(&f.providerSocket, "provider-socket", "/var/run/secrets-store-csi-providers/podkey.sock", "provider socket, in the upstream driver's providers directory (--mode provider or both)")
	fl.DurationVar(&f.rotationPoll, "secrets-store-rotation-poll-interval", 0, "the upstream secrets-store driver's rotation poll interval as configured on it (--enable-secret-rotation, --rotation-poll-interval); 0: its rotation is off, and classes whose credentials would expire in the pod are refused (--mode provider or both)")
	fl.StringVar(&f.keyproviderSocket, "keyprovider-socket", "", "serve ocicrypt's keyprovider protocol here for containerd's image decoder (podkey-encrypted images); empty: off")
	fl.DurationVar(&f.imageKeyCacheTTL, "image-key-cache-ttl", imagekeys.DefaultCacheTTL, "how long an image's unwrapped content key serves its other layers (locked memory, zeroed after); 0: ask keyd for every layer")
	fl.StringVar(&f.nodeToken, "node-token-file", "/var/run/secrets/podkey/token", "the node agent's bound service-account token (audience podkey-node), used with --keyd-addr to obtain a node client certificate")
	f.lf.Register(fl)
	return cmd
}

// run checks the flags, connects to keyd and the SecretProviderClass
// source, and serves the CSI socket (and registration and metrics) until
// ctx ends.
func run(ctx context.Context, cmd *cobra.Command, f *csiFlags) error {
	log, err := f.lf.Logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	conn, nodeRun, closeConn, err := f.dialKeyd(ctx, log, reg)
	if err != nil {
		return err
	}
	defer closeConn()
	if f.o.Classes, err = f.classes(ctx); err != nil {
		return err
	}
	if f.o.Pods, err = f.pods(); err != nil {
		return err
	}
	keyd := keydv1.NewKeydClient(conn)
	f.o.Issuer, f.o.Revoker, f.o.Renewals = keyd, keyd, keyd
	f.o.Logger, f.o.Registerer, f.o.Version = log, reg, version.Version
	d, err := csidriver.New(f.o)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { d.Run(gctx); return nil })
	if nodeRun != nil {
		g.Go(func() error { nodeRun(gctx); return nil })
	}
	serveCSI := f.mode != "provider"
	if f.mode != "csi" {
		p, err := provider.New(provider.Options{Node: d, StateDir: f.o.StateDir, TokenAudience: f.o.TokenAudience,
			RotationPoll: f.rotationPoll, Logger: log})
		if err != nil {
			return err
		}
		g.Go(func() error { return d.ServeAPI(gctx, f.providerSocket, "the secrets-store provider API", p.Register) })
		if err := f.watchPods(gctx, g, p, log); err != nil {
			return err
		}
	}
	if serveCSI {
		g.Go(func() error { return d.Serve(gctx, f.endpoint) })
	}
	if f.keyproviderSocket != "" {
		kp := imagekeys.New(imagekeys.Options{Keyd: keyd, NodeName: f.o.NodeID, CacheTTL: f.imageKeyCacheTTL, Logger: log})
		g.Go(func() error { return kp.Serve(gctx, f.keyproviderSocket) })
	}
	var registered func() (bool, string)
	if serveCSI && f.regDir != "" {
		ep := f.regEndpoint
		if ep == "" {
			ep = f.endpoint
		}
		rs := registration.New(f.o.DriverName, ep, log)
		registered = rs.Registered
		g.Go(func() error { return rs.Serve(gctx, f.regDir) })
	}
	if f.metricsAddr != "" {
		health := f.endpoint
		if !serveCSI {
			health = f.providerSocket
		}
		g.Go(func() error { return serveMetrics(gctx, f.metricsAddr, reg, health, registered) })
	}
	log.Info("podkey-csi started", "version", version.Version, "node", f.o.NodeID, "mode", f.mode, "volumes", d.Volumes())
	err = g.Wait()
	if errors.Is(err, context.Canceled) || ctx.Err() != nil {
		err = nil
	}
	log.Info("podkey-csi stopped")
	return err
}

// check validates the flags that need more than their type, and sets the
// tmpfs size limits.
func (f *csiFlags) check() error {
	if f.o.NodeID == "" {
		return command.UsageError("--node-name (or NODE_NAME) is required")
	}
	q, err := resource.ParseQuantity(f.size)
	if err != nil || q.Value() < 64<<10 {
		return command.UsageError("--tmpfs-size %q: want a quantity of at least 64Ki", f.size)
	}
	f.o.SizeLimit = q.Value()
	max, err := resource.ParseQuantity(f.maxVolumeBytes)
	if err != nil || max.Value() < q.Value() {
		return command.UsageError("--max-volume-bytes %q: want a quantity of at least --tmpfs-size", f.maxVolumeBytes)
	}
	f.o.MaxVolumeBytes = max.Value()
	if f.mode != "csi" && f.mode != "provider" && f.mode != "both" {
		return command.UsageError("--mode %q: want csi, provider or both", f.mode)
	}
	if f.rotationPoll < 0 {
		return command.UsageError("--secrets-store-rotation-poll-interval %s: want 0 (rotation off) or more", f.rotationPoll)
	}
	if f.imageKeyCacheTTL < 0 {
		return command.UsageError("--image-key-cache-ttl %s: want 0 or more", f.imageKeyCacheTTL)
	}
	if f.keyd.Socket == "" && f.keyd.Address == "" {
		return command.UsageError("--keyd-socket or --keyd-addr is required")
	}
	return nil
}

// dialKeyd connects to keyd: over TCP with mTLS and a node certificate
// obtained with the node token (nodeRun renews it), or over the local
// socket.
func (f *csiFlags) dialKeyd(ctx context.Context, log *slog.Logger, reg prometheus.Registerer) (conn grpc.ClientConnInterface, nodeRun func(context.Context), closeConn func(), err error) {
	if f.keyd.Address != "" {
		nc, err := keydclient.DialNode(ctx, keydclient.NodeOptions{Address: f.keyd.Address, CAFile: f.keyd.CAFile,
			ServerName: f.keyd.ServerName, TokenFile: f.nodeToken, Logger: log})
		if err != nil {
			return nil, nil, nil, command.Exit(command.ExitUnavailable, err)
		}
		reg.MustRegister(keydclient.NodeCertificateExpiry(nc.Expiry))
		return nc, nc.Run, func() { nc.Close() }, nil
	}
	c, err := keydclient.Dial(f.keyd)
	if err != nil {
		return nil, nil, nil, command.UsageError("%v", err)
	}
	return c, nil, func() { c.Close() }, nil
}

// watchPods revokes what the provider obtained for each pod of this node
// that is deleted (the upstream driver tells providers nothing then), and
// at start for those deleted while podkey-csi was down. Without the
// Kubernetes API (classes from a directory) there is nothing to watch.
func (f *csiFlags) watchPods(ctx context.Context, g *errgroup.Group, p *provider.Provider, log *slog.Logger) error {
	if f.classDir != "" {
		log.Warn("no pod watch without the Kubernetes API: credentials of deleted pods expire but are not revoked")
		return nil
	}
	cfg, err := kube.Config(f.kubeconfig)
	if err != nil {
		return err
	}
	listedAt := time.Now()
	g.Go(func() error {
		return podwatch.Run(ctx, cfg, f.o.NodeID, 10*time.Minute, time.Minute, podwatch.Handlers{
			Synced: func(live map[string]bool) {
				if err := p.Reconcile(ctx, live, listedAt); err != nil {
					log.Error("revoking pods deleted while podkey-csi was down", "error", err)
				}
			},
			Deleted: func(uid string) {
				if err := p.PodGone(ctx, uid); err != nil {
					log.Error("revoking a deleted pod", "podUID", uid, "error", err)
				}
			},
		})
	})
	return nil
}

// pods reads pods' security contexts when classes may name owners.
func (f *csiFlags) pods() (csidriver.PodSecurity, error) {
	if !f.objectOwners {
		return nil, nil
	}
	if f.classDir != "" {
		return nil, command.Exit(command.ExitUsage, errors.New("--object-owners needs the Kubernetes API, not --secret-provider-class-dir"))
	}
	cfg, err := kube.Config(f.kubeconfig)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, err)
	}
	return runas.NewAPI(cfg)
}

// classes is the SecretProviderClass source: a directory when one is
// named, otherwise an informer on the Kubernetes API.
func (f *csiFlags) classes(ctx context.Context) (spc.Source, error) {
	if f.classDir != "" {
		return spc.Dir{Root: f.classDir}, nil
	}
	cfg, err := kube.Config(f.kubeconfig)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, fmt.Errorf("%w (or use --secret-provider-class-dir)", err))
	}
	inf, err := spc.NewInformer(ctx, cfg, 10*time.Minute, time.Minute)
	if err != nil {
		return nil, command.Exit(command.ExitUnavailable, err)
	}
	return inf, nil
}

// serveMetrics serves /metrics, /healthz and /readyz. The health check
// succeeds while the socket accepts connections; readiness also needs the
// kubelet to have registered the driver when podkey-csi registers itself
// (registered is nil when a node-driver-registrar sidecar does), so a pod
// scheduled once the DaemonSet is ready finds the driver.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, healthSocket string, registered func() (bool, string)) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	accepting := func(w http.ResponseWriter) bool {
		c, err := net.DialTimeout("unix", healthSocket, time.Second)
		if err != nil {
			http.Error(w, "socket not accepting connections", http.StatusServiceUnavailable)
			return false
		}
		c.Close()
		return true
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if accepting(w) {
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !accepting(w) {
			return
		}
		if registered != nil {
			if ok, why := registered(); !ok {
				msg := "not registered with the kubelet yet"
				if why != "" {
					msg = "the kubelet refused registration: " + why
				}
				http.Error(w, msg, http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
