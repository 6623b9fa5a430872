package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	"github.com/podkey/podkey/e2e/cluster"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const classYAML = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: payments, namespace: payments}
spec:
  provider: podkey
  parameters:
    objects: |
      - {name: ledger-api, kind: apiKey, file: ledger-api.json}
      - {name: mtls, kind: certificate, algorithm: sm2}
      - {name: card-key, kind: derivedKey}
      - {name: legacy-db, kind: secret, file: db-password}
`

type plugin struct {
	cmd      *exec.Cmd
	socket   string
	metrics  string
	stderr   *syncBuffer
	stateDir string
}

func freePort(t testing.TB) string {
	port, err := cluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// startPlugin runs podkey-csi as a process against the world's keyd, with
// classes from a directory and kubelet registration into regDir.
func (w *world) startPlugin(ctx context.Context, regDir string) *plugin {
	t := w.t
	classes := filepath.Join(w.dir, "classes", "payments")
	_ = os.MkdirAll(classes, 0o755)
	_ = os.WriteFile(filepath.Join(classes, "payments.yaml"), []byte(classYAML), 0o644)
	p := &plugin{socket: filepath.Join(w.dir, "csi", "csi.sock"), metrics: freePort(t), stderr: &syncBuffer{},
		stateDir: filepath.Join(w.dir, "csi-state")}
	p.cmd = exec.CommandContext(ctx, filepath.Join(w.bin, "podkey-csi"), "--node-name", "node-1",
		"--endpoint", p.socket, "--state-dir", p.stateDir, "--pods-dir", w.dir, "--keyd-socket", w.sock(),
		"--secret-provider-class-dir", filepath.Join(w.dir, "classes"), "--registration-dir", regDir,
		"--metrics-addr", p.metrics, "--tmpfs-size", "1Mi", "--log-format", "json", "--log-level", "debug")
	p.cmd.Env = w.env
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() })
	waitHealthy(t, p.metrics, p.stderr)
	return p
}

func needRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root (CI runs as root)")
	}
}

// TestCSISanity runs the csi-sanity suite against the real podkey-csi
// binary, Identity and Node services, with idempotency checks on.
// podkey-csi is a node-only driver of ephemeral volumes: the Controller
// specs are skipped as for every node-only driver, and the node specs that
// need a controller to create volumes skip themselves, so
// TestPluginPublishesRealTmpfs below publishes real volumes.
func TestCSISanity(t *testing.T) {
	needRoot(t)
	w := newWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.startKeyd(ctx)
	p := w.startPlugin(ctx, "")
	cfg := sanity.NewTestConfig()
	cfg.Address = p.socket
	cfg.TargetPath = filepath.Join(w.dir, "sanity-target")
	cfg.StagingPath = filepath.Join(w.dir, "sanity-staging")
	cfg.IdempotentCount = 2
	sc := sanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	// "should remove target path" creates its volume through a controller
	// (CreateVolume) without checking for one; podkey-csi has none.
	suite.SkipStrings = []string{"Controller Server", "GroupController Server", "should remove target path"}
	reporter.NoColor = true
	ginkgo.RunSpecs(t, "podkey-csi sanity", suite, reporter)
	sc.Finalize()
}

func csiClient(t testing.TB, socket string) csi.NodeClient {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csi.NewNodeClient(conn)
}

func publishRequest(target, uid string) *csi.NodePublishVolumeRequest {
	return podPublishRequest(target, "payments", "pay-"+uid, uid, "payments", "pod-token-"+uid)
}

// podPublishRequest is what the kubelet sends for a pod's podkey volume.
func podPublishRequest(target, ns, pod, uid, serviceAccount, token string) *csi.NodePublishVolumeRequest {
	tok, _ := json.Marshal(map[string]any{"podkey": map[string]string{"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
	return &csi.NodePublishVolumeRequest{
		VolumeId: "csi-" + uid, TargetPath: target, Readonly: true,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{VolumeMountGroup: "2000"}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
		},
		VolumeContext: map[string]string{
			"secretProviderClass": "payments", "csi.storage.k8s.io/ephemeral": "true",
			"csi.storage.k8s.io/pod.name": pod, "csi.storage.k8s.io/pod.namespace": ns,
			"csi.storage.k8s.io/pod.uid": uid, "csi.storage.k8s.io/serviceAccount.name": serviceAccount,
			"csi.storage.k8s.io/serviceAccount.tokens": string(tok),
		},
	}
}

// mountOptions returns the options of the mount at target from
// /proc/self/mountinfo, or "" when target is not a mount point.
func mountOptions(t *testing.T, target string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 9 && fields[4] == target {
			sep := 0
			for i, x := range fields {
				if x == "-" {
					sep = i
				}
			}
			return fields[5] + "," + fields[sep+1] + "," + fields[sep+3]
		}
	}
	return ""
}

// TestPluginPublishesRealTmpfs drives the real binary through a kubelet's
// calls: registration handshake, publish onto a real tmpfs, republish,
// restart of the plugin with the volume live, unpublish; then checks the
// metrics, and scans the plugin's logs and state for the secrets it wrote.
func TestPluginPublishesRealTmpfs(t *testing.T) {
	needRoot(t)
	w := newWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.startKeyd(ctx)
	if out, code := w.run("enrolled-secret-e2e", "podkey", "secret", "put", "payments/legacy-db"); code != 0 {
		t.Fatal(out)
	}
	regDir := filepath.Join(w.dir, "plugins_registry")
	p := w.startPlugin(ctx, regDir)
	if _, err := os.Stat(filepath.Join(regDir, "csi.podkey.io-reg.sock")); err != nil {
		t.Fatalf("no registration socket: %v", err)
	}
	node := csiClient(t, p.socket)
	target := filepath.Join(w.dir, "pods", "uid-1", "volumes", "kubernetes.io~csi", "creds", "mount")
	t.Cleanup(func() { _ = syscall.Unmount(target, syscall.MNT_DETACH) }) // if a check fails midway
	req := publishRequest(target, "uid-1")
	for i := 0; i < 2; i++ {
		if _, err := node.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("publish %d: %v\n%s", i, err, p.stderr)
		}
	}
	opts := mountOptions(t, target)
	for _, want := range []string{"nosuid", "nodev", "noexec", "tmpfs", "size=1024k", "gid=2000"} {
		if !strings.Contains(opts, want) {
			t.Fatalf("mount options %q lack %q", opts, want)
		}
	}
	var secrets [][]byte
	secrets = append(secrets, []byte("pod-token-uid-1"))
	for _, f := range []string{"db-password", "card-key", "mtls.key"} {
		b, err := os.ReadFile(filepath.Join(target, f))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, b)
	}
	var ak struct{ SecretKey string }
	b, _ := os.ReadFile(filepath.Join(target, "ledger-api.json"))
	_ = json.Unmarshal(b, &ak)
	secrets = append(secrets, []byte(ak.SecretKey))
	if string(secrets[1]) != "enrolled-secret-e2e" {
		t.Fatalf("secret file %q", secrets[1])
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(target, "db-password"), &st); err != nil || st.Gid != 2000 || st.Mode&0o777 != 0o440 {
		t.Fatalf("db-password gid %d mode %o: %v", st.Gid, st.Mode&0o777, err)
	}

	// Restart the plugin with the volume live: it keeps serving it.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("podkey-csi did not stop cleanly: %v\n%s", err, p.stderr)
	}
	logs := p.stderr.String()
	p = w.startPlugin(ctx, regDir)
	node = csiClient(t, p.socket)
	if !strings.Contains(p.stderr.String(), `"volumes":1`) {
		t.Fatalf("restarted plugin did not load the live volume:\n%s", p.stderr)
	}
	if _, err := node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("republish after restart: %v", err)
	}
	un := &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: target}
	for i := 0; i < 2; i++ {
		if _, err := node.NodeUnpublishVolume(ctx, un); err != nil {
			t.Fatalf("unpublish %d: %v", i, err)
		}
	}
	if mountOptions(t, target) != "" {
		t.Fatal("still mounted after unpublish")
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatal("target remains after unpublish")
	}
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`podkey_csi_publish_total{result="ok"} 1`, `podkey_csi_unpublish_total{result="ok"} 2`,
		"podkey_csi_volumes 0", "podkey_csi_revocation_queue_depth 0", "podkey_csi_publish_duration_seconds_bucket"} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
	logs += p.stderr.String()
	var state bytes.Buffer
	_ = filepath.Walk(p.stateDir, func(path string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			b, _ := os.ReadFile(path)
			state.Write(b)
		}
		return nil
	})
	for _, s := range secrets {
		for _, form := range []string{string(s), base64.StdEncoding.EncodeToString(s)} {
			if strings.Contains(logs, form) || strings.Contains(state.String(), form) || strings.Contains(string(metrics), form) {
				t.Fatalf("a secret of %d bytes appears in the plugin's logs, state or metrics", len(s))
			}
		}
	}
	fmt.Fprintf(os.Stderr, "plugin e2e ok (%d log bytes scanned)\n", len(logs))
}
