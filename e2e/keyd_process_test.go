package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/host/testdir"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds podkey, podkey-keyd, podkey-csi and podkey-image-decoder
// once per test run.
func binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = testdir.ForProcess("podkey-e2e-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir+"/", "../cmd/podkey", "../cmd/podkey-keyd", "../cmd/podkey-csi", "../cmd/podkey-image-decoder").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

type world struct {
	t       testing.TB
	bin     string
	dir     string
	env     []string
	keydErr *syncBuffer
	keyd    *exec.Cmd
	// keydCgroup, when set, is a memory cgroup (v1) keyd runs in from its
	// first instruction, as in a container with a memory limit.
	keydCgroup string
	// keydEnv is added to keyd's environment only.
	keydEnv []string
}

func (w *world) run(stdin string, name string, args ...string) (string, int) {
	w.t.Helper()
	return runBinary(w.t, w.env, stdin, filepath.Join(w.bin, name), args...)
}

// runBinary runs a program with env and stdin and returns its combined
// output and exit status; a program that cannot start fails the test.
func runBinary(t testing.TB, env []string, stdin, path string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// newWorld initialises a SoftHSM2 token with softhsm2-util and podkey's
// root keys, in a directory of the test's own.
func newWorld(t testing.TB) *world {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Fatal("softhsm2-util missing: run hack/install-deps.sh")
	}
	w := &world{t: t, bin: binaries(t), dir: t.TempDir()}
	conf := filepath.Join(w.dir, "softhsm2.conf")
	_ = os.Mkdir(filepath.Join(w.dir, "tokens"), 0o700)
	_ = os.WriteFile(conf, []byte("directories.tokendir = "+w.dir+"/tokens\nobjectstore.backend = file\n"), 0o600)
	pin := e2ePIN
	_ = os.WriteFile(filepath.Join(w.dir, "pin"), []byte(pin+"\n"), 0o600)
	sock := filepath.Join(w.dir, "keyd.sock")
	w.env = append(os.Environ(), "SOFTHSM2_CONF="+conf, "PODKEY_HSM_TOKEN=e2e",
		"PODKEY_HSM_PIN_FILE="+filepath.Join(w.dir, "pin"), "PODKEY_SOCKET="+sock)
	init := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "e2e", "--pin", pin, "--so-pin", "so-"+pin)
	init.Env = w.env
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("init token: %v\n%s", err, out)
	}
	if out, code := w.run("", "podkey", "hsm", "init"); code != 0 || !strings.Contains(out, "created 10 root keys") {
		t.Fatalf("hsm init: %d %s", code, out)
	}
	return w
}

// newSMWorld is newWorld on a token of podkey's SM development module
// (built once per test process): keyd's gm keys are inside the module.
func newSMWorld(t testing.TB) *world {
	lib, _ := hsmtest.SMModule(t) // exports PODKEY_SMHSM_DIR for the processes
	w := &world{t: t, bin: binaries(t), dir: t.TempDir()}
	sock := filepath.Join(w.dir, "keyd.sock")
	w.env = append(os.Environ(), "PODKEY_HSM_MODULE="+lib, "PODKEY_HSM_MECHANISMS="+hsmtest.SMMechanismsFile(t),
		"PODKEY_HSM_TOKEN=e2e-sm-"+filepath.Base(w.dir), "PODKEY_HSM_PIN_FILE="+filepath.Join(w.dir, "pin"), "PODKEY_SOCKET="+sock)
	if out, code := w.run("", "podkey", "hsm", "init", "--init-token"); code != 0 || !strings.Contains(out, "created 10 root keys") {
		t.Fatalf("hsm init on the SM module: %d %s", code, out)
	}
	return w
}

// startKeyd runs podkey-keyd as a process with a policy granting
// payments/payments every object. With no arguments it runs in
// development identity mode on a random port; args replace that (for
// example --kubeconfig and a fixed --listen).
func (w *world) startKeyd(ctx context.Context, args ...string) *exec.Cmd {
	if len(args) == 0 {
		args = []string{"--listen", "127.0.0.1:0", "--insecure-local-identity"}
	}
	return w.startKeydAt(ctx, w.sock(), append([]string{"--store", filepath.Join(w.dir, "keyd.db")}, args...)...)
}

