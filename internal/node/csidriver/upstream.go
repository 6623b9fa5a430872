package csidriver

import (
	"context"
	"time"

	"github.com/podkey/podkey/pkg/object"
)

// What the upstream secrets-store driver's provider (package provider)
// uses of a Driver besides Lock, Fetch, RenewalOrdered and Revoke: the
// same rules and the same accounting as NodePublishVolume.

// ValidTarget applies NodePublishVolume's rule to a target path: absolute,
// clean, strictly below the kubelet's pods directory and reached without
// a symbolic link. Its errors are InvalidArgument.
func (d *Driver) ValidTarget(target string) error { return validTarget(target, d.opts.PodsDir) }

// ClassObjects reads the pod's SecretProviderClass and returns its
// objects, refusing a class that syncs into Kubernetes Secrets. The
// tmpfs bound does not apply: the upstream driver sizes its own tmpfs.
func (d *Driver) ClassObjects(ctx context.Context, namespace, class string) ([]object.Spec, error) {
	specs, _, err := d.classObjects(ctx, namespace, class, false)
	return specs, err
}

// ObservePublish counts a publish made for the pod by another path (the
// upstream driver's Mount) in the driver's publish metrics.
func (d *Driver) ObservePublish(err error, start time.Time) {
	d.metrics.observePublish(resultOf(err), start)
}
