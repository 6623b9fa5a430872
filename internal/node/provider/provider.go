// Package provider serves the upstream secrets-store CSI driver's provider
// API (v1alpha1: Version and Mount) on a podkey node, so that a
// SecretProviderClass with provider: podkey works under that driver too.
// It obtains credentials through the node's CSI driver (package
// csidriver), with the same class rules, target rules, keyd connection,
// locks, renewal orders and revocation queue as podkey's own volumes.
package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/volstate"
	"github.com/podkey/podkey/internal/node/volume"
	"github.com/podkey/podkey/internal/version"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/podfiles"
)

// Node is what a Provider uses of the node's CSI driver
// (*csidriver.Driver is one).
type Node interface {
	// Lock takes the locks of a volume and its target path, or fails
	// with Aborted when an operation holds either.
	Lock(volumeID, target string) (unlock func(), err error)
	// ValidTarget applies NodePublishVolume's rule to a target path.
	ValidTarget(target string) error
	// ClassObjects reads a SecretProviderClass and returns its objects.
	ClassObjects(ctx context.Context, namespace, class string) ([]object.Spec, error)
	// Fetch obtains and renders a pod's credentials with its token.
	Fetch(ctx context.Context, p pod.Identity, token string, specs []object.Spec) (map[string]volume.File, []podfiles.Object, error)
	// RenewalOrdered reports a forced renewal of what was issued then.
	RenewalOrdered(p pod.Identity, issued time.Time) bool
	// Revoke revokes what a gone pod obtained, or queues the revocation.
	Revoke(ctx context.Context, volumeID string, p pod.Identity) error
	// ObservePublish counts a publish in the node's metrics.
	ObservePublish(err error, start time.Time)
}

var _ Node = (*csidriver.Driver)(nil)

