package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/e2e/cluster"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

const (
	upstreamDriver = "secrets-store.csi.k8s.io"
	upstreamNS     = "kube-system"
	upstreamDS     = "csi-secrets-store"
	// upstreamPoll is the upstream driver's rotation poll interval here,
	// well inside a one-minute credential's 20 s renewal window.
	upstreamPoll = "5s"
)

// upstreamModule is the upstream driver's module directory, whose deploy/
// manifests are installed as they are published.
func upstreamModule(t testing.TB) string {
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/secrets-store-csi-driver").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(dir))
}

// underUpstreamDriver installs the real upstream secrets-store driver
// v1.5.4 on the node from its published manifests (deploy/: RBAC, the
// CSIDriver with tokenRequests for podkey's audience, the DaemonSet with
// rotation on), switches podkey-csi to serve the provider API too (helm
// upgrade, csi.mode both), and runs pods that mount podkey credentials
// through it: a class refused while podkey is told the driver's rotation
// is off starts once it is told the interval; two pods get different keys;
// a reader sees a rotation of one generation; a deleted pod's key is
// refused; while keyd is down a new pod waits with keyd's reason in its
// event and a running pod keeps its files, and after keyd returns the new
// pod starts and a pod deleted meanwhile is revoked. It removes the
// driver at the end and returns the secrets it saw, for the scan.
func (pc *podkeyCluster) underUpstreamDriver(ctx context.Context, keyd keydv1.KeydClient) [][]byte {
	t := pc.t
	providers := filepath.Join(pc.node.Dir, "secrets-store-providers")
	csiValues := map[string]any{"mode": "both", "providersDir": providers}
	before := time.Now().Add(-time.Second)
	pc.upgrade(ctx, pc.values(map[string]any{"csi": csiValues}))
	pc.waitRegistered(ctx, before)
	pc.installUpstream(ctx, providers)

	// podkey told (by default) that the driver does not rotate: the pod
	// waits with the reason in its event.
	pc.class(ctx, "payments", "upstream", "- {name: ledger-api, kind: apiKey, file: ledger-api.json}\n- {name: mtls, kind: certificate}\n")
	a := pc.podWithDriver(ctx, upstreamDriver, "payments", "upstream-a", "payments", "upstream", readerScript)
	pc.waitEvent(ctx, a, "the secrets-store driver's rotation is off", 90*time.Second)
	before = time.Now().Add(-time.Second)
	csiValues["secretsStoreRotationPollInterval"] = upstreamPoll
	pc.upgrade(ctx, pc.values(map[string]any{"csi": csiValues}))
	pc.waitRegistered(ctx, before)
	logA := pc.waitLog(a, "READY", 3*time.Minute)

	// Two pods, different keys that verify; the files are on the driver's
	// tmpfs.
	b := pc.podWithDriver(ctx, upstreamDriver, "payments", "upstream-b", "payments", "upstream", readerScript)
	logB := pc.waitLog(b, "READY", 2*time.Minute)
	for _, l := range []string{logA, logB} {
		for _, f := range []string{"ledger-api.json", "mtls.key", "mtls.crt", "mtls.ca.crt", "podkey-metadata.json"} {
			if !strings.Contains(l, "FILE "+f+" ") {
				t.Fatalf("a pod under the upstream driver did not read %s:\n%s", f, l)
			}
		}
		if !strings.Contains(l, "MOUNT tmpfs /var/run/podkey tmpfs") {
			t.Fatalf("not a tmpfs:\n%s", l)
		}
	}
	var secrets [][]byte
	akA, secretA := pc.apiKey(a, "ledger-api.json")
	akB, secretB := pc.apiKey(b, "ledger-api.json")
	secrets = append(secrets, secretA, secretB, []byte(akA.SecretKey), []byte(akB.SecretKey))
	if akA.AccessKeyID == akB.AccessKeyID {
		t.Fatal("two pods under the upstream driver got the same API key")
	}
	for _, k := range []struct {
		ak     apiKeyFile
		secret []byte
	}{{akA, secretA}, {akB, secretB}} {
		if err := verifyAPIKey(ctx, keyd, k.ak, k.secret); err != nil {
			t.Fatalf("a key delivered by the upstream driver does not verify: %v", err)
		}
	}
	mtls, _ := os.ReadFile(filepath.Join(pc.volumeDir(a), "mtls.key"))
	secrets = append(secrets, mtls)

	// Rotation under a reader: the driver's rotation renews two one-minute
	// keys together, and every set the reader accepts is of one
	// generation.
	pc.class(ctx, "payments", "upstream-rotating", "- {name: k1, kind: apiKey, ttl: 1m}\n- {name: k2, kind: apiKey, ttl: 1m}\n")
	r := pc.podWithDriver(ctx, upstreamDriver, "payments", "upstream-rotating", "payments", "upstream-rotating", rotationReader)
	rlog := pc.waitLogOr(r, "ROTATED", 3*time.Minute, func() string { return pc.events(ctx, r) + tail(pc.upstreamLogs()) })
	if strings.Contains(rlog, "MIX") {
		t.Fatalf("a reader under the upstream driver saw a mixed generation:\n%s", rlog)
	}
	t.Logf("rotation through the upstream driver observed; over %d consistent reads", 50*strings.Count(rlog, "OK"))
	pc.deletePod(ctx, r)

	// Deletion revokes, though the driver never tells the provider.
	pc.deletePod(ctx, a)
	deleted := time.Now()
	pc.waitRevoked(ctx, keyd, akA, secretA, deleted, "a pod deleted under the upstream driver")
	t.Logf("the key of a pod deleted under the upstream driver was refused %v after the deletion finished", time.Since(deleted).Round(time.Millisecond))

	// keyd down: a new pod waits with keyd's reason; the running pod keeps
	// its files; a pod deleted meanwhile is revoked once keyd is back.
	pc.stopKeyd(ctx)
	waiting := pc.podWithDriver(ctx, upstreamDriver, "payments", "upstream-c", "payments", "upstream", readerScript)
	pc.waitEvent(ctx, waiting, "podkey-keyd is unreachable", 90*time.Second)
	if _, err := os.ReadFile(filepath.Join(pc.volumeDir(b), "ledger-api.json")); err != nil {
		t.Fatalf("a running pod lost its files while keyd is down: %v", err)
	}
	pc.deletePod(ctx, b)
	pc.startKeyd(ctx)
	pc.waitLog(waiting, "READY", 3*time.Minute)
	pc.waitRevoked(ctx, keyd, akB, secretB, time.Now(), "a pod deleted under the upstream driver while keyd was down")
	akC, secretC := pc.apiKey(waiting, "ledger-api.json")
	secrets = append(secrets, secretC, []byte(akC.SecretKey))
	pc.deletePod(ctx, waiting)
	pc.removeUpstream(ctx)
	return secrets
}

