package csidriver

import (
	"context"
	"errors"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/node/revocation"
	"github.com/podkey/podkey/internal/node/runas"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volstate"
	"github.com/podkey/podkey/internal/node/volume"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/podfiles"
)

// NodePublishVolume mounts and fills a volume, or, for a volume already
// published at the same target, renews its credentials when they are due
// (the CSIDriver sets requiresRepublish) and otherwise does nothing.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	start := d.opts.Now()
	p, err := parsePublish(req, d.opts.TokenAudience, d.opts.PodsDir)
	if err != nil {
		d.metrics.observePublish("invalid", start)
		return nil, err
	}
	unlock, err := d.Lock(p.volumeID, p.target)
	if err != nil {
		d.metrics.observePublish("busy", start)
		return nil, err
	}
	defer unlock()

	if v := d.volume(p.volumeID); v != nil {
		if err := sameVolume(v, p); err != nil {
			d.metrics.observePublish("invalid", start)
			return nil, err
		}
		err := d.republish(ctx, p, v)
		d.metrics.observePublish(resultOf(err), start)
		return &csi.NodePublishVolumeResponse{}, err
	}
	if other := d.volumeAt(p.target); other != nil {
		d.metrics.observePublish("invalid", start)
		return nil, status.Errorf(codes.FailedPrecondition, "target path %s already holds volume %s of pod %s; volume %s may not be published there",
			p.target, other.VolumeID, other.Pod.String(), p.volumeID)
	}
	v, err := d.publish(ctx, p)
	if err != nil {
		d.metrics.observePublish(resultOf(err), start)
		return nil, err
	}
	d.setVolume(v)
	d.metrics.observePublish("ok", start)
	d.opts.Logger.Info("volume published", "volumeID", p.volumeID, "pod", p.String(), "objects", len(v.Objects), "renewAt", v.RenewAt())
	return &csi.NodePublishVolumeResponse{}, nil
}

// sameVolume refuses a publish of a known volume that does not describe
// it: another target path, or another pod (a kubelet that confused two
// pods must not get one pod's credentials written for the other).
func sameVolume(v *volstate.Volume, p *publishRequest) error {
	if v.TargetPath != p.target {
		return status.Errorf(codes.AlreadyExists, "volume %s is published at another target path", p.volumeID)
	}
	if v.Pod != p.pod {
		return status.Errorf(codes.AlreadyExists, "volume %s is published for pod %s (uid %s), not pod %s (uid %s)",
			p.volumeID, v.Pod.String(), v.Pod.UID, p.pod.String(), p.pod.UID)
	}
	return nil
}

func resultOf(err error) string {
	if err == nil {
		return "ok"
	}
	return status.Code(err).String()
}

// objects reads the pod's class and returns its objects and what a volume
// of them can take at its fullest, refusing a class that could outgrow
// the volume's tmpfs.
func (d *Driver) objects(ctx context.Context, p *publishRequest) ([]object.Spec, int64, error) {
	specs, need, err := d.classObjects(ctx, p.pod.Namespace, p.class, true)
	if err != nil {
		return nil, 0, err
	}
	return specs, need, d.checkOwners(ctx, p.pod, specs)
}

// checkOwners refuses owners the pod's security context does not allow
// (object.OwnerRule), reading the pod only when its class names one.
func (d *Driver) checkOwners(ctx context.Context, p pod.Identity, specs []object.Spec) error {
	var named []object.Spec
	for _, sp := range specs {
		if sp.Owner != nil {
			named = append(named, sp)
		}
	}
	if len(named) == 0 {
		return nil
	}
	if d.opts.Pods == nil {
		return status.Errorf(codes.FailedPrecondition, "object %q names an owner, which this podkey-csi does not allow: it checks owners against the pod's security context only with --object-owners (chart: csi.objectOwners: true)", named[0].Name)
	}
	ra, err := d.opts.Pods.Pod(ctx, p.Namespace, p.Name)
	switch {
	case errors.Is(err, runas.ErrNotFound):
		return status.Errorf(codes.NotFound, "pod %s not found in the API server", p.String())
	case err != nil:
		return status.Errorf(codes.Unavailable, "%v", err)
	case ra.UID != p.UID:
		return status.Errorf(codes.FailedPrecondition, "pod %s in the API server has uid %s, not %s", p.String(), ra.UID, p.UID)
	}
	for _, sp := range named {
		if err := ra.Allows(sp.Owner); err != nil {
			return status.Errorf(codes.InvalidArgument, "object %q: %v (%s)", sp.Name, err, object.OwnerRule)
		}
	}
	return nil
}