// Options configure a Provider. Every field says its default.
type Options struct {
	// Node is the node's CSI driver. Required.
	Node Node
	// StateDir keeps what was obtained for which pod (no secret), in its
	// provider subdirectory. Required: the CSI driver's state directory.
	StateDir string
	// TokenAudience is the audience of the pod token forwarded to keyd.
	// Default "podkey".
	TokenAudience string
	// RotationPoll is how often the upstream driver's rotation calls
	// Mount again (its --rotation-poll-interval) as its operator
	// configured it: the only occasion that driver gives a provider to
	// renew, which it does not announce to providers. Default 0: its
	// rotation is off (the upstream chart's default).
	RotationPoll time.Duration
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Provider serves the upstream secrets-store CSI driver's provider API
// with its Node's identity, keyd connection, class source and renewal
// orders. That driver mounts the tmpfs and writes the files Mount
// returns; with its rotation on it calls Mount again every poll interval
// with the current object versions, and Provider
// mints again only when renewal is due (or ordered): otherwise it answers
// with the current object versions and no files, and the driver leaves the
// files as they are. Object versions name the issue time and the write
// counter, never anything derived from a secret.
//
// What the upstream path cannot do, against podkey-csi: it has no Unmount
// call to providers (revocation on deletion needs a pod watch), the files
// travel through the driver's memory and writer (podkey cannot zero them
// or set their group), and it gives no file to zero before unmount.
type Provider struct {
	opts  Options
	node  Node
	state volstate.Dir // <state dir>/provider: what was obtained for which pod, no secret

	mu     sync.Mutex
	mounts map[string]*volstate.Volume // by target path
}

var _ v1alpha1.CSIDriverProviderServer = (*Provider)(nil)

// New serves the provider API on o.Node, with what it obtained before a
// restart read back from its state directory.
func New(o Options) (*Provider, error) {
	switch {
	case o.Node == nil:
		return nil, errors.New("provider: the node's CSI driver is required")
	case o.StateDir == "":
		return nil, errors.New("provider: state directory is required")
	}
	if o.TokenAudience == "" {
		o.TokenAudience = "podkey"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	p := &Provider{opts: o, node: o.Node, state: volstate.Dir{Path: filepath.Join(o.StateDir, "provider")}, mounts: map[string]*volstate.Volume{}}
	if err := os.MkdirAll(p.state.Path, 0o700); err != nil {
		return nil, fmt.Errorf("provider: state: %w", err)
	}
	vs, err := p.state.LoadAll()
	if err != nil {
		return nil, fmt.Errorf("provider: state: %w", err)
	}
	for _, v := range vs {
		p.mounts[v.TargetPath] = v
	}
	return p, nil
}

// PodGone revokes everything this node obtained through the provider for
// a deleted pod (the upstream driver tells providers nothing when a pod
// goes away: a pod watch calls this) and forgets its mounts.
func (p *Provider) PodGone(ctx context.Context, uid string) error {
	p.mu.Lock()
	var gone []*volstate.Volume
	for target, v := range p.mounts {
		if v.Pod.UID == uid {
			gone = append(gone, v)
			delete(p.mounts, target)
		}
	}
	p.mu.Unlock()
	if len(gone) == 0 {
		return nil
	}
	// One revocation covers every credential of the pod.
	if err := p.node.Revoke(ctx, gone[0].VolumeID, gone[0].Pod); err != nil {
		return err
	}
	for _, v := range gone {
		if err := p.state.Remove(v.VolumeID); err != nil {
			p.opts.Logger.Warn("provider state not removed", "pod", v.Pod.String(), "error", err)
		}
	}
	p.opts.Logger.Info("revoked the credentials of a deleted pod", "pod", gone[0].Pod.String(), "podUID", uid)
	return nil
}

// Reconcile revokes for every pod this node obtained credentials for
// before listedAt that is not among live (the UIDs of the pods on this
// node as listed from listedAt on): pods deleted while the provider was
// not watching. A pod served after listedAt may be missing from the list
// and is left to the watch.
func (p *Provider) Reconcile(ctx context.Context, live map[string]bool, listedAt time.Time) error {
	p.mu.Lock()
	var gone []string
	for _, v := range p.mounts {
		if !live[v.Pod.UID] && v.LastIssued().Before(listedAt) {
			gone = append(gone, v.Pod.UID)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, uid := range gone {
		errs = append(errs, p.PodGone(ctx, uid))
	}
	return errors.Join(errs...)
}

// Version implements v1alpha1.CSIDriverProviderServer.
func (p *Provider) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: "podkey", RuntimeVersion: version.Version}, nil
}

// Mount implements v1alpha1.CSIDriverProviderServer.
func (p *Provider) Mount(ctx context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	start := p.opts.Now()
	var attrs map[string]string
	if err := json.Unmarshal([]byte(req.GetAttributes()), &attrs); err != nil {
		return nil, status.Error(codes.InvalidArgument, "mount attributes are not a JSON object of strings")
	}
	target := req.GetTargetPath()
	if err := p.node.ValidTarget(target); err != nil {
		return nil, err
	}
	if attrs[csidriver.AttrClass] == "" {
		// The driver's rotation (v1.5.4) sends the class's parameters and
		// the pod's fields, not the volume's attributes: the class is the
		// one this target was mounted with, for the same pod.
		if cur := p.mounted(target); cur != nil && cur.Pod.UID == attrs[csidriver.AttrPodUID] {
			attrs[csidriver.AttrClass] = cur.Class
		}
	}
	class, id, err := csidriver.PodAttributes(attrs)
	if err != nil {
		return nil, err
	}
	aud := p.opts.TokenAudience
	token, err := csidriver.TokenFor(attrs[csidriver.AttrTokens], aud, func(format string, a ...any) error {
		return status.Errorf(codes.FailedPrecondition, format+" (the secrets-store driver's CSIDriver, secrets-store.csi.k8s.io, needs tokenRequests: [{audience: %s}])",
			append(a, aud)...)
	})
	if err != nil {
		return nil, err
	}
	volumeID := "provider " + target
	unlock, err := p.node.Lock(volumeID, target)
	if err != nil {
		return nil, err
	}
	defer unlock()

	specs, err := p.node.ClassObjects(ctx, id.Namespace, class)
	if err != nil {
		return nil, err
	}
	if err := p.checkRotation(id.Namespace, class, specs); err != nil {
		return nil, err
	}
	cur := p.mounted(target)
	if cur != nil && cur.Pod == id && sameVersions(req.GetCurrentObjectVersion(), objectVersions(cur)) &&
		p.opts.Now().Before(cur.RenewAt()) && !p.node.RenewalOrdered(cur.Pod, cur.LastIssued()) && len(cur.Missing()) == 0 {
		return &v1alpha1.MountResponse{ObjectVersion: objectVersions(cur)}, nil
	}
	files, issued, err := p.node.Fetch(ctx, id, token, specs)
	if err != nil {
		p.node.ObservePublish(err, start)
		return nil, err
	}
	next := &volstate.Volume{Version: 1, VolumeID: volumeID, TargetPath: target, Class: class, Pod: id, GID: -1, Writes: 1, Objects: issued}
	if cur != nil && cur.Pod == id {
		next.Writes = cur.Writes + 1
	}
	// Recorded before the files leave: a pod deleted from now on is revoked.
	if err := p.state.Save(next); err != nil {
		volume.Zero(files)
		return nil, status.Errorf(codes.Internal, "saving provider state: %v", err)
	}
	p.mu.Lock()
	p.mounts[target] = next
	p.mu.Unlock()
	resp := &v1alpha1.MountResponse{ObjectVersion: objectVersions(next)}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		resp.Files = append(resp.Files, &v1alpha1.File{Path: name, Mode: int32(files[name].Mode.Perm()), Contents: files[name].Data})
	}
	p.node.ObservePublish(nil, start)
	p.opts.Logger.Info("provider mount served", "pod", id.String(), "objects", len(issued), "generation", next.Writes, "renewAt", next.RenewAt())
	return resp, nil
}

// checkRotation refuses a class whose credentials would expire in the pod
// before the upstream driver asks again: a credential is renewed in the
// last third of its life (object.RenewalWindow), and the driver's rotation
// is the only renewal this path has.
func (p *Provider) checkRotation(ns, class string, specs []object.Spec) error {
	for _, s := range specs {
		w := s.RenewalWindow()
		switch {
		case p.opts.RotationPoll <= 0:
			return status.Errorf(codes.FailedPrecondition,
				"SecretProviderClass %s/%s: object %q expires %s after issue, but the secrets-store driver's rotation is off, so it would expire in the pod: enable the driver's rotation (--enable-secret-rotation, --rotation-poll-interval under %s) and give podkey-csi the same interval (--secrets-store-rotation-poll-interval; chart csi.secretsStoreRotationPollInterval), or mount the class with podkey's own driver, csi.podkey.io",
				ns, class, s.Name, s.TTL, w)
		case p.opts.RotationPoll >= w:
			return status.Errorf(codes.FailedPrecondition,
				"SecretProviderClass %s/%s: object %q expires %s after issue and must be renewed within its last %s, but the secrets-store driver's rotation polls every %s: give it a ttl of at least %s, or poll more often (--rotation-poll-interval; tell podkey-csi with --secrets-store-rotation-poll-interval)",
				ns, class, s.Name, s.TTL, w, p.opts.RotationPoll, minTTLFor(p.opts.RotationPoll))
		}
	}
	return nil
}

// minTTLFor is the shortest ttl, to the minute, whose renewal window is
// longer than a poll interval.
func minTTLFor(poll time.Duration) time.Duration {
	ttl := time.Duration(float64(poll) / (1 - object.RenewFraction))
	return ttl.Truncate(time.Minute) + time.Minute
}

// mounted is what this provider last served for target, or nil.
func (p *Provider) mounted(target string) *volstate.Volume {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mounts[target]
}

// Register adds the provider API to a gRPC server (csidriver's ServeAPI
// serves it on the upstream driver's provider socket).
func (p *Provider) Register(g *grpc.Server) { v1alpha1.RegisterCSIDriverProviderServer(g, p) }

// Pods are the pods this provider obtained credentials for.
func (p *Provider) Pods() []pod.Identity {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []pod.Identity
	for _, v := range p.mounts {
		out = append(out, v.Pod)
	}
	return out
}

// objectVersions names each object's current credential: the write
// counter and the issue time, nothing derived from a secret.
func objectVersions(v *volstate.Volume) []*v1alpha1.ObjectVersion {
	out := make([]*v1alpha1.ObjectVersion, len(v.Objects))
	for i, o := range v.Objects {
		out[i] = &v1alpha1.ObjectVersion{Id: o.Name, Version: fmt.Sprintf("%d-%d", v.Writes, o.IssuedAt.UnixNano())}
	}
	return out
}

func sameVersions(a, b []*v1alpha1.ObjectVersion) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]string{}
	for _, o := range a {
		m[o.GetId()] = o.GetVersion()
	}
	for _, o := range b {
		if v, ok := m[o.GetId()]; !ok || v != o.GetVersion() {
			return false
		}
	}
	return true
}
