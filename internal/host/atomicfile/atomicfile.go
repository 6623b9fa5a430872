// Package atomicfile replaces small state files so that a crash leaves
// either the old or the new content, never a torn file.
package atomicfile

import (
	"io"
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

// WriteFrom replaces path, durably as Write does, with what fill writes
// (large files: store backups); an error from fill leaves path as it was.
func WriteFrom(path string, fill func(w io.Writer) error) error { return writeFrom(path, fill, true) }

func write(path string, data []byte, durable bool) error {
	return writeFrom(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}, durable)
}

func writeFrom(path string, fill func(w io.Writer) error, durable bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := fill(tmp); err != nil {
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
