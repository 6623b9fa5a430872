package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Node is a kubelet with its own containerd, CNI configuration and root
// directory, registered with the cluster.
type Node struct {
	Name string
	Dir  string
	// RootDir is the kubelet's --root-dir: pods' volumes live under
	// RootDir/pods, CSI plugins register through RootDir/plugins_registry.
	RootDir        string
	ContainerdSock string
	// LogsDir holds containers' logs (<ns>_<pod>_<uid>/<container>/0.log),
	// which tests read directly (kubectl logs works too).
	LogsDir string
	// OcicryptDir holds what containerd's image decoder uses: the decoder
	// (ctd-decoder), the keyprovider configuration, and its keys directory
	// (keys/, empty unless a test puts a JWE key there).
	OcicryptDir string

	c       *Cluster
	kubelet []string // the kubelet's binary and arguments, for Reboot
	boots   int
}

// containerdConfig follows shared/LOCAL-CLUSTER.md: the sandbox image is
// imported locally, and restrict_oom_score_adj because these machines lack
// CAP_SYS_RESOURCE. Encrypted layers go through containerd's own decoder
// stream processors (their ids must stay exactly these), run from the
// node's ocicrypt directory (see EnableImageDecryption).
const containerdConfig = `version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".image_decryption]
    key_model = "node"
[stream_processors]
  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar.gzip"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+gzip+encrypted"]
    returns = "application/vnd.oci.image.layer.v1.tar+gzip"
    path = "%[6]s/ctd-decoder"
    args = ["--decryption-keys-path", "%[6]s/keys"]
    env = ["OCICRYPT_KEYPROVIDER_CONFIG=%[6]s/keyprovider.conf"]
  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+encrypted"]
    returns = "application/vnd.oci.image.layer.v1.tar"
    path = "%[6]s/ctd-decoder"
    args = ["--decryption-keys-path", "%[6]s/keys"]
    env = ["OCICRYPT_KEYPROVIDER_CONFIG=%[6]s/keyprovider.conf"]
`

// The pods of a test node need no network beyond their own namespace; the
// bridge has no route off the machine and nothing is sent to it.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "podkey-e2e",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]]}},
    {"type": "loopback"}
  ]
}
`

const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
syncFrequency: 10s
fileCheckFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "1Mi", "nodefs.available": "1%%", "imagefs.available": "1%%"}
serializeImagePulls: false
resolvConf: ""
podLogsDir: %q
`