// upstreamLogs is what the upstream driver's containers logged.
func (pc *podkeyCluster) upstreamLogs() string {
	return catFiles(filepath.Join(pc.node.LogsDir, upstreamNS+"_"+upstreamDS+"-*", "*", "*.log"))
}

// waitEvent waits for an event of p that contains msg.
func (pc *podkeyCluster) waitEvent(ctx context.Context, p *corev1.Pod, msg string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(pc.events(ctx, p), msg) {
		if time.Now().After(deadline) {
			pc.t.Fatalf("no event of %s/%s says %q:\n%s", p.Namespace, p.Name, msg, pc.events(ctx, p))
		}
		time.Sleep(time.Second)
	}
}

// waitRevoked waits (2 minutes at most from since) until keyd refuses the
// API key as revoked.
func (pc *podkeyCluster) waitRevoked(ctx context.Context, keyd keydv1.KeydClient, ak apiKeyFile, secret []byte, since time.Time, what string) {
	for {
		err := verifyAPIKey(ctx, keyd, ak, secret)
		if err != nil && strings.Contains(err.Error(), "revoked") {
			return
		}
		if time.Since(since) > 2*time.Minute {
			pc.t.Fatalf("the key of %s was not revoked: %v\n%s", what, err, tail(pc.podkeyLogs()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// installUpstream installs the upstream driver from its deploy/ manifests
// with what this node needs: its image (imported, never pulled), the
// registrar in place of node-driver-registrar, the kubelet's root
// directory, the host network with the API server on loopback (no Service
// proxy here), and rotation on. The CSIDriver is the published one plus
// what docs/node.md asks for: tokenRequests for audience podkey (and
// requiresRepublish).
func (pc *podkeyCluster) installUpstream(ctx context.Context, providers string) {
	t := pc.t
	if err := pc.node.ImportSecretsStore(ctx, "..", filepath.Dir(secretsStoreDriver(t))); err != nil {
		t.Fatal(err)
	}
	mod := upstreamModule(t)
	upstreamCRDs(t)
	for _, f := range []string{"rbac-secretproviderclass.yaml", "rbac-secretproviderrotation.yaml", "rbac-secretprovidertokenrequest.yaml"} {
		if err := pc.c.Apply(ctx, filepath.Join(mod, "deploy", f), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := pc.c.Apply(ctx, filepath.Join(mod, "deploy", "csidriver.yaml"), func(u *unstructured.Unstructured) {
		_ = unstructured.SetNestedSlice(u.Object, []any{map[string]any{"audience": "podkey"}}, "spec", "tokenRequests")
		_ = unstructured.SetNestedField(u.Object, true, "spec", "requiresRepublish")
	}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(mod, "deploy", "secrets-store-csi-driver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(raw, &ds); err != nil {
		t.Fatal(err)
	}
	root := pc.node.RootDir
	kubelet := func(p string) string { return strings.Replace(p, "/var/lib/kubelet", root, 1) }
	_, apiPort, _ := net.SplitHostPort(strings.TrimPrefix(pc.c.URL, "https://"))
	spec := &ds.Spec.Template.Spec
	spec.HostNetwork, spec.NodeSelector = true, map[string]string{"kubernetes.io/hostname": nodeName}
	var containers []corev1.Container
	for _, c := range spec.Containers {
		c.Image, c.ImagePullPolicy, c.Resources = cluster.SecretsStoreImage, corev1.PullNever, corev1.ResourceRequirements{}
		switch c.Name {
		case "node-driver-registrar":
			c.Command = []string{"registrar"}
			c.Args = []string{"--driver-name=" + upstreamDriver, "--kubelet-registration-path=" + kubelet("/var/lib/kubelet/plugins/csi-secrets-store/csi.sock")}
		case "secrets-store":
			c.Command = []string{"secrets-store-csi-driver"}
			var args []string
			for _, a := range c.Args {
				switch {
				case strings.HasPrefix(a, "--enable-secret-rotation="):
					a = "--enable-secret-rotation=true"
				case strings.HasPrefix(a, "--rotation-poll-interval="):
					a = "--rotation-poll-interval=" + upstreamPoll
				case strings.HasPrefix(a, "--metrics-addr="):
					a = "--metrics-addr=127.0.0.1:" + strings.Split(freePort(t), ":")[1]
				}
				args = append(args, a)
			}
			c.Args = args
			c.Ports, c.LivenessProbe = nil, nil // its probe needs the liveness-probe sidecar
			c.Env = append(c.Env, corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: "127.0.0.1"}, corev1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: apiPort})
			for i, m := range c.VolumeMounts {
				c.VolumeMounts[i].MountPath = kubelet(m.MountPath)
			}
		default: // liveness-probe: its image is not here, and nothing probes
			continue
		}
		containers = append(containers, c)
	}
	spec.Containers = containers
	for i, v := range spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		spec.Volumes[i].HostPath.Path = kubelet(v.HostPath.Path)
		if v.Name == "providers-dir-0" {
			spec.Volumes[i].HostPath.Path = providers // podkey's csi.providersDir
		}
	}
	if _, err := pc.c.Admin.AppsV1().DaemonSets(upstreamNS).Create(ctx, &ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !pc.registered(ctx, upstreamDriver) {
		if time.Now().After(deadline) {
			pods, _ := pc.c.Admin.CoreV1().Pods(upstreamNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + upstreamDS})
			var st []string
			for _, p := range pods.Items {
				st = append(st, fmt.Sprintf("%s on %q: %s %+v %+v\n%s", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses, pc.events(ctx, &p)))
			}
			t.Fatalf("the upstream driver did not register on %s: %v", nodeName, st)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// registered reports whether the node's CSINode lists driver.
func (pc *podkeyCluster) registered(ctx context.Context, driver string) bool {
	cn, err := pc.c.Admin.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return false
	}
	for _, d := range cn.Spec.Drivers {
		if d.Name == driver {
			return true
		}
	}
	return false
}

// removeUpstream deletes the upstream driver's DaemonSet and CSIDriver and
// waits until its pods are gone and the node no longer lists it.
func (pc *podkeyCluster) removeUpstream(ctx context.Context) {
	t := pc.t
	if err := pc.c.Admin.AppsV1().DaemonSets(upstreamNS).Delete(ctx, upstreamDS, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)}); err != nil {
		t.Fatal(err)
	}
	if err := pc.c.Admin.StorageV1().CSIDrivers().Delete(ctx, upstreamDriver, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := pc.c.Admin.CoreV1().Pods(upstreamNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + upstreamDS})
		if err == nil && len(pods.Items) == 0 && !pc.registered(ctx, upstreamDriver) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the upstream driver is still on %s", nodeName)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
