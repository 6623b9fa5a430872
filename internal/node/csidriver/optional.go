package csidriver

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/node/volstate"
	"github.com/podkey/podkey/internal/node/volume"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/podfiles"
)

// Optional objects (object.Spec.Optional): a pod starts without those keyd
// refuses, or without all of them when every object is optional and keyd
// cannot be reached; republishes fill them in.

// allOptional reports whether no object of specs is required.
func allOptional(specs []object.Spec) bool {
	for _, sp := range specs {
		if !sp.Optional {
			return false
		}
	}
	return true
}

// unreachable reports a Fetch error that says keyd could not be asked,
// not that it refused.
func unreachable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded:
		return true
	}
	return false
}

// nothingYet is a volume's content when none of its objects, all
// optional, could be obtained: the metadata file saying why.
func (d *Driver) nothingYet(p pod.Identity, specs []object.Spec, why string) (map[string]volume.File, []podfiles.Object, error) {
	issued := make([]podfiles.Object, len(specs))
	for i, sp := range specs {
		issued[i] = podfiles.Object{Name: sp.Name, Kind: string(sp.Kind), Missing: why}
	}
	meta, err := metadataFile(p, issued, d.opts.Now())
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "%v", err)
	}
	return map[string]volume.File{volume.MetadataFile: meta}, issued, nil
}

// fill asks keyd again for the volume's missing optional objects and,
// for those it now issues, writes a new generation: the files already
// there, read back unchanged, beside the new ones, so the workload sees
// one atomic swap (and its rotation callback fires). Failure leaves the
// volume as it is for the next republish.
func (d *Driver) fill(ctx context.Context, p *publishRequest, v *volstate.Volume) {
	specs, _, err := d.objects(ctx, p)
	if err != nil {
		return
	}
	missing := map[string]bool{}
	for _, name := range v.Missing() {
		missing[name] = true
	}
	var want, have []object.Spec
	for _, sp := range specs {
		if missing[sp.Name] {
			want = append(want, sp)
		} else {
			have = append(have, sp)
		}
	}
	if len(want) == 0 {
		return
	}
	files, got, err := d.Fetch(ctx, p.pod, p.token, want)
	if err != nil {
		d.opts.Logger.Debug("optional objects still not available", "volumeID", v.VolumeID, "error", status.Convert(err).Message())
		return
	}
	defer volume.Zero(files)
	filled := map[string]podfiles.Object{}
	for _, o := range got {
		if o.Missing == "" {
			filled[o.Name] = o
		}
	}
	if len(filled) == 0 {
		return
	}
	var keep []string
	for _, sp := range have {
		keep = append(keep, sp.Files()...)
	}
	current, err := volume.ReadCurrent(p.target, keep)
	if err != nil {
		d.opts.Logger.Error("optional objects not filled: reading the current files", "volumeID", v.VolumeID, "error", err)
		return
	}
	defer volume.Zero(current)
	for _, sp := range have {
		for _, name := range sp.Files() {
			f := current[name]
			f.Owner = volumeOwner(sp.Owner)
			files[name] = f
		}
	}
	next := *v
	next.Objects = make([]podfiles.Object, len(v.Objects))
	for i, o := range v.Objects {
		if f, ok := filled[o.Name]; ok {
			o = f
		} else if o.Missing != "" {
			for _, g := range got {
				if g.Name == o.Name {
					o = g // the newest reason
				}
			}
		}
		next.Objects[i] = o
	}
	meta, err := metadataFile(p.pod, next.Objects, d.opts.Now())
	if err != nil {
		return
	}
	files[volume.MetadataFile] = meta
	if err := volume.Write(p.target, files, v.GID); err != nil {
		d.opts.Logger.Error("optional objects not filled: writing", "volumeID", v.VolumeID, "error", err)
		return
	}
	next.Writes++
	if err := d.state.Save(&next); err != nil {
		d.opts.Logger.Error("volume state not saved after filling optional objects", "volumeID", v.VolumeID, "error", err)
	}
	d.setVolume(&next)
	d.opts.Logger.Info("optional objects filled in", "volumeID", v.VolumeID, "pod", p.String(), "objects", len(filled), "generation", next.Writes)
}