// classObjects is objects; the tmpfs bound applies when ownTmpfs (the
// upstream driver sizes its own), and a class that syncs into Kubernetes
// Secrets (secretObjects: etcd) is refused either way.
func (d *Driver) classObjects(ctx context.Context, ns, name string, ownTmpfs bool) ([]object.Spec, int64, error) {
	class, err := d.opts.Classes.Get(ctx, ns, name)
	switch {
	case errors.Is(err, spc.ErrNotFound):
		return nil, 0, status.Errorf(codes.NotFound, "SecretProviderClass %s/%s not found", ns, name)
	case err != nil:
		return nil, 0, status.Errorf(codes.Unavailable, "reading SecretProviderClass %s/%s: %v", ns, name, err)
	}
	if len(class.Spec.SecretObjects) > 0 {
		return nil, 0, status.Errorf(codes.FailedPrecondition,
			"SecretProviderClass %s/%s has secretObjects, which sync into Kubernetes Secrets (etcd); podkey credentials never go there: remove spec.secretObjects",
			ns, name)
	}
	specs, err := spc.Objects(class)
	if err != nil {
		return nil, 0, status.Error(codes.InvalidArgument, err.Error())
	}
	need := twoGenerations(specs)
	if ownTmpfs && need > d.opts.SizeLimit {
		return nil, 0, status.Errorf(codes.ResourceExhausted,
			"SecretProviderClass %s/%s may need up to %d bytes for the two generations a renewal holds, more than the %d-byte tmpfs of each volume (podkey-csi --tmpfs-size)",
			ns, name, need, d.opts.SizeLimit)
	}
	return specs, need, nil
}

// Fetch asks keyd for every object of the pod in one call, with the pod's
// token, and renders the files (the caller zeroes them with volume.Zero).
// Certificate keys are generated here and never leave the node.
func (d *Driver) Fetch(ctx context.Context, p pod.Identity, token string, specs []object.Spec) (map[string]volume.File, []podfiles.Object, error) {
	req, keys, err := keydclient.IssueRequest(d.onNode(p), token, specs)
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "%v", err)
	}
	resp, err := d.issue(ctx, req)
	if err != nil {
		return nil, nil, keydError(err)
	}
	files, issued, err := render(specs, resp.Credentials, keys)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, nil, err
		}
		return nil, nil, status.Errorf(codes.Internal, "%v", err)
	}
	meta, err := metadataFile(p, issued, d.opts.Now())
	if err != nil {
		volume.Zero(files)
		return nil, nil, status.Errorf(codes.Internal, "%v", err)
	}
	files[volume.MetadataFile] = meta
	return files, issued, nil
}

// keydError passes keyd's refusal through with a message for the pod's
// owner; transport failures become Unavailable so the kubelet retries.
func keydError(err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.NotFound, codes.FailedPrecondition:
		return status.Errorf(st.Code(), "podkey-keyd refused: %s", st.Message())
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return status.Errorf(codes.Unavailable, "podkey-keyd is unreachable; retrying: %s", st.Message())
	case codes.ResourceExhausted:
		return status.Errorf(codes.ResourceExhausted, "podkey-keyd is busy; retrying: %s", st.Message())
	}
	return status.Errorf(codes.Internal, "podkey-keyd failed: %s", st.Message())
}

// Revoke revokes everything the volume's pod obtained on this node (the
// pod is gone), or queues the revocation when keyd cannot take it now.
func (d *Driver) Revoke(ctx context.Context, volumeID string, p pod.Identity) error {
	pod := d.onNode(p)
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := d.deliverRevocation(rctx, pod, time.Time{})
	cancel()
	switch {
	case errors.Is(err, revocation.ErrRefused):
		d.opts.Logger.Error("keyd refused the revocation; not queued", "volumeID", volumeID, "podUID", pod.UID, "error", err)
	case err != nil:
		if qerr := d.queue.Enqueue(pod, time.Time{}, err); qerr != nil {
			return status.Errorf(codes.Internal, "revocation could not be delivered or queued: %v", qerr)
		}
		d.opts.Logger.Warn("revocation queued", "volumeID", volumeID, "podUID", pod.UID, "error", status.Convert(err).Message())
	}
	return nil
}

