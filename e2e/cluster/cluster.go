// Package cluster runs a real Kubernetes control plane for podkey's
// tests: etcd (Debian's etcd-server) and kube-apiserver (built from the Go
// module proxy by hack/kube-binaries.sh), on free loopback ports, with
// their own service-account keys, torn down when the test ends. Tests that
// create pods with spec.nodeName need nothing more (TokenRequest and
// TokenReview are served by the API server alone); StartControllers adds
// kube-controller-manager and kube-scheduler for Deployments, DaemonSets
// and helm installs.
package cluster

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Cluster is a running control plane.
type Cluster struct {
	Dir        string
	URL        string
	AdminToken string
	// Admin is a client with cluster-admin rights.
	Admin  kubernetes.Interface
	config *rest.Config

	procs []*proc
	logs  []*os.File
	once  sync.Once

	ctrlOnce sync.Once
	ctrlErr  error

	reaper *os.File // the pipe whose end tells the reaper to act
}

// KubeBinDir returns the directory holding kube-apiserver, kubelet,
// kube-controller-manager and kube-scheduler: $PODKEY_KUBE_BIN_DIR, or what
// hack/kube-binaries.sh prints (it builds them the first time, about
// fifteen minutes on two cores).
func KubeBinDir(repoRoot string) (string, error) {
	if d := os.Getenv("PODKEY_KUBE_BIN_DIR"); d != "" {
		return d, nil
	}
	out, err := exec.Command(filepath.Join(repoRoot, "hack", "kube-binaries.sh")).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("hack/kube-binaries.sh: %v\n%s", err, ee.Stderr)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// FreePort is a free TCP port on loopback.
func FreePort() (int, error) {
	handedOut.mu.Lock()
	defer handedOut.mu.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	// The kernel may offer a port again once it is closed: never hand out
	// one twice, or two servers of one test would meet on it.
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
}

// handedOut are the ports FreePort returned in this process.
var handedOut struct {
	mu    sync.Mutex
	ports map[int]bool
}

// Start brings up etcd and kube-apiserver in a new temporary directory.
// Call Stop when done (tests: t.Cleanup(c.Stop)).
func Start(repoRoot string) (*Cluster, error) {
	bin, err := KubeBinDir(repoRoot)
	if err != nil {
		return nil, err
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd missing: run hack/install-deps.sh")
	}
	dir, err := os.MkdirTemp("", "podkey-cluster-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	if err := c.startReaper(); err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if err := c.run("etcd", etcdBin, "--name", "podkey", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "podkey="+peerURL, "--log-level", "warn"); err != nil {
		return nil, err
	}
	if err := c.waitHTTP(etcdURL+"/health", "", 30*time.Second); err != nil {
		return nil, fmt.Errorf("etcd: %w\n%s", err, c.logTail("etcd"))
	}

	if err := writeServiceAccountKeys(dir); err != nil {
		return nil, err
	}
	if err := writeKubeletClientPKI(dir); err != nil {
		return nil, err
	}
	tok := make([]byte, 24)
	_, _ = rand.Read(tok)
	c.AdminToken = fmt.Sprintf("%x", tok)
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(c.AdminToken+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	c.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	if err := c.run("kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--allow-privileged=true",
		"--kubelet-preferred-address-types", "InternalIP",
		"--kubelet-client-certificate", filepath.Join(dir, kubeletClientCert),
		"--kubelet-client-key", filepath.Join(dir, kubeletClientKey),
		"--enable-priority-and-fairness=false",
		"--endpoint-reconciler-type=none", // loopback addresses are refused as endpoints
		"--profiling=false"); err != nil {
		return nil, err
	}
	if err := c.waitHTTP(c.URL+"/readyz", c.AdminToken, 90*time.Second); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w\n%s", err, c.logTail("kube-apiserver"))
	}
	// No client-side rate limit (client-go's default is 5 requests a
	// second): benchmarks create a cluster's worth of pods and tokens.
	c.config = &rest.Config{Host: c.URL, BearerToken: c.AdminToken, QPS: -1,
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(dir, "certs", "apiserver.crt")}}
	if c.Admin, err = kubernetes.NewForConfig(c.config); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// Config is a rest.Config for the given bearer token (the admin's when
// empty), trusting the API server's certificate.
func (c *Cluster) Config(token string) *rest.Config {
	cfg := rest.CopyConfig(c.config)
	if token != "" {
		cfg.BearerToken = token
	}
	return cfg
}

func (c *Cluster) run(name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.Dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	c.procs = append(c.procs, p)
	c.logs = append(c.logs, logf)
	return nil
}

// kill stops a process of the cluster with SIGKILL, as a crash or a
// power cut would, and forgets it, so that exited does not report it.
func (c *Cluster) kill(name string) error {
	for i, p := range c.procs {
		if p.name != name {
			continue
		}
		_ = p.cmd.Process.Kill()
		<-p.done
		c.procs = append(c.procs[:i], c.procs[i+1:]...)
		return nil
	}
	return fmt.Errorf("no process %s", name)
}

// proc is a started process and its exit.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// exited reports a process that ended, so waiting for readiness can stop.
func (c *Cluster) exited() error {
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, c.logTail(p.name))
		default:
		}
	}
	return nil
}

