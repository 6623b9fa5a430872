// Package csidriver is podkey's CSI node plugin: the Identity and Node
// services for ephemeral inline volumes. A publish reads the pod's
// SecretProviderClass, asks keyd for every object in one call, mounts a
// tmpfs and writes the credentials atomically; a republish renews them when
// due; an unpublish zeroes, unmounts and revokes. State kept on the node
// describes volumes and never holds a secret or a token.
package csidriver

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/podkey/podkey/internal/node/runas"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// DriverName is the CSI driver name pods refer to.
const DriverName = "csi.podkey.io"

// DefaultMaxVolumeBytes is the default bound on a node's volume bytes:
// several hundred volumes of a usual class (about 200 KiB each at their
// fullest), within the chart's memory limit with podkey-csi's own needs.
const DefaultMaxVolumeBytes = 64 << 20

// DefaultPodsDir is the kubelet's pods directory under its default root.
const DefaultPodsDir = "/var/lib/kubelet/pods"

// Defaults of Options.KeydTimeout and Options.OverloadWait.
const (
	DefaultKeydTimeout  = 10 * time.Second
	DefaultOverloadWait = 90 * time.Second
)

// Issuer obtains a pod's credentials: keyd's Issue call
// (keydv1.KeydClient is one).
type Issuer interface {
	Issue(ctx context.Context, req *keydv1.IssueRequest, opts ...grpc.CallOption) (*keydv1.IssueResponse, error)
}

// Revoker revokes a pod's credentials: keyd's Revoke call
// (keydv1.KeydClient is one).
type Revoker interface {
	Revoke(ctx context.Context, req *keydv1.RevokeRequest, opts ...grpc.CallOption) (*keydv1.RevokeResponse, error)
}

// Renewals lists an operator's forced renewals: keyd's Renewals call
// (keydv1.KeydClient is one).
type Renewals interface {
	Renewals(ctx context.Context, req *keydv1.RenewalsRequest, opts ...grpc.CallOption) (*keydv1.RenewalsResponse, error)
}

// PodSecurity reads a pod's security contexts (*runas.API is one).
type PodSecurity interface {
	Pod(ctx context.Context, namespace, name string) (runas.Pod, error)
}

// Volumes mounts a volume's size-limited tmpfs and tears it down (zeroing
// its files first); *volume.Mounter is one.
type Volumes interface {
	Mount(target string, sizeLimit int64, gid int) error
	Teardown(target string) error
	IsMounted(target string) (bool, error)
}

// Options configure a Driver. Every field says its default.
type Options struct {
	// DriverName. Default DriverName.
	DriverName string
	// NodeID is this node's name (the kubelet's node name). Required.
	NodeID string
	// StateDir holds volume state and the revocation queue (no secrets).
	// Required.
	StateDir string
	// PodsDir is the kubelet's pods directory: every target path must lie
	// below it, reached without a symbolic link. Default DefaultPodsDir.
	PodsDir string
	// Issuer obtains a pod's credentials from keyd. Required.
	Issuer Issuer
	// Revoker tells keyd that a pod's volume is gone. Required.
	Revoker Revoker
	// Pods reads what a pod runs as, to check the owners its class names
	// (object.OwnerRule). Default none: a class naming an owner is refused.
	Pods PodSecurity
	// Renewals, when set, is followed every RenewalPoll: a volume whose
	// pod a forced renewal covers is renewed at its next republish.
	// Default none.
	Renewals Renewals
	// RenewalPoll is how often Renewals is asked for new orders. Default 15s.
	RenewalPoll time.Duration
	// Classes finds SecretProviderClasses. Required.
	Classes spc.Source
	// Volumes mounts and tears down volumes' tmpfs. Default: the host's
	// mount(8), through volume.NewMounter.
	Volumes Volumes
	// SizeLimit bounds each volume's tmpfs. Default volume.DefaultSizeLimit.
	SizeLimit int64
	// MaxVolumeBytes bounds the tmpfs bytes all volumes on the node may
	// hold at their fullest. tmpfs pages are charged to the memory cgroup
	// of the process that writes them, this plugin's, so its memory limit
	// must cover them. Default DefaultMaxVolumeBytes.
	MaxVolumeBytes int64
	// TokenAudience is the audience of the pod token forwarded to keyd.
	// Default "podkey".
	TokenAudience string
	// KeydTimeout bounds one keyd call. Default 10s.
	KeydTimeout time.Duration
	// OverloadWait bounds how long a publish waits out keyd's overload
	// refusals before it returns ResourceExhausted to the kubelet (never
	// past the kubelet's own deadline). Default 90s.
	OverloadWait time.Duration
	// Registerer receives metrics. Default: a new registry (see Metrics).
	Registerer prometheus.Registerer
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Version reported by GetPluginInfo. Default "dev".
	Version string
}

func (o *Options) setDefaults() error {
	switch {
	case o.NodeID == "":
		return errors.New("csidriver: node ID is required")
	case o.StateDir == "":
		return errors.New("csidriver: state directory is required")
	case o.Issuer == nil || o.Revoker == nil:
		return errors.New("csidriver: a keyd issuer and revoker are required")
	case o.Classes == nil:
		return errors.New("csidriver: SecretProviderClass source is required")
	}
	if o.DriverName == "" {
		o.DriverName = DriverName
	}
	if o.PodsDir == "" {
		o.PodsDir = DefaultPodsDir
	}
	o.PodsDir = filepath.Clean(o.PodsDir)
	if o.Volumes == nil {
		o.Volumes = volume.NewMounter(nil)
	}
	if o.SizeLimit == 0 {
		o.SizeLimit = volume.DefaultSizeLimit
	}
	if o.MaxVolumeBytes == 0 {
		o.MaxVolumeBytes = DefaultMaxVolumeBytes
	}
	if o.TokenAudience == "" {
		o.TokenAudience = "podkey"
	}
	if o.KeydTimeout == 0 {
		o.KeydTimeout = DefaultKeydTimeout
	}
	if o.RenewalPoll == 0 {
		o.RenewalPoll = 15 * time.Second
	}
	if o.OverloadWait == 0 {
		o.OverloadWait = DefaultOverloadWait
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	return nil
}
