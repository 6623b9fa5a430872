package csidriver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/podkey/podkey/internal/node/revocation"
	"github.com/podkey/podkey/internal/node/volstate"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/pod"
)

// Driver implements the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	opts    Options
	state   volstate.Dir
	queue   *revocation.Queue
	metrics *metrics

	locks sync.Map // volume ID -> struct{}: one operation per volume at a time

	// renewals are the forced renewals in force, newest last; replaced
	// whole (copy on write) so republish reads them without a lock.
	renewals atomic.Pointer[[]*keydv1.Renewal]

	mu       sync.RWMutex
	volumes  map[string]*volstate.Volume
	reserved int64 // tmpfs bytes the volumes may hold, against MaxVolumeBytes
}

var (
	_ csi.IdentityServer = (*Driver)(nil)
	_ csi.NodeServer     = (*Driver)(nil)
)

// New rebuilds the driver's view from its state directory: volumes still
// mounted are served again; volumes whose tmpfs is gone (a reboot) are
// forgotten, since the kubelet publishes them anew.
func New(opts Options) (*Driver, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	d := &Driver{opts: opts, state: volstate.Dir{Path: filepath.Join(opts.StateDir, "volumes")}, volumes: map[string]*volstate.Volume{}}
	if err := os.MkdirAll(d.state.Path, 0o700); err != nil {
		return nil, fmt.Errorf("csidriver: state directory: %w", err)
	}
	var err error
	d.queue, err = revocation.Open(filepath.Join(opts.StateDir, "revocations"), d.deliverRevocation, opts.Logger)
	if err != nil {
		return nil, err
	}
	d.metrics = newMetrics(opts.Registerer, d)
	vols, err := d.state.LoadAll()
	if err != nil {
		return nil, err
	}
	for _, v := range vols {
		mounted, err := opts.Volumes.IsMounted(v.TargetPath)
		if err != nil || !mounted {
			// The tmpfs went away under us (a reboot): the kubelet publishes
			// the volume anew, with fresh credentials; what the volume held
			// is revoked, queued before the state goes. The cutoff is the
			// end of the second keyd last issued to it, in keyd's clock, so
			// neither a late delivery nor clock skew between this node and
			// keyd touches what the new publish obtains.
			if v.Writes > 0 {
				if err := d.queue.Enqueue(d.onNode(v.Pod), v.LastIssued().Add(time.Second-time.Nanosecond), nil); err != nil {
					return nil, fmt.Errorf("csidriver: queue the revocation of a vanished volume: %w", err)
				}
			}
			opts.Logger.Info("volume's tmpfs is gone: its credentials are revoked and the volume forgotten", "volumeID", v.VolumeID, "pod", v.Pod.String())
			_ = d.state.Remove(v.VolumeID)
			continue
		}
		if v.Reserved == 0 {
			v.Reserved = opts.SizeLimit // recorded before reservations were
		}
		d.volumes[v.VolumeID] = v
		d.reserved += v.Reserved
	}
	opts.Logger.Info("volume state loaded", "volumes", len(d.volumes), "queuedRevocations", d.queue.Len())
	return d, nil
}

// Run delivers queued revocations, and follows forced renewals when
// Options.Renewals is set, until ctx ends.
func (d *Driver) Run(ctx context.Context) {
	if d.opts.Renewals != nil {
		go d.followRenewals(ctx)
	}
	d.queue.Run(ctx)
}

// Volumes is the number of live volumes.
func (d *Driver) Volumes() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.volumes)
}

// ReservedBytes is what the live volumes may hold at their fullest.
func (d *Driver) ReservedBytes() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.reserved
}

// QueuedRevocations is the number of undelivered revocations.
func (d *Driver) QueuedRevocations() int { return d.queue.Len() }

// Lock takes the locks of a volume and its target path, or fails with
// Aborted (the kubelet retries) when an operation holds either.
func (d *Driver) Lock(volumeID, target string) (func(), error) {
	keys := []string{"volume " + volumeID, "target path " + target}
	for i, k := range keys {
		if _, busy := d.locks.LoadOrStore(k, struct{}{}); busy {
			for _, held := range keys[:i] {
				d.locks.Delete(held)
			}
			return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", k)
		}
	}
	return func() {
		for _, k := range keys {
			d.locks.Delete(k)
		}
	}, nil
}

func (d *Driver) volume(id string) *volstate.Volume {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.volumes[id]
}

// volumeAt is the volume published at target, if any.
func (d *Driver) volumeAt(target string) *volstate.Volume {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, v := range d.volumes {
		if v.TargetPath == target {
			return v
		}
	}
	return nil
}

func (d *Driver) setVolume(v *volstate.Volume) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v == nil {
		return
	}
	d.volumes[v.VolumeID] = v
}

func (d *Driver) dropVolume(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v := d.volumes[id]; v != nil {
		d.reserved -= v.Reserved
	}
	delete(d.volumes, id)
}

// reserve counts n more tmpfs bytes against the node's bound, or refuses
// with ResourceExhausted (the kubelet retries; volumes of deleted pods free
// their share).
func (d *Driver) reserve(n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reserved+n > d.opts.MaxVolumeBytes {
		return status.Errorf(codes.ResourceExhausted,
			"this node's podkey volumes would hold up to %d bytes with this one (%d), above the node's bound of %d (podkey-csi --max-volume-bytes); tmpfs pages count against podkey-csi's memory limit",
			d.reserved+n, n, d.opts.MaxVolumeBytes)
	}
	d.reserved += n
	return nil
}

// release returns n reserved bytes of a publish that did not complete.
func (d *Driver) release(n int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reserved -= n
}

// deliverRevocation tells keyd the pod's volume is gone: what the pod
// obtained until issuedBefore (keyd's clock; zero: until keyd takes it) is
// revoked. keyd's refusal (it did not serve the pod through this node) is
// final.
func (d *Driver) deliverRevocation(ctx context.Context, p pod.Identity, issuedBefore time.Time) error {
	req := &keydv1.RevokeRequest{Pod: keydv1.NewPodIdentity(p)}
	if !issuedBefore.IsZero() {
		req.IssuedBefore = timestamppb.New(issuedBefore)
	}
	_, err := d.opts.Revoker.Revoke(ctx, req)
	switch status.Code(err) {
	case codes.PermissionDenied, codes.InvalidArgument:
		return fmt.Errorf("%w: %s", revocation.ErrRefused, status.Convert(err).Message())
	}
	return err
}

// onNode is p as running on this node.
func (d *Driver) onNode(p pod.Identity) pod.Identity {
	p.Node = d.opts.NodeID
	return p
}

// Identity service.

func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.opts.DriverName, VendorVersion: d.opts.Version}, nil
}

func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil // node service only
}

func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// Node service: capabilities and info.

func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{
		Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP}},
	}}}, nil
}

func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.opts.NodeID}, nil
}
