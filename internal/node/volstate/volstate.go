// Package volstate is what a podkey node keeps about each volume it
// serves, one small JSON file per volume, enough to serve republishes,
// renewals and unpublishes after a restart: the pod, the target, and the
// public facts of each object (names, generations, expiries). It never
// holds a secret or a token.
package volstate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podkey/podkey/internal/host/atomicfile"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/podfiles"
)

// Volume is what the node keeps about a published volume, enough to
// serve republishes and unpublishes after a restart. It never holds a
// secret or a token.
type Volume struct {
	Version    int               `json:"version"`
	VolumeID   string            `json:"volumeID"`
	TargetPath string            `json:"targetPath"`
	Class      string            `json:"secretProviderClass"`
	Pod        pod.Identity      `json:"pod"`
	GID        int               `json:"gid"`
	Writes     int               `json:"writes"`             // generations written
	Reserved   int64             `json:"reserved,omitempty"` // tmpfs bytes counted against the node's bound
	Objects    []podfiles.Object `json:"objects"`
}

// RenewAt is the earliest renewal point of the volume's objects (zero
// when none is issued).
func (s *Volume) RenewAt() time.Time {
	var t time.Time
	for _, o := range s.Objects {
		if o.Missing != "" {
			continue
		}
		if t.IsZero() || o.RenewAt.Before(t) {
			t = o.RenewAt
		}
	}
	return t
}

// LastIssued is the latest issue time of the volume's objects, in keyd's
// clock (to the second).
func (s *Volume) LastIssued() time.Time {
	var t time.Time
	for _, o := range s.Objects {
		if o.IssuedAt.After(t) {
			t = o.IssuedAt
		}
	}
	return t
}

// Missing names the optional objects not in the volume.
func (s *Volume) Missing() []string {
	var out []string
	for _, o := range s.Objects {
		if o.Missing != "" {
			out = append(out, o.Name)
		}
	}
	return out
}

// Expiry is the earliest expiry of the volume's objects (zero when none
// is issued).
func (s *Volume) Expiry() time.Time {
	var t time.Time
	for _, o := range s.Objects {
		if o.Missing != "" {
			continue
		}
		if t.IsZero() || o.Expiry.Before(t) {
			t = o.Expiry
		}
	}
	return t
}

// Dir holds the state of volumes, a file each, named by a hash of the
// volume ID.
type Dir struct{ Path string }

func (s Dir) path(volumeID string) string {
	h := sha256.Sum256([]byte(volumeID))
	return filepath.Join(s.Path, hex.EncodeToString(h[:16])+".json")
}

// Save records a volume, forced to disk.
func (s Dir) Save(v *Volume) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path(v.VolumeID), data)
}

// SaveIntent records a volume about to be mounted. It is not forced to
// disk: it guards against this process crashing between mount and write,
// which keeps it, while a power loss that could lose it also empties every
// tmpfs.
func (s Dir) SaveIntent(v *Volume) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(s.path(v.VolumeID), data)
}

// Remove forgets a volume; a volume never recorded is no error.
func (s Dir) Remove(volumeID string) error {
	err := os.Remove(s.path(volumeID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// LoadAll reads every recorded volume; an unreadable record is an error.
func (s Dir) LoadAll() ([]*Volume, error) {
	files, err := filepath.Glob(filepath.Join(s.Path, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []*Volume
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var v Volume
		if err := json.Unmarshal(data, &v); err != nil || v.VolumeID == "" || s.path(v.VolumeID) != f {
			return nil, fmt.Errorf("volume state %s is unreadable", filepath.Base(f))
		}
		out = append(out, &v)
	}
	return out, nil
}
