package csidriver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/podfiles"

	"github.com/podkey/podkey/internal/host/atomicfile"
)

// issuedObject describes one object as written: public facts only, in
// the metadata file's format.
type issuedObject = podfiles.Object

// volumeState is what the node keeps about a published volume, enough to
// serve republishes and unpublishes after a restart. It never holds a
// secret or a token.
type volumeState struct {
	Version    int            `json:"version"`
	VolumeID   string         `json:"volumeID"`
	TargetPath string         `json:"targetPath"`
	Class      string         `json:"secretProviderClass"`
	Pod        pod.Identity   `json:"pod"`
	GID        int            `json:"gid"`
	Writes     int            `json:"writes"`             // generations written
	Reserved   int64          `json:"reserved,omitempty"` // tmpfs bytes counted against the node's bound
	Objects    []issuedObject `json:"objects"`
}

// renewAt is the earliest renewal point of the volume's objects.
func (s *volumeState) renewAt() time.Time {
	var t time.Time
	for _, o := range s.Objects {
		if t.IsZero() || o.RenewAt.Before(t) {
			t = o.RenewAt
		}
	}
	return t
}

// lastIssued is the latest issue time of the volume's objects, in keyd's
// clock (to the second).
func (s *volumeState) lastIssued() time.Time {
	var t time.Time
	for _, o := range s.Objects {
		if o.IssuedAt.After(t) {
			t = o.IssuedAt
		}
	}
	return t
}

// expiry is the earliest expiry of the volume's objects.
func (s *volumeState) expiry() time.Time {
	var t time.Time
	for _, o := range s.Objects {
		if t.IsZero() || o.Expiry.Before(t) {
			t = o.Expiry
		}
	}
	return t
}

type stateStore struct{ dir string }

func (s stateStore) path(volumeID string) string {
	h := sha256.Sum256([]byte(volumeID))
	return filepath.Join(s.dir, hex.EncodeToString(h[:16])+".json")
}

func (s stateStore) save(v *volumeState) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path(v.VolumeID), data)
}

// saveIntent records a volume about to be mounted. It is not forced to
// disk: it guards against this process crashing between mount and write,
// which keeps it, while a power loss that could lose it also empties every
// tmpfs.
func (s stateStore) saveIntent(v *volumeState) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(s.path(v.VolumeID), data)
}

func (s stateStore) remove(volumeID string) error {
	err := os.Remove(s.path(volumeID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func (s stateStore) loadAll() ([]*volumeState, error) {
	files, err := filepath.Glob(filepath.Join(s.dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []*volumeState
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var v volumeState
		if err := json.Unmarshal(data, &v); err != nil || v.VolumeID == "" || s.path(v.VolumeID) != f {
			return nil, fmt.Errorf("volume state %s is unreadable", filepath.Base(f))
		}
		out = append(out, &v)
	}
	return out, nil
}
