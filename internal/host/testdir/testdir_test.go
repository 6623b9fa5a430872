package testdir

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Directories of processes that are gone are removed; those of running
// processes, and names that are not a pid, are left.
func TestForProcessReapsOnlyTheDead(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	const prefix = "podkey-testdir-"
	dead := filepath.Join(os.TempDir(), prefix+"2147483646") // above pid_max
	alive := filepath.Join(os.TempDir(), prefix+"1")         // init
	other := filepath.Join(os.TempDir(), prefix+"notes")
	for _, d := range []string{dead, alive, other} {
		if err := os.MkdirAll(filepath.Join(d, "tokens"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := ForProcess(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(os.TempDir(), prefix+strconv.Itoa(os.Getpid())); dir != want {
		t.Fatalf("dir %s, want %s", dir, want)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("own directory: %v %v", fi, err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("a dead process's directory is left: %v", err)
	}
	for _, d := range []string{alive, other} {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("%s removed: %v", d, err)
		}
	}
}
