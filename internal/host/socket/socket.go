// Package socket listens on local unix sockets for podkey's daemons.
package socket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Listen creates path's directory (0750), removes a socket left by a
// previous run (the caller's own lock, a store or the kubelet, rules out a
// live one) and listens with the given file mode.
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return lis, nil
}