// startKeydAt runs podkey-keyd with its socket at sock and args, and waits
// until it answers there.
func (w *world) startKeydAt(ctx context.Context, sock string, args ...string) *exec.Cmd {
	t := w.t
	policy := filepath.Join(w.dir, "policy.yaml")
	if _, err := os.Stat(policy); err != nil {
		_ = os.WriteFile(policy, []byte("version: v1\nrules:\n- {namespace: payments, serviceAccount: payments, objects: [\"*\"]}\n"), 0o600)
	}
	argv := append([]string{filepath.Join(w.bin, "podkey-keyd"),
		"--socket", sock, "--policy-file", policy, "--log-format", "json"}, args...)
	if w.keydCgroup != "" {
		// The shell joins the cgroup, then becomes keyd: no keyd allocation escapes the limit.
		argv = append([]string{"/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, w.keydCgroup}, argv...)
	}
	keyd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	keyd.Env = append(append([]string(nil), w.env...), w.keydEnv...)
	if w.keydErr == nil {
		w.keydErr = &syncBuffer{} // kept across restarts, for the log scan
	}
	keyd.Stderr = w.keydErr
	if err := keyd.Start(); err != nil {
		t.Fatal(err)
	}
	w.keyd = keyd
	t.Cleanup(func() { _ = keyd.Process.Kill(); _ = keyd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, code := w.run("", "podkey", "--socket", sock, "policy", "get"); code == 0 {
			return keyd
		}
		if time.Now().After(deadline) {
			t.Fatalf("keyd did not start:\n%s", w.keydErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopKeyd stops keyd with SIGTERM and waits for it.
func (w *world) stopKeyd() {
	_ = w.keyd.Process.Signal(syscall.SIGTERM)
	_ = w.keyd.Wait()
}

func (w *world) sock() string { return filepath.Join(w.dir, "keyd.sock") }

func TestKeydProcessLifecycle(t *testing.T) {
	w := newWorld(t)
	sock := w.sock()
	pin := e2ePIN
	// A PIN on the command line is not an option.
	if _, code := w.run("", "podkey-keyd", "--hsm-pin", pin); code != 2 {
		t.Fatalf("--hsm-pin accepted: exit %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	metricsAddr := freePort(t)
	keyd := w.startKeyd(ctx, "--listen", "127.0.0.1:0", "--insecure-local-identity", "--metrics-addr", metricsAddr)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// A second keyd on the same store is refused, and leaves the first alone.
	out, code := w.run("", "podkey-keyd", "--store", filepath.Join(w.dir, "keyd.db"), "--socket", sock+"2")
	if code != 6 || !strings.Contains(out, "keyd.db") {
		t.Fatalf("second keyd: %d %s", code, out)
	}

	out, code = w.run("", "podkey", "issue", "--namespace=payments", "--service-account=payments",
		"--object=ledger:apiKey", "--object=card:derivedKey:gm", "--reveal", "-o", "json")
	if code != 0 {
		t.Fatalf("issue: %d %s", code, out)
	}
	secrets := regexp.MustCompile(`"secret": "([0-9a-f]{64})"`).FindAllStringSubmatch(out, -1)
	if len(secrets) != 2 {
		t.Fatalf("issue --reveal: %s", out)
	}
	// The metrics count the calls, by method and code, and hold no secret.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exposition, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(exposition), `podkey_keyd_calls_total{code="OK",method="Issue"} 1`) ||
		!strings.Contains(string(exposition), "podkey_keyd_admission_capacity") || !strings.Contains(string(exposition), "go_goroutines") {
		t.Fatalf("metrics:\n%s", exposition)
	}
	for _, s := range secrets {
		if strings.Contains(string(exposition), s[1]) {
			t.Fatal("keyd's metrics contain an issued secret")
		}
	}

	if err := keyd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := keyd.Wait(); err != nil {
		t.Fatalf("keyd did not stop cleanly on SIGTERM: %v\n%s", err, w.keydErr)
	}
	logs := w.keydErr.String()
	if !strings.Contains(logs, "podkey-keyd stopped") || !strings.Contains(logs, "insecure local identity mode") {
		t.Fatalf("logs:\n%s", logs)
	}
	for _, s := range secrets {
		if strings.Contains(logs, s[1]) {
			t.Fatal("keyd log contains an issued secret")
		}
	}
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "{") {
			t.Fatalf("non-JSON log line with --log-format json: %q", sc.Text())
		}
	}
	// Offline audit verification with keyd stopped.
	if out, code := w.run("", "podkey", "audit", "verify", "--store", filepath.Join(w.dir, "keyd.db")); code != 0 {
		t.Fatalf("audit verify: %d %s", code, out)
	}
	fmt.Fprintln(os.Stderr, "keyd process lifecycle ok")
}

// syncBuffer collects a process's output while tests read it.
type syncBuffer = keydtest.SyncBuffer

// e2ePIN is the user PIN of the tokens these tests create.
const e2ePIN = "e2e-pin-4711"
