// Package hsmtest creates real SoftHSM2 tokens for tests: each test gets its
// own freshly initialised token in a directory that lives as long as the
// test process (and is removed by the next test process after it).
package hsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/podkey/podkey/internal/host/testdir"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// PIN is the user PIN of every test token.
const PIN = "1234-test-pin"

var (
	confOnce sync.Once
	confErr  error
	tokenDir string
	counter  atomic.Int64
)

// setup points SOFTHSM2_CONF at a per-process token directory. It must run
// before the module is first loaded, because SoftHSM2 reads it at
// C_Initialize; every token of the process lives there.
func setup() error {
	confOnce.Do(func() {
		if _, err := os.Stat(hsm.DefaultModule); err != nil {
			confErr = fmt.Errorf("SoftHSM2 is not installed (%s): run hack/install-deps.sh", hsm.DefaultModule)
			return
		}
		dir, err := testdir.ForProcess("podkey-softhsm-")
		if err != nil {
			confErr = err
			return
		}
		tokenDir = filepath.Join(dir, "tokens")
		if err := os.Mkdir(tokenDir, 0o700); err != nil {
			confErr = err
			return
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokenDir)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			confErr = err
			return
		}
		confErr = os.Setenv("SOFTHSM2_CONF", conf)
	})
	return confErr
}

// Token initialises a new SoftHSM2 token through the loaded module and returns a
// Config that opens it. The label is unique within the process.
func Token(t testing.TB) hsm.Config {
	t.Helper()
	if err := setup(); err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("podkey-test-%d-%d", os.Getpid(), counter.Add(1))
	if err := hsm.InitToken(hsm.DefaultModule, label, "so-"+PIN, PIN); err != nil {
		t.Fatal(err)
	}
	return hsm.Config{ModulePath: hsm.DefaultModule, TokenLabel: label, PIN: PIN}
}

// Open initialises a token and opens it, closing it when the test ends.
func Open(t testing.TB) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(Token(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}