func (c *Cluster) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, name+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Stop kills the processes (API server first) and removes the directory.
func (c *Cluster) Stop() {
	c.once.Do(func() {
		for i := len(c.procs) - 1; i >= 0; i-- {
			p := c.procs[i]
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		for _, f := range c.logs {
			f.Close()
		}
		c.reap()
		c.removeDir()
		if c.reaper != nil {
			c.reaper.Close()
		}
	})
}

func (c *Cluster) waitHTTP(url, token string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // readiness probe only; clients verify
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if err := c.exited(); err != nil {
			return err
		}
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Errorf("%s: %s", url, resp.Status)
		} else {
			last = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s: %v", timeout, last)
}

func writeServiceAccountKeys(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), priv, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
}

// ForTest starts a cluster and stops it when t ends.
func ForTest(t testing.TB, repoRoot string) *Cluster {
	t.Helper()
	c, err := Start(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// Controllers the chart's objects need: Deployments and DaemonSets make
// pods, the scheduler places them, the garbage collector removes what an
// uninstall leaves owned, PersistentVolumeClaims bind, the node lifecycle
// controller lifts the not-ready taint. Pod garbage collection and
// taint-based eviction stay off: other tests bind pods to Node objects that
// have no kubelet, which get tainted but must keep their pods.
var controllers = []string{
	"deployment-controller", "replicaset-controller", "daemonset-controller", "garbage-collector-controller",
	"serviceaccount-controller", "persistentvolume-binder-controller", "root-ca-certificate-publisher-controller",
	"node-lifecycle-controller", // lifts the not-ready taint a kubelet registers with
}

// StartControllers runs kube-controller-manager (the controllers above)
// and kube-scheduler against the cluster, once.
func (c *Cluster) StartControllers(repoRoot string) error {
	c.ctrlOnce.Do(func() { c.ctrlErr = c.startControllers(repoRoot) })
	return c.ctrlErr
}

func (c *Cluster) startControllers(repoRoot string) error {
	bin, err := KubeBinDir(repoRoot)
	if err != nil {
		return err
	}
	kc := filepath.Join(c.Dir, "admin.kubeconfig")
	if err := c.WriteKubeconfig(kc, ""); err != nil {
		return err
	}
	var ports [2]int
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return err
		}
	}
	if err := c.run("kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--leader-elect=false", "--controllers", strings.Join(controllers, ","),
		"--root-ca-file", filepath.Join(c.Dir, "certs", "apiserver.crt"),
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[0]),
		"--concurrent-gc-syncs", "5", "--profiling=false"); err != nil {
		return err
	}
	if err := c.run("kube-scheduler", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[1]), "--profiling=false"); err != nil {
		return err
	}
	for i, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		if err := c.waitHTTP(fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[i]), "", 60*time.Second); err != nil {
			return fmt.Errorf("%s: %w\n%s", name, err, c.logTail(name))
		}
	}
	return nil
}
