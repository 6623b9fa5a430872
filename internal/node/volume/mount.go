package volume

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	mount "k8s.io/mount-utils"
)

// DefaultSizeLimit bounds a volume's tmpfs.
const DefaultSizeLimit = 4 << 20

// Mounter creates and removes the tmpfs of a volume. It is built on
// k8s.io/mount-utils so tests can substitute its fake.
type Mounter struct {
	m mount.Interface
}

// NewMounter uses the host's mount(8); pass mount.NewFakeMounter in tests.
func NewMounter(m mount.Interface) *Mounter {
	if m == nil {
		m = mount.New("")
	}
	return &Mounter{m: m}
}

// TmpfsOptions are the mount options of a volume: never executable, no
// devices, no setuid, a size limit, and the pod's fsGroup as group.
func TmpfsOptions(sizeLimit int64, gid int) []string {
	opts := []string{"nosuid", "nodev", "noexec", "size=" + strconv.FormatInt(sizeLimit, 10), "mode=0750"}
	if gid >= 0 {
		opts = append(opts, "gid="+strconv.Itoa(gid))
	}
	return opts
}

// IsMounted reports whether target is a mount point.
func (m *Mounter) IsMounted(target string) (bool, error) {
	notMnt, err := m.m.IsLikelyNotMountPoint(target)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !notMnt, nil
}

// Mount creates target (mode 0750) and mounts a tmpfs on it. If target is
// already a mount point it is left as it is.
func (m *Mounter) Mount(target string, sizeLimit int64, gid int) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("volume: create target: %w", err)
	}
	mounted, err := m.IsMounted(target)
	if err != nil {
		return fmt.Errorf("volume: inspect target: %w", err)
	}
	if mounted {
		return nil
	}
	if err := m.m.Mount("tmpfs", target, "tmpfs", TmpfsOptions(sizeLimit, gid)); err != nil {
		return fmt.Errorf("volume: mount tmpfs: %w", err)
	}
	return nil
}

// Teardown zeroes the files, unmounts and removes target. Safe on a target
// that is not mounted or does not exist. When the mount state cannot be
// read, it zeroes what it sees and tries to unmount anyway, so a rollback
// after a failed publish still leaves nothing behind.
func (m *Mounter) Teardown(target string) error {
	mounted, inspectErr := m.IsMounted(target)
	if err := Destroy(target); err != nil {
		return fmt.Errorf("volume: zero files: %w", err)
	}
	if mounted || inspectErr != nil {
		if err := m.m.Unmount(target); err != nil && inspectErr == nil {
			return fmt.Errorf("volume: unmount: %w", err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("volume: remove target: %w", err)
	}
	return nil
}
