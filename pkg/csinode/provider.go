package csinode

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/version"
)

// Provider serves the upstream secrets-store CSI driver's provider API
// (v1alpha1: Version and Mount) with this Driver's node identity, keyd
// connection, class source and renewal orders, so that a
// SecretProviderClass with provider: podkey works under the upstream
// driver too. That driver mounts the tmpfs and writes the files Mount
// returns; it calls Mount again on its rotation schedule, and Provider
// mints again only when renewal is due (or ordered): otherwise it answers
// with the current object versions and no files, and the driver leaves the
// files as they are. Object versions name the issue time and the write
// counter, never anything derived from a secret.
//
// What the upstream path cannot do, against podkey-csi: it has no Unmount
// call to providers (revocation on deletion needs a pod watch), the files
// travel through the driver's memory and writer (podkey cannot zero them
// or set their group), and this state is in memory only (after a restart
// the next rotation mints again).
type Provider struct {
	d *Driver

	mu     sync.Mutex
	mounts map[string]*volumeState // by target path
}

var _ v1alpha1.CSIDriverProviderServer = (*Provider)(nil)

// NewProvider serves the provider API on d.
func NewProvider(d *Driver) *Provider { return &Provider{d: d, mounts: map[string]*volumeState{}} }

// Version implements v1alpha1.CSIDriverProviderServer.
func (p *Provider) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: "podkey", RuntimeVersion: version.Version}, nil
}

// Mount implements v1alpha1.CSIDriverProviderServer.
func (p *Provider) Mount(ctx context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	d := p.d
	start := d.opts.Now()
	var attrs map[string]string
	if err := json.Unmarshal([]byte(req.GetAttributes()), &attrs); err != nil {
		return nil, invalid("mount attributes are not a JSON object of strings")
	}
	target := req.GetTargetPath()
	if target == "" || !filepath.IsAbs(target) || filepath.Clean(target) != target {
		return nil, invalid("target path %q is not a clean absolute path", target)
	}
	class, id, err := podAttributes(attrs)
	if err != nil {
		return nil, err
	}
	token, err := tokenFor(attrs[attrTokens], d.opts.TokenAudience, func(format string, a ...any) error {
		return status.Errorf(codes.FailedPrecondition, format+" (the secrets-store driver's CSIDriver, secrets-store.csi.k8s.io, needs tokenRequests: [{audience: %s}])",
			append(a, d.opts.TokenAudience)...)
	})
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock("provider "+target, target)
	if err != nil {
		return nil, err
	}
	defer unlock()

	pr := &publishRequest{volumeID: "provider " + target, target: target, class: class, pod: id, token: token, gid: -1}
	specs, _, err := d.classObjects(ctx, pr, false)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	cur := p.mounts[target]
	p.mu.Unlock()
	if cur != nil && cur.Pod == id && sameVersions(req.GetCurrentObjectVersion(), objectVersions(cur)) &&
		d.opts.Now().Before(cur.renewAt()) && !d.renewalOrdered(cur) {
		return &v1alpha1.MountResponse{ObjectVersion: objectVersions(cur)}, nil
	}
	files, issued, err := d.fetch(ctx, pr, specs)
	if err != nil {
		d.metrics.observePublish(resultOf(err), start)
		return nil, err
	}
	next := &volumeState{Version: 1, VolumeID: pr.volumeID, TargetPath: target, Class: class, Pod: id, GID: -1, Writes: 1, Objects: issued}
	if cur != nil && cur.Pod == id {
		next.Writes = cur.Writes + 1
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
	d.metrics.observePublish("ok", start)
	d.opts.Logger.Info("provider mount served", "pod", id.String(), "objects", len(issued), "generation", next.Writes, "renewAt", next.renewAt())
	return resp, nil
}

// Pods are the pods this provider obtained credentials for, with what it
// last obtained, for revoking them when they are deleted.
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
func objectVersions(v *volumeState) []*v1alpha1.ObjectVersion {
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
