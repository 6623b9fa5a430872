// Package volume owns what podkey puts on a node's filesystem for one pod
// volume: a size-limited tmpfs mounted nosuid,nodev,noexec, the credential
// files written into it with Kubernetes' atomic-writer layout, and their
// destruction (contents overwritten with zeros, then unmounted).
//
// Layout of a volume (as Kubernetes' projected volumes):
//
//	target/
//	  ..2026_11_28_17_50_01.0123456789/   one generation of every file
//	  ..data -> ..2026_11_28_17_50_01.0123456789
//	  ledger-api.json -> ..data/ledger-api.json
//	  podkey-metadata.json -> ..data/podkey-metadata.json
//
// A new generation is written into a fresh directory and published by
// renaming one symlink over ..data, so a reader that resolves ..data once
// sees a complete, consistent set. The generation it replaces is kept until
// the next write (its credentials stay valid until they expire anyway), so
// a reader has a whole rotation period to finish; older generations are
// renamed away first and then zeroed, so a reader that resolved one and
// finds its directory still present after reading knows it read intact
// files.
package volume

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/podkey/podkey/pkg/podfiles"
)

const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
	// MetadataFile is the non-secret file describing the volume's objects
	// (expiries, generations); object files may not use this name.
	MetadataFile = podfiles.MetadataFile
	// MaxFileSize bounds one file; MaxFiles bounds a volume.
	MaxFileSize = 256 << 10
	MaxFiles    = 128
)

// File is one file of a generation.
type File struct {
	Data []byte
	Mode os.FileMode
	// Owner, when set, owns the file; otherwise root and the volume's
	// group do.
	Owner *Owner
}

// Owner is a file's user and group; -1 leaves either as the volume's.
type Owner struct{ UID, GID int }

// ownedFiles reports whether any file names its owner: the volume's
// directories are then open to every user (0755) so that a container
// running as an owner outside the volume's group reaches its file, which
// its own mode protects.
func ownedFiles(payload map[string]File) bool {
	for _, f := range payload {
		if f.Owner != nil {
			return true
		}
	}
	return false
}

// ErrBadPayload marks a payload that cannot be written (bad names, sizes).
var ErrBadPayload = errors.New("invalid volume payload")

// Zero overwrites the contents of files held in memory, once they are
// written or refused.
func Zero(files map[string]File) {
	for _, f := range files {
		clear(f.Data)
	}
}

// ValidateName refuses names that could escape the volume or collide with
// the writer's own entries.
func ValidateName(name string) error {
	if err := podfiles.ValidName(name); err != nil {
		return fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	return nil
}

func validatePayload(payload map[string]File) error {
	if len(payload) == 0 || len(payload) > MaxFiles {
		return fmt.Errorf("%w: %d files (1 to %d allowed)", ErrBadPayload, len(payload), MaxFiles)
	}
	folded := make(map[string]string, len(payload))
	for name, f := range payload {
		if err := ValidateName(name); err != nil {
			return err
		}
		if other, dup := folded[podfiles.FoldName(name)]; dup {
			return fmt.Errorf("%w: file names %q and %q look alike", ErrBadPayload, other, name)
		}
		folded[podfiles.FoldName(name)] = name
		if len(f.Data) > MaxFileSize {
			return fmt.Errorf("%w: file %q is larger than %d bytes", ErrBadPayload, name, MaxFileSize)
		}
		if f.Mode&^0o777 != 0 {
			return fmt.Errorf("%w: file %q mode %o", ErrBadPayload, name, f.Mode)
		}
	}
	return nil
}

// Write publishes payload as the volume's new generation, owned by gid
// (-1 leaves the group alone), keeping the one it replaces. Steps:
//
//  1. validate every name and size before touching the directory, then
//     destroy every generation but the published one, so a volume never
//     holds more than two (a write that failed for want of space, leaving
//     an older generation behind, cannot wedge the next one);
//  2. write every file into a new timestamped directory;
//  3. point ..data_tmp at it and rename it over ..data (the atomic step);
//  4. create the user-visible symlinks for new names, remove dropped ones;
//  5. rename every generation older than the one just replaced out of
//     reach, then zero and remove it.
func Write(target string, payload map[string]File, gid int) error {
	// (1)
	if err := validatePayload(payload); err != nil {
		return err
	}
	oldDir, _ := os.Readlink(filepath.Join(target, dataDirName))
	if err := pruneGenerations(target, oldDir); err != nil {
		return fmt.Errorf("volume: destroy old generations: %w", err)
	}

	// (2)
	tsDir, err := os.MkdirTemp(target, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return fmt.Errorf("volume: create generation directory: %w", err)
	}
	tsName := filepath.Base(tsDir)
	fail := func(err error) error {
		_ = destroyDir(tsDir)
		return err
	}
	dirMode := os.FileMode(0o750)
	if ownedFiles(payload) {
		dirMode = 0o755
	}
	if err := os.Chmod(tsDir, dirMode); err != nil {
		return fail(err)
	}
	if err := os.Chmod(target, dirMode); err != nil {
		return fail(err)
	}
	if gid >= 0 {
		if err := os.Chown(tsDir, -1, gid); err != nil {
			return fail(fmt.Errorf("volume: chown: %w", err))
		}
	}
	for name, f := range payload {
		if err := writeFile(filepath.Join(tsDir, name), f, gid); err != nil {
			return fail(err)
		}
	}

	// (3)
	tmpLink := filepath.Join(target, newDataDirName)
	_ = os.Remove(tmpLink)
	if err := os.Symlink(tsName, tmpLink); err != nil {
		return fail(fmt.Errorf("volume: symlink: %w", err))
	}
	if err := os.Rename(tmpLink, filepath.Join(target, dataDirName)); err != nil {
		_ = os.Remove(tmpLink)
		return fail(fmt.Errorf("volume: publish generation: %w", err))
	}

	// (4)
	for name := range payload {
		link := filepath.Join(target, name)
		if dest, err := os.Readlink(link); err == nil && dest == filepath.Join(dataDirName, name) {
			continue
		}
		_ = os.Remove(link)
		if err := os.Symlink(filepath.Join(dataDirName, name), link); err != nil {
			return fmt.Errorf("volume: link %s: %w", name, err)
		}
	}
	entries, err := os.ReadDir(target)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if _, keep := payload[e.Name()]; !keep && !strings.HasPrefix(e.Name(), "..") {
			_ = os.Remove(filepath.Join(target, e.Name()))
		}
	}

	// (5)
	return pruneGenerations(target, tsName, oldDir)
}

