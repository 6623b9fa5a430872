// Package atomicfile replaces small state files so that a crash leaves
// either the old or the new content, never a torn file.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data (mode 0600): temp file in the same
// directory, fsync, rename, fsync of the directory.
func Write(path string, data []byte) error { return write(path, data, true) }

// WriteVolatile replaces path with data atomically without forcing it to
// disk: for records that matter only while the machine stays up (a
// process crash keeps them; a power loss may not).
func WriteVolatile(path string, data []byte) error { return write(path, data, false) }

func write(path string, data []byte, durable bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if !durable {
		return nil
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
