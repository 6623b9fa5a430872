package hsm

import (
	"os"
	"path/filepath"
	"testing"
)

func TestEnsureSoftHSMTokenDir(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	tokens := filepath.Join(dir, "data", "tokens")
	_ = os.WriteFile(conf, []byte("# comment\ndirectories.tokendir = "+tokens+"/\nobjectstore.backend = file\n"), 0o600)
	t.Setenv("SOFTHSM2_CONF", conf)
	if err := EnsureSoftHSMTokenDir(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(tokens); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("%v %v", fi, err)
	}
	if err := EnsureSoftHSMTokenDir(); err != nil { // an existing directory is fine
		t.Fatal(err)
	}
	_ = os.WriteFile(conf, []byte("directories.tokendir =\n"), 0o600)
	if err := EnsureSoftHSMTokenDir(); err == nil {
		t.Fatal("an empty tokendir was accepted")
	}
	t.Setenv("SOFTHSM2_CONF", filepath.Join(dir, "missing"))
	if err := EnsureSoftHSMTokenDir(); err == nil {
		t.Fatal("a missing configuration file was accepted")
	}
}