// StartNode starts containerd and a kubelet named name and waits until the
// node is Ready. Each node of a cluster gets its own index (0, 1, ...).
func (c *Cluster) StartNode(ctx context.Context, name string, index int, repoRoot string) (*Node, error) {
	bin, err := KubeBinDir(repoRoot)
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"containerd", "runc", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s missing: run hack/install-deps.sh", tool)
		}
	}
	n := &Node{Name: name, Dir: filepath.Join(c.Dir, "nodes", name), c: c}
	n.RootDir = filepath.Join(n.Dir, "kubelet")
	n.ContainerdSock = filepath.Join(n.Dir, "containerd.sock")
	cniDir := filepath.Join(n.Dir, "cni")
	for _, d := range []string{n.RootDir, cniDir, filepath.Join(n.Dir, "images")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	n.OcicryptDir = filepath.Join(n.Dir, "ocicrypt")
	if err := os.MkdirAll(filepath.Join(n.OcicryptDir, "keys"), 0o700); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(containerdConfig, filepath.Join(n.Dir, "containerd", "root"), filepath.Join(n.Dir, "containerd", "state"),
		n.ContainerdSock, PauseImage, cniDir, n.OcicryptDir)
	if err := os.WriteFile(filepath.Join(n.Dir, "containerd.toml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cni := fmt.Sprintf(cniConfig, fmt.Sprintf("pkbr%d", index), fmt.Sprintf("10.88.%d.0/24", index))
	if err := os.WriteFile(filepath.Join(cniDir, "10-podkey-e2e.conflist"), []byte(cni), 0o644); err != nil {
		return nil, err
	}
	if err := c.run(name+"-containerd", "containerd", "--config", filepath.Join(n.Dir, "containerd.toml")); err != nil {
		return nil, err
	}
	if err := waitFile(n.ContainerdSock, 30*time.Second, c.exited); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	tars, err := buildImages(filepath.Join(n.Dir, "images"), repoRoot)
	if err != nil {
		return nil, err
	}
	if err := n.Import(ctx, tars...); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(n.Dir, "kubeconfig")
	if err := c.WriteKubeconfig(kubeconfig, ""); err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	healthz, err := FreePort()
	if err != nil {
		return nil, err
	}
	n.LogsDir = filepath.Join(n.Dir, "pod-logs")
	nodeIP, err := NodeIP()
	if err != nil {
		return nil, err
	}
	kcfg := fmt.Sprintf(kubeletConfig, nodeIP, port, healthz, filepath.Join(c.Dir, kubeletClientCA), n.ContainerdSock, n.LogsDir)
	if err := os.WriteFile(filepath.Join(n.Dir, "kubelet.yaml"), []byte(kcfg), 0o600); err != nil {
		return nil, err
	}
	n.kubelet = []string{filepath.Join(bin, "kubelet"), "--config", filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig", kubeconfig, "--root-dir", n.RootDir, "--cert-dir", filepath.Join(n.Dir, "pki"),
		"--hostname-override", name, "--node-ip", nodeIP, "--v", "2"}
	if err := n.startKubelet(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// startKubelet starts the node's kubelet and waits until the node is Ready.
func (n *Node) startKubelet(ctx context.Context) error {
	c, name := n.c, n.kubeletName()
	if err := c.run(name, n.kubelet[0], n.kubelet[1:]...); err != nil {
		return err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if err := c.exited(); err != nil {
			return err
		}
		node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("node %s not Ready after 3m\n%s", n.Name, c.logTail(name))
}

// kubeletName names the kubelet's process and log, one per boot.
func (n *Node) kubeletName() string {
	if n.boots == 0 {
		return n.Name + "-kubelet"
	}
	return fmt.Sprintf("%s-kubelet-boot%d", n.Name, n.boots)
}

// Reboot does to the node what a reboot does to its pods: the kubelet
// stops, every container dies at once, and every mount below the pods
// directory (podkey's tmpfs volumes, projected service-account tokens) is
// gone; then the kubelet starts again with the same configuration and root
// directory, and brings the node's pods back from the API server: new
// sandboxes, new containers, their volumes published again. containerd
// keeps running with its containers dead: its own restart is containerd's
// business, not a node plugin's, and its on-disk state would make the
// test about containerd's recovery instead.
func (n *Node) Reboot(ctx context.Context) error {
	if err := n.c.kill(n.kubeletName()); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "ctr", "--address", n.ContainerdSock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, id := range strings.Fields(string(out)) {
		// A task that ended meanwhile is no error: all that matters is that none runs.
		_ = exec.CommandContext(ctx, "ctr", "--address", n.ContainerdSock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).Run()
	}
	deadline := time.Now().Add(time.Minute)
	for {
		running, err := n.runningTasks(ctx)
		if err != nil {
			return err
		}
		if running == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d containers still run a minute after SIGKILL", running)
		}
		time.Sleep(200 * time.Millisecond)
	}
	unmountBelow(filepath.Join(n.RootDir, "pods"))
	n.boots++
	return n.startKubelet(ctx)
}

// runningTasks counts the node's containers whose task still runs.
func (n *Node) runningTasks(ctx context.Context) (int, error) {
	out, err := exec.CommandContext(ctx, "ctr", "--address", n.ContainerdSock, "-n", "k8s.io", "tasks", "ls").Output()
	if err != nil {
		return 0, fmt.Errorf("list containers: %w", err)
	}
	running := 0
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[2] == "RUNNING" {
			running++
		}
	}
	return running, nil
}

// Import loads docker archives into the node's containerd, where pods
// with imagePullPolicy Never find them.
func (n *Node) Import(ctx context.Context, tars ...string) error {
	for _, t := range tars {
		out, err := exec.CommandContext(ctx, "ctr", "--address", n.ContainerdSock, "-n", "k8s.io", "images", "import", t).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s: %v\n%s", filepath.Base(t), err, out)
		}
	}
	return nil
}

// WriteKubeconfig writes a kubeconfig for token (the admin's when empty).
func (c *Cluster) WriteKubeconfig(path, token string) error {
	if token == "" {
		token = c.AdminToken
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: podkey-e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: user
  user: {token: %q}
contexts:
- name: podkey-e2e
  context: {cluster: podkey-e2e, user: user}
current-context: podkey-e2e
`, c.URL, filepath.Join(c.Dir, "certs", "apiserver.crt"), token)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

func waitFile(path string, timeout time.Duration, exited func() error) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := exited(); err != nil {
			return err
		}
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not appear within %s", path, timeout)
}

// EnableImageDecryption installs containerd's image decoder on the node
// and points its keyprovider configuration at podkey's keyprovider socket
// (podkey-csi --keyprovider-socket), as docs/images.md tells an operator to.
func (n *Node) EnableImageDecryption(decoder, keyproviderSocket string) error {
	dst := filepath.Join(n.OcicryptDir, "ctd-decoder")
	_ = os.Remove(dst)
	if err := os.Symlink(decoder, dst); err != nil {
		return err
	}
	conf := fmt.Sprintf(`{"key-providers": {"podkey": {"grpc": "unix://%s"}}}`+"\n", keyproviderSocket)
	return os.WriteFile(filepath.Join(n.OcicryptDir, "keyprovider.conf"), []byte(conf), 0o644)
}