// publish performs a first publish. Nothing is mounted until keyd has
// answered; any later failure unmounts and removes the target, so the
// kubelet's retry starts clean.
func (d *Driver) publish(ctx context.Context, p *publishRequest) (*volstate.Volume, error) {
	specs, need, err := d.objects(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := d.reserve(need); err != nil {
		return nil, err
	}
	files, issued, err := d.Fetch(ctx, p.pod, p.token, specs)
	if err != nil && allOptional(specs) && unreachable(err) {
		// Nothing the pod needs: it starts with the metadata alone, and
		// a republish fills the objects in once keyd answers.
		files, issued, err = d.nothingYet(p.pod, specs, status.Convert(err).Message())
	}
	if err != nil {
		d.release(need)
		return nil, err
	}
	defer volume.Zero(files)
	v := &volstate.Volume{Version: 1, VolumeID: p.volumeID, TargetPath: p.target, Class: p.class, Pod: p.pod, GID: p.gid, Writes: 1,
		Reserved: need, Objects: issued}
	rollback := func(cause error) error {
		if terr := d.opts.Volumes.Teardown(p.target); terr != nil {
			d.opts.Logger.Error("rollback of a failed publish failed", "volumeID", p.volumeID, "error", terr)
		}
		_ = d.state.Remove(p.volumeID)
		d.release(need)
		return cause
	}
	// The volume is recorded before its tmpfs exists: every tmpfs this
	// plugin mounts is one it knows, and only those it ever tears down. The
	// record says nothing is written yet, so a publish retried after a
	// crash writes the files instead of taking the volume as served.
	intent := *v
	intent.Writes, intent.Objects = 0, nil
	if err := d.state.SaveIntent(&intent); err != nil {
		return nil, rollback(status.Errorf(codes.Internal, "saving volume state: %v", err))
	}
	if err := d.opts.Volumes.Mount(p.target, d.opts.SizeLimit, p.gid); err != nil {
		return nil, rollback(status.Errorf(codes.Internal, "%v", err))
	}
	if err := volume.Write(p.target, files, p.gid); err != nil {
		code := codes.Internal
		if errors.Is(err, volume.ErrBadPayload) {
			code = codes.InvalidArgument
		}
		return nil, rollback(status.Errorf(code, "writing credentials: %v", err))
	}
	if err := d.state.Save(v); err != nil {
		return nil, rollback(status.Errorf(codes.Internal, "saving volume state: %v", err))
	}
	return v, nil
}

// republish renews the volume's credentials when the earliest renewal
// point has passed or an operator forced a renewal of its pod; otherwise
// it is a no-op. If renewal fails while the
// current credentials are still valid, the volume keeps them and the next
// republish tries again.
func (d *Driver) republish(ctx context.Context, p *publishRequest, v *volstate.Volume) error {
	now := d.opts.Now()
	if now.Before(v.RenewAt()) && !d.RenewalOrdered(v.Pod, v.LastIssued()) {
		if len(v.Missing()) > 0 {
			d.fill(ctx, p, v)
		}
		return nil
	}
	issued, err := d.renew(ctx, p, v)
	if err != nil {
		d.metrics.rotations.WithLabelValues(resultOf(err)).Inc()
		if now.Before(v.Expiry()) || v.Expiry().IsZero() { // valid, or only optional objects that never came
			d.opts.Logger.Warn("renewal failed; current credentials remain valid", "volumeID", v.VolumeID,
				"pod", p.String(), "expiry", v.Expiry(), "error", status.Convert(err).Message())
			return nil
		}
		return err
	}
	next := *v
	next.Writes++
	next.Objects = issued
	if serr := d.state.Save(&next); serr != nil {
		d.opts.Logger.Error("volume state not saved after renewal", "volumeID", v.VolumeID, "error", serr)
	}
	d.setVolume(&next)
	d.metrics.rotations.WithLabelValues("ok").Inc()
	d.opts.Logger.Info("credentials renewed", "volumeID", v.VolumeID, "pod", p.String(), "generation", next.Writes, "renewAt", next.RenewAt())
	return nil
}

// renew fetches the volume's objects anew and writes them as its next
// generation.
func (d *Driver) renew(ctx context.Context, p *publishRequest, v *volstate.Volume) ([]podfiles.Object, error) {
	specs, _, err := d.objects(ctx, p)
	if err != nil {
		return nil, err
	}
	files, issued, err := d.Fetch(ctx, p.pod, p.token, specs)
	if err != nil {
		return nil, err
	}
	defer volume.Zero(files)
	if err := volume.Write(p.target, files, v.GID); err != nil {
		return nil, status.Errorf(codes.Internal, "writing renewed credentials: %v", err)
	}
	return issued, nil
}

// NodeUnpublishVolume zeroes the files, unmounts and removes the target,
// forgets the volume and revokes the pod. A revocation keyd cannot take now
// is queued durably before the call returns. Safe to repeat, and for
// volumes it never saw.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	start := d.opts.Now()
	if err := validVolumeID(req.GetVolumeId()); err != nil {
		d.metrics.observeUnpublish("invalid", start)
		return nil, err
	}
	if err := validTarget(req.GetTargetPath(), d.opts.PodsDir); err != nil {
		d.metrics.observeUnpublish("invalid", start)
		return nil, err
	}
	unlock, err := d.Lock(req.VolumeId, req.TargetPath)
	if err != nil {
		d.metrics.observeUnpublish("busy", start)
		return nil, err
	}
	defer unlock()
	v := d.volume(req.VolumeId)
	if v == nil || v.TargetPath != req.TargetPath {
		// Not a volume this plugin recorded at that target: nothing of
		// its own to zero or remove, and nothing else is touched.
		d.opts.Logger.Debug("unpublish of an unknown volume or target; nothing done", "volumeID", req.VolumeId)
		d.metrics.observeUnpublish("ok", start)
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err := d.opts.Volumes.Teardown(req.TargetPath); err != nil {
		d.metrics.observeUnpublish("error", start)
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if err := d.Revoke(ctx, v.VolumeID, v.Pod); err != nil {
		d.metrics.observeUnpublish("error", start)
		return nil, err
	}
	if err := d.state.Remove(v.VolumeID); err != nil {
		d.metrics.observeUnpublish("error", start)
		return nil, status.Errorf(codes.Internal, "removing volume state: %v", err)
	}
	d.dropVolume(v.VolumeID)
	d.opts.Logger.Info("volume unpublished", "volumeID", v.VolumeID, "pod", v.Pod.String())
	d.metrics.observeUnpublish("ok", start)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
