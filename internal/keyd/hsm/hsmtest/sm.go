package hsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/podkey/podkey/internal/host/testdir"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

var (
	smOnce   sync.Once
	smErr    error
	smModule string
	smMechs  hsm.Mechanisms
	smTable  string
)

// SMModule builds podkey's SM development module (hack/smhsm) once per
// test process, points it at a token directory of the process's, and
// returns its path and its vendor mechanism table.
func SMModule(t testing.TB) (string, hsm.Mechanisms) {
	t.Helper()
	smOnce.Do(func() { smErr = buildSM() })
	if smErr != nil {
		t.Fatal(smErr)
	}
	return smModule, smMechs
}

func buildSM() error {
	dir, err := testdir.ForProcess("podkey-smhsm-")
	if err != nil {
		return err
	}
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	src := filepath.Join(filepath.Dir(strings.TrimSpace(string(root))), "hack", "smhsm")
	lib := filepath.Join(dir, "libpodkey-smhsm.so")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", lib, ".")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the SM module: %v\n%s", err, out)
	}
	smTable = filepath.Join(src, "mechanisms.yaml")
	data, err := os.ReadFile(smTable)
	if err != nil {
		return err
	}
	if smMechs, err = hsm.ParseMechanisms(data); err != nil {
		return err
	}
	// Read by the module at C_Initialize, before the first load.
	if err := os.Setenv("PODKEY_SMHSM_DIR", filepath.Join(dir, "tokens")); err != nil {
		return err
	}
	smModule = lib
	return nil
}

// SMMechanismsFile is the SM module's mechanism table file, for keyd's
// --hsm-mechanisms.
func SMMechanismsFile(t testing.TB) string {
	t.Helper()
	SMModule(t)
	return smTable
}

// SMToken initialises a new token on the SM module and returns a Config
// that opens it with the module's mechanism table.
func SMToken(t testing.TB) hsm.Config {
	t.Helper()
	lib, mechs := SMModule(t)
	label := fmt.Sprintf("podkey-sm-test-%d-%d", os.Getpid(), counter.Add(1))
	if err := hsm.InitToken(lib, label, "so-"+PIN, PIN); err != nil {
		t.Fatal(err)
	}
	return hsm.Config{ModulePath: lib, TokenLabel: label, PIN: PIN, Mechanisms: mechs}
}

// Module is a PKCS#11 module the tests run against.
type Module struct {
	Name  string
	Token func(testing.TB) hsm.Config
}

// Modules are the module matrix: SoftHSM2 (no SM mechanisms) and
// podkey's SM development module.
var Modules = []Module{{"softhsm2", Token}, {"sm", SMToken}}

// Each runs test once per module of the matrix, as subtests.
func Each(t *testing.T, test func(t *testing.T, m Module)) {
	for _, m := range Modules {
		t.Run(m.Name, func(t *testing.T) { test(t, m) })
	}
}

// OpenOn initialises a token on the module and opens it, closing it when
// the test ends.
func OpenOn(t testing.TB, m Module) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(m.Token(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

// SMTokenDir is the directory of the SM module's token with the label:
// moving it away removes the token, moving it back reinserts it.
func SMTokenDir(t testing.TB, label string) string {
	t.Helper()
	root := os.Getenv("PODKEY_SMHSM_DIR")
	dirs, _ := filepath.Glob(filepath.Join(root, "slot-*", "token.json"))
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err == nil && strings.Contains(string(b), `"label":"`+label+`"`) {
			return filepath.Dir(f)
		}
	}
	t.Fatalf("no SM module token %q under %s", label, root)
	return ""
}
