package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podkey/podkey/pkg/identity"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/pkg/command"
	"github.com/podkey/podkey/pkg/keyd"
	"github.com/podkey/podkey/pkg/secmem"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/trustbundle"
	"github.com/podkey/podkey/pkg/version"
)

// NewKeydCommand builds the podkey-keyd daemon command.
func NewKeydCommand() *cobra.Command {
	var (
		hf          hsmFlags
		o           keyd.Options
		lf          command.LogFlags
		kubeconfig  string
		nodeSA      string
		io          identity.Options
		caConfigMap string
	)
	cmd := &cobra.Command{
		Use:     "podkey-keyd",
		Short:   "The podkey key service: mints per-pod credentials from an HSM",
		Version: version.Version,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.Logger, err = lf.Logger(cmd.ErrOrStderr()); err != nil {
				return err
			}
			if err := secmem.HardenProcess(); err != nil {
				o.Logger.Warn("could not disable core dumps", "error", err)
			}
			tuneKeydRuntime(o.Logger)
			if o.HSM, err = hf.config(); err != nil {
				return err
			}
			if o.InsecureLocalIdentity {
				o.Logger.Warn("insecure local identity mode: claimed pod identities are trusted on the local socket; for development only")
			}
			var kubeCfg *rest.Config
			if kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
				cfg, err := command.KubeConfig(kubeconfig)
				if err != nil {
					return exitError(ExitUsage, err)
				}
				kubeCfg = cfg
				rev, err := identity.NewKubeReviewer(cfg)
				if err != nil {
					return exitError(ExitUsage, err)
				}
				io.NodeServiceAccount = nodeSA
				o.Identity = identity.NewVerifier(rev, io)
				o.Logger.Info("pod and node identities are verified with TokenReview", "podAudience", io.PodAudience,
					"nodeAudience", io.NodeAudience, "nodeServiceAccount", nodeSA)
			} else if !o.InsecureLocalIdentity {
				o.Logger.Warn("no Kubernetes API access (--kubeconfig or in-cluster): pod identities cannot be verified and Issue will refuse them")
			}
			var pub *trustbundle.Publisher
			if caConfigMap != "" {
				ns, name, ok := strings.Cut(caConfigMap, "/")
				if !ok || ns == "" || name == "" || kubeCfg == nil {
					return exitError(ExitUsage, fmt.Errorf("--ca-configmap %q: want namespace/name, and Kubernetes API access", caConfigMap))
				}
				client, err := kubernetes.NewForConfig(kubeCfg)
				if err != nil {
					return exitError(ExitUsage, err)
				}
				pub = &trustbundle.Publisher{Client: client, Namespace: ns, Name: name, Logger: o.Logger}
			}
			srv, err := keyd.New(cmd.Context(), o)
			if err != nil {
				return exitError(ExitUnavailable, err)
			}
			defer srv.Close()
			if pub != nil {
				pub.Bundle = func() map[string]string {
					return map[string]string{trustbundle.KeyIntl: string(srv.CABundle(suite.Intl)), trustbundle.KeyGM: string(srv.CABundle(suite.GM))}
				}
				go pub.Run(cmd.Context())
			}
			o.Logger.Info("podkey-keyd started", "version", version.Version, "token", o.HSM.TokenLabel, "store", o.StorePath)
			if err := srv.Serve(cmd.Context()); err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			o.Logger.Info("podkey-keyd stopped")
			return nil
		},
	}
	f := cmd.Flags()
	hf.register(f)
	f.StringVar(&o.StorePath, "store", command.EnvOr("PODKEY_STORE", keyd.DefaultStorePath), "bbolt store file (env PODKEY_STORE)")
	f.StringVar(&o.Socket, "socket", command.EnvOr("PODKEY_SOCKET", keyd.DefaultSocket), "local unix socket for the CLI and node agents; empty disables")
	f.StringVar(&o.Listen, "listen", os.Getenv("PODKEY_LISTEN"), "TLS listen address, e.g. :7443; empty disables")
	f.StringSliceVar(&o.TLSNames, "tls-name", nil, "DNS name or IP in the serving certificate (repeatable; default localhost,127.0.0.1)")
	f.StringVar(&o.PolicyFile, "policy-file", os.Getenv("PODKEY_POLICY_FILE"), "YAML policy loaded at start, replacing the stored one")
	f.BoolVar(&o.InsecureLocalIdentity, "insecure-local-identity", false, "DEVELOPMENT ONLY: trust pod identities claimed on the local socket")
	f.StringVar(&o.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload certificates")
	f.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for TokenReview (default: in-cluster when available)")
	f.StringVar(&io.PodAudience, "pod-token-audience", "podkey", "audience of pod tokens")
	f.StringVar(&io.NodeAudience, "node-token-audience", "podkey-node", "audience of node agents' tokens")
	f.StringVar(&nodeSA, "node-service-account", "podkey/podkey-csi", "the node agent's service account, namespace/name")
	f.DurationVar(&io.CacheTTL, "token-review-cache-ttl", 10*time.Second, "reuse a successful TokenReview this long (keyed by a hash of the token); negative disables")
	f.StringVar(&caConfigMap, "ca-configmap", os.Getenv("PODKEY_CA_CONFIGMAP"), "publish the CA certificates in this ConfigMap, namespace/name (keys "+trustbundle.KeyIntl+", "+trustbundle.KeyGM+"), for clients to verify keyd")
	f.DurationVar(&o.NodeCertTTL, "node-cert-ttl", time.Hour, "life of node agents' client certificates")
	lf.Register(f)
	return cmd
}