const deletingPrefix = "..deleting."

// pruneGenerations destroys generation directories other than keep...
func pruneGenerations(target string, keep ...string) error {
	entries, err := os.ReadDir(target)
	if err != nil {
		return err
	}
	var firstErr error
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, "..") || slices.Contains(keep, name) {
			continue
		}
		dir := filepath.Join(target, name)
		if !strings.HasPrefix(name, deletingPrefix) {
			moved := filepath.Join(target, deletingPrefix+strings.TrimPrefix(name, ".."))
			if err := os.Rename(dir, moved); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			dir = moved
		}
		if err := destroyDir(dir); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func writeFile(path string, f File, gid int) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("volume: create %s: %w", filepath.Base(path), err)
	}
	if _, err := fh.Write(f.Data); err != nil {
		fh.Close()
		return fmt.Errorf("volume: write %s: %w", filepath.Base(path), err)
	}
	uid := -1
	if f.Owner != nil {
		uid = f.Owner.UID
		if f.Owner.GID >= 0 {
			gid = f.Owner.GID
		}
	}
	if uid >= 0 || gid >= 0 {
		if err := fh.Chown(uid, gid); err != nil {
			fh.Close()
			return fmt.Errorf("volume: chown %s: %w", filepath.Base(path), err)
		}
	}
	if err := fh.Chmod(f.Mode); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// destroyDir overwrites every regular file in dir with zeros and removes it.
func destroyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var firstErr error
	for _, e := range entries {
		if e.Type().IsRegular() {
			if err := zeroFile(filepath.Join(dir, e.Name())); err != nil && firstErr == nil {
				firstErr = err
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

func zeroFile(path string) error {
	fh, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	if _, err := fh.WriteAt(make([]byte, fi.Size()), 0); err != nil {
		return err
	}
	return fh.Sync()
}

// Destroy zeroes every generation's files under target and removes them,
// leaving target itself (the mount point) in place.
func Destroy(target string) error {
	entries, err := os.ReadDir(target)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var firstErr error
	for _, e := range entries {
		p := filepath.Join(target, e.Name())
		var err error
		if e.IsDir() {
			err = destroyDir(p)
		} else {
			err = os.Remove(p)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Current lists the files of the published generation, sorted.
func Current(target string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(target, dataDirName))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out, nil
}

// ReadCurrent reads names from the published generation, with their
// modes, for a write that carries them into the next one unchanged (the
// caller sets their owners again, and zeroes them with Zero).
func ReadCurrent(target string, names []string) (map[string]File, error) {
	gen, err := os.Readlink(filepath.Join(target, dataDirName))
	if err != nil {
		return nil, fmt.Errorf("volume: no published generation: %w", err)
	}
	out := make(map[string]File, len(names))
	for _, name := range names {
		if err := ValidateName(name); err != nil {
			Zero(out)
			return nil, err
		}
		f, err := readFile(filepath.Join(target, filepath.Base(gen), name))
		if err != nil {
			Zero(out)
			return nil, err
		}
		out[name] = f
	}
	return out, nil
}

func readFile(path string) (File, error) {
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return File{}, fmt.Errorf("volume: %w", err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > MaxFileSize {
		return File{}, fmt.Errorf("volume: %s is not a regular file of at most %d bytes", filepath.Base(path), MaxFileSize)
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(fh, data); err != nil {
		clear(data)
		return File{}, fmt.Errorf("volume: read %s: %w", filepath.Base(path), err)
	}
	return File{Data: data, Mode: fi.Mode().Perm()}, nil
}
