package socket

import (
	"os"
	"path/filepath"
	"testing"
)

func TestListenReplacesStaleSocketAndSetsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "x.sock")
	l1, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l1.Close() // leaves nothing; simulate a stale file instead
	_ = os.WriteFile(path, nil, 0o644)
	l2, err := Listen(path, 0o600)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
}
