package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/e2e/cluster"
)

// Environment of the helper process TestClustersLeaveNothingBehind runs.
const (
	helperEnv       = "PODKEY_E2E_TEARDOWN_HELPER" // the marker its pod carries
	helperIndexEnv  = "PODKEY_E2E_TEARDOWN_NODE_INDEX"
	helperReadyLine = "TEARDOWN-HELPER-RUNNING "
)

// TestClustersLeaveNothingBehind starts local clusters, each with a node
// running a pod, and ends their processes midway as CI and people do: a
// test binary killed by go test's -timeout, one sent SIGTERM, and `make
// cluster` sent SIGTERM. Afterwards no process of the cluster (container
// shims, the pod's container, containerd, kubelet, control plane), no
// mount below its directory and not the directory itself remains.
func TestClustersLeaveNothingBehind(t *testing.T) {
	needRoot(t)
	if os.Getenv(helperEnv) != "" {
		t.Skip("inside the helper")
	}
	bin, err := cluster.KubeBinDir("..")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PODKEY_KUBE_BIN_DIR", bin)
	t.Run("go-test-timeout", func(t *testing.T) {
		t.Parallel()
		// The helper's own -timeout ends it once its pod runs: the
		// timeout's panic runs no cleanup, as a SIGKILL would not.
		run, dir, marker := startHelper(t, 7, "-test.timeout=75s")
		err := <-run.done
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Fatalf("the helper did not end by its timeout: %v", err)
		}
		waitNothingLeft(t, dir, marker)
	})
	t.Run("go-test-sigterm", func(t *testing.T) {
		t.Parallel()
		run, dir, marker := startHelper(t, 8, "-test.timeout=10m")
		_ = run.cmd.Process.Signal(syscall.SIGTERM)
		<-run.done
		waitNothingLeft(t, dir, marker)
	})
	t.Run("make-cluster-sigterm", func(t *testing.T) {
		t.Parallel()
		exe := filepath.Join(t.TempDir(), "cluster")
		if out, err := exec.Command("go", "build", "-o", exe, "../hack/cluster").CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		out := t.TempDir()
		cmd := exec.Command(exe, "-out", out, "-node-index", "9")
		cmd.Dir = ".."
		run := startLines(t, cmd)
		var dir string
		for l := range run.lines {
			if _, rest, ok := strings.Cut(l, "(kubelet root "); ok {
				dir = strings.TrimSuffix(strings.TrimSuffix(rest, ")"), "/nodes/podkey-node-1/kubelet")
			}
			if strings.HasPrefix(l, "Ctrl-C") {
				break
			}
		}
		if dir == "" {
			_ = cmd.Process.Kill()
			t.Fatalf("make cluster did not come up: %v", <-run.done)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(out, "kubeconfig"))
		if err != nil {
			t.Fatal(err)
		}
		marker := newMarker()
		if err := runMarkedPod(context.Background(), kubernetes.NewForConfigOrDie(cfg), "podkey-node-1", marker); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := <-run.done; err != nil {
			t.Errorf("make cluster after SIGTERM: %v", err)
		}
		waitNothingLeft(t, dir, marker)
	})
}

// TestTeardownHelper is the process TestClustersLeaveNothingBehind ends:
// it starts a cluster with a node and a running pod, says where, and waits.
func TestTeardownHelper(t *testing.T) {
	marker := os.Getenv(helperEnv)
	if marker == "" {
		t.Skip("run by TestClustersLeaveNothingBehind")
	}
	index, _ := strconv.Atoi(os.Getenv(helperIndexEnv))
	ctx := context.Background()
	c := cluster.ForTest(t, "..")
	if _, err := c.StartNode(ctx, "teardown-node", index, ".."); err != nil {
		t.Fatal(err)
	}
	if err := runMarkedPod(ctx, c.Admin, "teardown-node", marker); err != nil {
		t.Fatal(err)
	}
	fmt.Println(helperReadyLine + c.Dir)
	select {}
}

func newMarker() string { return "podkey-teardown-" + strings.ToLower(rand.Text()[:12]) }

// helperRun is a started helper process.
type helperRun struct {
	started
	cmd *exec.Cmd
}

// startHelper runs TestTeardownHelper in a new test process and returns
// once its pod runs, with its cluster's directory and its pod's marker.
func startHelper(t *testing.T, index int, timeout string) (helperRun, string, string) {
	marker := newMarker()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTeardownHelper$", "-test.v", timeout)
	cmd.Env = append(os.Environ(), helperEnv+"="+marker, helperIndexEnv+"="+strconv.Itoa(index))
	run := helperRun{started: startLines(t, cmd), cmd: cmd}
	var out []string
	for l := range run.lines {
		if dir, ok := strings.CutPrefix(l, helperReadyLine); ok {
			return run, dir, marker
		}
		out = append(out, l)
	}
	t.Fatalf("the helper ended before its pod ran: %v\n%s", <-run.done, strings.Join(out, "\n"))
	return run, "", ""
}

// started is a running command: its output's lines (the first 4096;
// later ones are dropped so the command never blocks on its output) and
// its end.
type started struct {
	lines <-chan string
	done  <-chan error
}

func startLines(t *testing.T, cmd *exec.Cmd) started {
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); w.Close() }()
	lines := make(chan string, 4096)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	return started{lines: lines, done: done}
}

// runMarkedPod runs a pod on node whose shell carries marker in its
// command line, and waits until it runs.
func runMarkedPod(ctx context.Context, cs kubernetes.Interface, node, marker string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "teardown"}}
	if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return err
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "teardown"}, Spec: corev1.PodSpec{
		NodeName: node, ServiceAccountName: "teardown", AutomountServiceAccountToken: ptr.To(false),
		Containers: []corev1.Container{{Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"/bin/sh", "-c", "while true; do sleep 1; done", marker}}}}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return err
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil && got.Status.Phase == corev1.PodRunning {
			return nil
		}
	}
	return fmt.Errorf("pod on %s not running after 2m", node)
}

// waitNothingLeft waits up to a minute for the cluster in dir to be gone:
// no process naming dir or marker, no mount below dir, no dir.
func waitNothingLeft(t *testing.T, dir, marker string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if left = leftBehind(dir, marker); len(left) == 0 {
			return
		}
	}
	t.Fatalf("left behind by the cluster in %s:\n%s", dir, strings.Join(left, "\n"))
}

func leftBehind(dir, marker string) []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmdline := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmdline, dir) || strings.Contains(cmdline, marker) {
			left = append(left, "process "+filepath.Base(filepath.Dir(p))+": "+cmdline)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			left = append(left, "mount "+f[4])
		}
	}
	if _, err := os.Stat(dir); err == nil {
		left = append(left, "directory "+dir)
	}
	return left
}
