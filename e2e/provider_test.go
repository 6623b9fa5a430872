package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/internal/node/spc"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// secretsStoreDriver builds (once, cached) the upstream secrets-store CSI
// driver v1.5.4 and returns its binary.
func secretsStoreDriver(t testing.TB) string {
	return filepath.Join(hackOutput(t, "secrets-store-driver.sh"), "secrets-store-csi-driver")
}

// hackOutput runs a hack/ script that builds a pinned tool (once, cached)
// and returns what it prints: where the tool is.
func hackOutput(t testing.TB, script string) string {
	t.Helper()
	out, err := exec.Command("../hack/" + script).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("hack/%s: %v\n%s", script, err, ee.Stderr)
		}
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// upstreamCRDs installs the upstream driver's two CRDs from its module.
func upstreamCRDs(t testing.TB) {
	ctx := context.Background()
	for _, f := range []string{"secretproviderclasses", "secretproviderclasspodstatuses"} {
		if err := sharedCluster(t).InstallCRD(ctx, filepath.Join(upstreamModule(t), "config/crd/bases/secrets-store.csi.x-k8s.io_"+f+".yaml")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPodkeyProviderUnderTheUpstreamDriver: the real upstream
// secrets-store driver (v1.5.4, built from the module proxy) and
// podkey-csi --mode provider as processes, the driver reading classes from
// the real API server: a publish the kubelet would make mounts the
// driver's tmpfs holding podkey's files, whose API key verifies through
// keyd; two pods get different keys; a class with secretObjects and a
// publish without a podkey token are refused with messages that say what
// to change.
func TestPodkeyProviderUnderTheUpstreamDriver(t *testing.T) {
	needRoot(t)
	driver := secretsStoreDriver(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := sharedCluster(t)
	upstreamCRDs(t)
	w := newWorld(t)
	w.startKeyd(ctx)
	kubeconfig := filepath.Join(w.dir, "admin.kubeconfig")
	if err := c.WriteKubeconfig(kubeconfig, ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Namespace(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	dyn, err := c.Dynamic()
	if err != nil {
		t.Fatal(err)
	}
	for name, extra := range map[string]map[string]any{
		"provider-creds":  nil,
		"provider-synced": {"secretObjects": []any{map[string]any{"secretName": "copy", "type": "Opaque", "data": []any{map[string]any{"objectName": "ledger-api", "key": "k"}}}}},
	} {
		specMap := map[string]any{"provider": "podkey", "parameters": map[string]any{"objects": "- {name: ledger-api, kind: apiKey, file: ledger-api.json}\n- {name: mtls, kind: certificate}\n"}}
		for k, v := range extra {
			specMap[k] = v
		}
		_ = dyn.Resource(spc.GVR).Namespace("payments").Delete(ctx, name, metav1.DeleteOptions{})
		if err := c.SecretProviderClass(ctx, "payments", name, specMap); err != nil {
			t.Fatal(err)
		}
	}

	// The driver's CSIDriver as docs/node.md asks for it: its rotation
	// requests the pods' tokens for the audiences it names.
	if _, err := c.Admin.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: upstreamDriver},
		Spec: storagev1.CSIDriverSpec{PodInfoOnMount: ptr.To(true), AttachRequired: ptr.To(false),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral},
			TokenRequests:        []storagev1.TokenRequest{{Audience: "podkey"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Admin.StorageV1().CSIDrivers().Delete(context.Background(), upstreamDriver, metav1.DeleteOptions{})
	})
	providers := filepath.Join(w.dir, "providers")
	_ = os.MkdirAll(providers, 0o755)
	metrics := freePort(t)
	prov := exec.CommandContext(ctx, filepath.Join(w.bin, "podkey-csi"), "--mode", "provider", "--node-name", "node-1",
		"--provider-socket", filepath.Join(providers, "podkey.sock"), "--state-dir", filepath.Join(w.dir, "provider-state"), "--pods-dir", filepath.Join(w.dir, "pods"),
		"--keyd-socket", w.sock(), "--kubeconfig", kubeconfig, "--registration-dir", "", "--metrics-addr", metrics, "--secrets-store-rotation-poll-interval", "1s", "--log-format", "json", "--log-level", "debug")
	provLog := &syncBuffer{}
	prov.Env, prov.Stderr = w.env, provLog
	if err := prov.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prov.Process.Kill(); _ = prov.Wait() })
	waitHealthy(t, metrics, provLog)

	endpoint := filepath.Join(w.dir, "secrets-store.sock")
	drv := exec.CommandContext(ctx, driver, "--endpoint", "unix://"+endpoint, "--nodeid", "node-1", "--provider-volume", providers,
		"--additional-provider-volume-paths", "", "--metrics-addr", freePort(t), "-v", "2",
		"--enable-secret-rotation", "--rotation-poll-interval", "1s")
	drvLog := &syncBuffer{}
	drv.Env, drv.Stderr, drv.Stdout = append(os.Environ(), "KUBECONFIG="+kubeconfig), drvLog, drvLog
	if err := drv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = drv.Process.Kill(); _ = drv.Wait() })
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(endpoint); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the upstream driver did not start:\n%s", drvLog)
		}
	}
	node := csiClient(t, endpoint)
	keyd := keydv1.NewKeydClient(mustDial(t, w.sock()))
	if err := c.Node(ctx, "node-1"); err != nil {
		t.Fatal(err)
	}
	// Pods in the API, on this node, for the provider's pod watch.
	pods := map[string]string{} // name by UID
	if err := c.ServiceAccount(ctx, "payments", "payments"); err != nil {
		t.Fatal(err)
	}
	podUID := func(name string) string {
		// Declaring the volume as a pod does lets the driver's rotation
		// reconciler find it.
		p, err := c.Admin.CoreV1().Pods("payments").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, podSeq.Add(1))},
			Spec: corev1.PodSpec{ServiceAccountName: "payments", NodeName: "node-1", AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "app", Image: "pause", ImagePullPolicy: corev1.PullNever,
					VolumeMounts: []corev1.VolumeMount{{Name: "creds", MountPath: "/var/run/secrets", ReadOnly: true}}}},
				Volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
					Driver: "secrets-store.csi.k8s.io", ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"secretProviderClass": "provider-creds"}}}}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods[string(p.UID)] = p.Name
		return string(p.UID)
	}
	publish := func(uid, class string, withToken bool) (string, error) {
		target := filepath.Join(w.dir, "pods", uid, "volumes", "kubernetes.io~csi", "creds", "mount") // the kubelet's layout
		name := pods[uid]
		if name == "" {
			name = "pay-" + uid
		}
		req := podPublishRequest(target, "payments", name, uid, "payments", "pod-token-"+uid)
		req.VolumeContext["secretProviderClass"] = class
		delete(req.VolumeContext, "csi.storage.k8s.io/ephemeral")
		if !withToken {
			// The driver would request a token itself for the audiences its
			// CSIDriver names; none names podkey's here.
			tok, _ := json.Marshal(map[string]any{"other-audience": map[string]string{"token": "x", "expirationTimestamp": "2030-01-01T00:00:00Z"}})
			req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = string(tok)
		}
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		_, err := node.NodePublishVolume(cctx, req)
		// Whatever the test's outcome, nothing stays mounted.
		t.Cleanup(func() { _ = exec.Command("umount", target).Run() })
		return target, err
	}
	unpublish := func(uid, target string) {
		t.Helper()
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uid, TargetPath: target}); err != nil {
			t.Fatalf("unpublish through the upstream driver: %v", err)
		}
		if mountOptions(t, target) != "" {
			t.Fatalf("%s is still mounted after unpublish", target)
		}
	}
	uidA, uidB := podUID("prov-a"), podUID("prov-b")
	a, err := publish(uidA, "provider-creds", true)
	if err != nil {
		t.Fatalf("publish through the upstream driver: %v\n%s\n%s", err, drvLog, provLog)
	}
	b, err := publish(uidB, "provider-creds", true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mountOptions(t, a), "tmpfs") {
		t.Fatalf("the upstream driver's target is not a tmpfs: %q", mountOptions(t, a))
	}
	for _, f := range []string{"ledger-api.json", "mtls.key", "mtls.crt", "mtls.ca.crt", "podkey-metadata.json"} {
		if _, err := os.Stat(filepath.Join(a, f)); err != nil {
			t.Fatalf("the driver wrote no %s: %v", f, err)
		}
	}
	verifyVolumeKey(t, keyd, a, uidA)
	verifyVolumeKey(t, keyd, b, uidB)
	// The driver's rotation polls the provider every second with the
	// current object versions; nothing is due, so no poll reaches keyd and
	// the files stay as they are.
	admin := keydv1.NewAdminClient(mustDial(t, w.sock()))
	before, err := admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	keyBefore := readFile(t, filepath.Join(a, "ledger-api.json"))
	// Mount calls answered OK, and those that were not.
	polls := func() (ok, failed int) {
		for _, l := range strings.Split(provLog.String(), "\n") {
			if strings.Contains(l, "/v1alpha1.CSIDriverProvider/Mount") {
				if strings.Contains(l, `"code":"OK"`) {
					ok++
				} else {
					failed++
				}
			}
		}
		return ok, failed
	}
	polled, failedBefore := polls()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ok, failed := polls()
		if failed > failedBefore {
			t.Fatalf("a rotation poll failed:\n%s", tail(provLog.String()))
		}
		if ok >= polled+4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver's rotation did not poll the provider: %d calls\n%s", ok, drvLog)
		}
	}
	after, err := admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Records != before.Records || readFile(t, filepath.Join(a, "ledger-api.json")) != keyBefore {
		t.Fatalf("rotation polls not due reached keyd (%d -> %d audit records) or changed the files", before.Records, after.Records)
	}
	ok, _ := polls()
	t.Logf("%d rotation polls answered without keyd", ok-polled)
	if readFile(t, filepath.Join(a, "ledger-api.json")) == readFile(t, filepath.Join(b, "ledger-api.json")) {
		t.Fatal("two pods got the same API key")
	}
	for name, c := range map[string]struct {
		class     string
		withToken bool
		want      string
	}{
		"a class syncing into Secrets": {"provider-synced", true, "secretObjects"},
		"no podkey token":              {"provider-creds", false, "tokenRequests: [{audience: podkey}]"},
	} {
		_, err := publish("prov-"+strings.ReplaceAll(name, " ", "-"), c.class, c.withToken)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal saying %q", name, err, c.want)
		}
	}
	// The upstream driver never tells a provider that a pod went away; the
	// provider's pod watch does, and revokes.
	keyA := volumeKeyRequest(t, a)
	if err := c.DeletePod(ctx, "payments", pods[uidA]); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for {
		_, err := keyd.Verify(ctx, keyA)
		if status.Code(err) == codes.PermissionDenied {
			t.Logf("the deleted pod's key was refused %v after the deletion", time.Since(deleted).Round(time.Millisecond))
			break
		}
		if time.Since(deleted) > 30*time.Second {
			t.Fatalf("a deleted pod's key, 30 s on: %v\n%s", err, provLog)
		}
		time.Sleep(50 * time.Millisecond)
	}
	verifyVolumeKey(t, keyd, b, uidB)
	unpublish(uidA, a)
	unpublish(uidB, b)
	if strings.Contains(drvLog.String(), "pod-token-"+uidA) || strings.Contains(provLog.String(), "pod-token-"+uidA) {
		t.Fatal("a pod token is in a log")
	}
}

// waitHealthy waits for a podkey-csi's /healthz.
func waitHealthy(t testing.TB, metrics string, log fmt.Stringer) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + metrics + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("podkey-csi did not become healthy:\n%s", log)
		}
	}
}
