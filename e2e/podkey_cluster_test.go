package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/e2e/cluster"
	"github.com/podkey/podkey/internal/node/spc"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/client"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/suite"
)

// podkeyCluster is podkey installed on a real node with `helm install`
// from charts/podkey, as a user installs it: keyd as a Deployment (SoftHSM2
// token initialised on first start, data on a PersistentVolume, TokenReview
// with the chart's least-privileged identity, TLS) and podkey-csi as a
// DaemonSet (privileged, Bidirectional propagation of the kubelet's pods
// directory, built-in registration, mTLS with its node certificate), with
// the CSIDriver object and the SecretProviderClass CRD from the chart.
type podkeyCluster struct {
	t        testing.TB
	c        *cluster.Cluster
	node     *cluster.Node
	bin      string // podkey binaries built for the host (the CLI)
	dir      string
	keydAddr string // keyd on the host network
	dataDir  string // keyd's PersistentVolume (hostPath) on the node

	metricsPort int // podkey-csi's, on the host network
}

// podkeyStarted: one node, and one podkey install on it, per test process.
var podkeyStarted bool

const (
	nodeName = "kube-node-1"
	// podkeyNS is where the chart is installed. (Other tests of the
	// package use the namespace "podkey" for identities of their own.)
	podkeyNS = "podkey-system"
)

func startPodkeyCluster(t testing.TB) *podkeyCluster {
	needRoot(t)
	if podkeyStarted {
		t.Skip("podkey is installed on this process's node already (run the real-node test and the pod-start benchmark in separate go test runs)")
	}
	podkeyStarted = true
	ctx := context.Background()
	pc := &podkeyCluster{t: t, c: sharedCluster(t), bin: binaries(t), dir: t.TempDir()}
	var err error
	if pc.node, err = pc.c.StartNode(ctx, nodeName, 0, ".."); err != nil {
		t.Fatal(err)
	}
	if err := pc.c.StartControllers(".."); err != nil {
		t.Fatal(err)
	}
	if err := pc.node.ImportPodkey(ctx, ".."); err != nil {
		t.Fatal(err)
	}
	pc.keydAddr = freePort(t)
	pc.dataDir = pc.keydVolume(ctx)
	pc.install(ctx, pc.values(nil))
	if out, code := pc.admin("legacy-db-password-e2e", "secret", "put", "payments/legacy-db"); code != 0 {
		t.Fatal(out)
	}
	if err := pc.c.ServiceAccount(ctx, "payments", "payments"); err != nil {
		t.Fatal(err)
	}
	pc.class(ctx, "payments", "payments", `
- {name: ledger-api, kind: apiKey, file: ledger-api.json}
- {name: mtls, kind: certificate, algorithm: sm2}
- {name: card-key, kind: derivedKey}
- {name: legacy-db, kind: secret, file: db-password}
`)
	return pc
}

func (pc *podkeyCluster) class(ctx context.Context, ns, name, objects string) {
	_ = pc.c.Namespace(ctx, ns)
	err := pc.c.SecretProviderClass(ctx, ns, name, map[string]any{"provider": "podkey", "parameters": map[string]any{"objects": objects}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		pc.t.Fatal(err)
	}
}

// admin runs the podkey CLI against keyd's local socket, which lives on
// keyd's data volume: the host's view of `kubectl exec deploy/podkey-keyd
// -- podkey ...` (the API server here cannot reach the kubelet for exec).
func (pc *podkeyCluster) admin(stdin string, args ...string) (string, int) {
	pc.t.Helper()
	return runBinary(pc.t, append(os.Environ(), "PODKEY_SOCKET="+pc.sock()), stdin, filepath.Join(pc.bin, "podkey"), args...)
}

func (pc *podkeyCluster) sock() string { return filepath.Join(pc.dataDir, "keyd.sock") }

// podkeyLogs is what keyd and podkey-csi logged, from the node's log
// directory.
func (pc *podkeyCluster) podkeyLogs() string {
	return catFiles(filepath.Join(pc.node.LogsDir, podkeyNS+"_*", "*", "*.log"))
}

// catFiles is the content of the files matching a glob pattern, one after
// the other.
func catFiles(pattern string) string {
	matches, _ := filepath.Glob(pattern)
	var out strings.Builder
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		out.Write(b)
	}
	return out.String()
}

// readerScript lists the volume with numeric owners and modes, and prints
// a checksum of every file, as the pod sees them.
const readerScript = `cd /var/run/podkey && for f in *; do echo "FILE $f $(stat -L -c '%a %g' $f) $(sha256sum < $f | cut -c1-64)"; done; ` +
	`grep ' /var/run/podkey ' /proc/mounts | sed 's/^/MOUNT /'; echo READY; sleep 3600`

func (pc *podkeyCluster) pod(ctx context.Context, ns, name, sa, class string, withVolume bool) *corev1.Pod {
	spec := corev1.PodSpec{
		NodeName: nodeName, ServiceAccountName: sa, TerminationGracePeriodSeconds: ptr.To[int64](1),
		SecurityContext: &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000)},
		Containers: []corev1.Container{{Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"/bin/sh", "-c", readerScript}}},
	}
	if withVolume {
		spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "creds", MountPath: "/var/run/podkey", ReadOnly: true}}
		spec.Volumes = []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: "csi.podkey.io", ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"secretProviderClass": class}}}}}
	} else {
		spec.Containers[0].Command = []string{"/bin/sh", "-c", "echo READY; sleep 3600"}
	}
	p, err := pc.c.Admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		pc.t.Fatal(err)
	}
	return p
}

// containerLog reads a container's log from the node's log directory.
func (pc *podkeyCluster) containerLog(p *corev1.Pod) string {
	return catFiles(filepath.Join(pc.node.LogsDir, fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID), "app", "*.log"))
}

func (pc *podkeyCluster) waitLog(p *corev1.Pod, marker string, timeout time.Duration) string {
	return pc.waitLogOr(p, marker, timeout, func() string { return "" })
}

// waitLogOr is waitLog that adds why() to the failure.
func (pc *podkeyCluster) waitLogOr(p *corev1.Pod, marker string, timeout time.Duration, why func() string) string {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := pc.containerLog(p); strings.Contains(l, marker) {
			return l
		}
		time.Sleep(250 * time.Millisecond)
	}
	pc.t.Fatalf("pod %s/%s did not log %q in %s\n%s\n%s", p.Namespace, p.Name, marker, timeout, pc.containerLog(p), why())
	return ""
}

func (pc *podkeyCluster) volumeDir(p *corev1.Pod) string {
	return filepath.Join(pc.node.RootDir, "pods", string(p.UID), "volumes", "kubernetes.io~csi", "creds", "mount")
}

func (pc *podkeyCluster) deletePod(ctx context.Context, p *corev1.Pod) {
	if err := pc.c.Admin.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		pc.t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if _, err := pc.c.Admin.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	pc.t.Fatalf("pod %s/%s not gone after 2m", p.Namespace, p.Name)
}

func (pc *podkeyCluster) events(ctx context.Context, p *corev1.Pod) string {
	evs, _ := pc.c.Admin.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "%s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

func TestPodkeyOnARealNode(t *testing.T) {
	pc := startPodkeyCluster(t)
	ctx := context.Background()
	keyd := keydv1.NewKeydClient(mustDial(t, pc.sock()))
	var secrets [][]byte

	// 1. Two replicas read every file from a tmpfs with the expected modes
	// and group, and get different API keys and certificates.
	a := pc.pod(ctx, "payments", "payments-a", "payments", "payments", true)
	b := pc.pod(ctx, "payments", "payments-b", "payments", "payments", true)
	logA := pc.waitLog(a, "READY", 2*time.Minute)
	logB := pc.waitLog(b, "READY", 2*time.Minute)
	// Created right after helm install --wait, neither failed a mount.
	for _, p := range []*corev1.Pod{a, b} {
		if ev := pc.events(ctx, p); strings.Contains(ev, "FailedMount") {
			t.Fatalf("pod %s failed a mount after helm install --wait:\n%s", p.Name, ev)
		}
	}
	pc.lookInside(ctx, b)
	pc.ownersOnANode(ctx)
	pc.tlcpOnANode(ctx)
	secrets = append(secrets, pc.databaseOnANode(ctx)...)
	for _, l := range []string{logA, logB} {
		for _, f := range []string{"ledger-api.json", "mtls.key", "mtls.crt", "mtls.ca.crt", "card-key", "db-password", "podkey-metadata.json"} {
			if !strings.Contains(l, "FILE "+f+" ") {
				t.Fatalf("the pod did not read %s:\n%s", f, l)
			}
		}
		if !strings.Contains(l, "FILE db-password 440 2000") || !strings.Contains(l, "FILE mtls.key 440 2000") {
			t.Fatalf("modes or group:\n%s", l)
		}
		if !strings.Contains(l, "MOUNT tmpfs /var/run/podkey tmpfs") {
			t.Fatalf("not a tmpfs:\n%s", l)
		}
	}
	sum := func(l, f string) string {
		for _, line := range strings.Split(l, "\n") {
			if i := strings.Index(line, "FILE "+f+" "); i >= 0 {
				fields := strings.Fields(line[i:])
				return fields[len(fields)-1]
			}
		}
		return ""
	}
	for _, f := range []string{"ledger-api.json", "mtls.crt", "mtls.key", "card-key"} {
		if sum(logA, f) == sum(logB, f) {
			t.Fatalf("replicas share %s", f)
		}
	}
	if sum(logA, "db-password") != sum(logB, "db-password") {
		t.Fatal("the enrolled secret differs between replicas")
	}
	// The host's view of pod A's volume matches what the pod read.
	dirA := pc.volumeDir(a)
	ak, secret := pc.apiKey(a, "ledger-api.json")
	for _, f := range []string{"mtls.key", "card-key", "db-password"} {
		b, _ := os.ReadFile(filepath.Join(dirA, f))
		secrets = append(secrets, b)
	}
	secrets = append(secrets, secret, []byte(ak.SecretKey))
	if err := verifyAPIKey(ctx, keyd, ak, secret); err != nil {
		t.Fatalf("pod A's key does not verify: %v", err)
	}

	// 3. Deleting the pod unmounts and revokes.
	pc.deletePod(ctx, a)
	if err := verifyAPIKey(ctx, keyd, ak, secret); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a deleted pod's key still verifies: %v", err)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(pc.node.RootDir, "pods", string(a.UID))); os.IsNotExist(err) {
			break
		}
		if i > 120 {
			t.Fatal("the kubelet's directory of the deleted pod remains")
		}
		time.Sleep(250 * time.Millisecond)
	}

	// 4. A service account without a policy rule waits with a clear event;
	// granting the rule lets the same pod start.
	if err := pc.c.ServiceAccount(ctx, "shop", "web"); err != nil {
		t.Fatal(err)
	}
	pc.class(ctx, "shop", "web", "- {name: web-api, kind: apiKey}\n")
	w := pc.pod(ctx, "shop", "web-1", "web", "web", true)
	pc.waitEvent(ctx, w, "policy does not allow service account shop/web", 90*time.Second)
	if out, code := pc.admin("", "policy", "add", "--namespace=shop", "--service-account=web", "--object=web-api"); code != 0 {
		t.Fatal(out)
	}
	pc.waitLog(w, "READY", 3*time.Minute)

	// 6. podkey-csi restarted while pods run: volumes stay readable.
	pc.restartPlugin(ctx)
	if _, err := os.ReadFile(filepath.Join(pc.volumeDir(b), "ledger-api.json")); err != nil {
		t.Fatalf("volume unreadable after a plugin restart: %v", err)
	}
	pc.deletePod(ctx, w)

	// 8. The node reboots (kubelet, podkey-csi and every container killed,
	// every tmpfs gone): the running pod comes back with a fresh volume
	// and its old credentials no longer verify.
	secrets = append(secrets, pc.rebootNode(ctx, keyd, b)...)

	// 9. An operator forces fresh credentials for the pod (a suspected
	// leak): its key is refused at once, and its volume holds a new one
	// after the kubelet's next republish.
	secrets = append(secrets, pc.forceRenewal(ctx, keyd, b)...)

	// 2. Rotation: two API keys of a one-minute life are renewed together
	// while a reader in the pod, following the documented protocol, checks
	// that every set it accepts is of one generation.
	pc.class(ctx, "payments", "rotating", "- {name: k1, kind: apiKey, ttl: 1m}\n- {name: k2, kind: apiKey, ttl: 1m}\n")
	r := pc.podWithScript(ctx, "payments", "rotating", "payments", "rotating", rotationReader)
	rlog := pc.waitLog(r, "ROTATED", 3*time.Minute)
	if strings.Contains(rlog, "MIX") {
		t.Fatalf("a reader saw a mixed generation:\n%s", rlog)
	}
	t.Logf("rotation observed; over %d consistent reads", 50*strings.Count(rlog, "OK"))

	// API access keys end to end: a workload pod calls a backend pod with
	// signed requests through rotation; replays, expired copies and the
	// keys of deleted pods are refused.
	pc.signedRequests(ctx)

	// 5. keyd down: a new pod waits with a clear event and starts once keyd
	// is back; running pods keep their files; a pod deleted meanwhile is
	// revoked after keyd returns.
	rk, rsecret := pc.apiKey(r, "k1")
	secrets = append(secrets, rsecret)
	pc.stopKeyd(ctx)
	waiting := pc.pod(ctx, "payments", "payments-c", "payments", "payments", true)
	// A pod whose only object is optional starts without it and gets it
	// once keyd is back.
	pc.class(ctx, "payments", "optional", "- {name: legacy-db, kind: secret, file: db-late, optional: true}")
	optional := pc.podWithScript(ctx, "payments", "payments-optional", "payments", "optional", optionalScript)
	pc.waitLog(optional, "MISSING-NOTED", 90*time.Second)
	pc.waitEvent(ctx, waiting, "podkey-keyd is unreachable", 90*time.Second)
	if _, err := os.ReadFile(filepath.Join(pc.volumeDir(b), "db-password")); err != nil {
		t.Fatalf("a running pod lost its files while keyd is down: %v", err)
	}
	pc.deletePod(ctx, r) // revocation is queued on the node
	pc.startKeyd(ctx)
	pc.waitLog(waiting, "READY", 3*time.Minute)
	pc.waitLog(optional, "FILLED", 2*time.Minute)
	pc.waitRevoked(ctx, keyd, rk, rsecret, time.Now(), "the pod deleted while keyd was down")
	pc.deletePod(ctx, waiting)
	pc.deletePod(ctx, optional)

	// Encrypted images pulled by the kubelet through containerd's decoder
	// and podkey-csi's keyprovider.
	secrets = append(secrets, pc.encryptedImages(ctx)...)

	// podkey as a provider of the real upstream secrets-store driver,
	// installed on the node from its published manifests.
	secrets = append(secrets, pc.underUpstreamDriver(ctx, keyd)...)

	// 7. Scan etcd's data, the kubelet's and containerd's state and every
	// podkey log for the secrets the pods received.
	pc.deletePod(ctx, b)

	pc.scan(secrets)

	// A CA rotation reaches the running plugin without a restart: keyd
	// republishes its CA ConfigMap, the kubelet updates the plugin's file,
	// and after keyd restarts with a certificate from the new CA the same
	// podkey-csi pod still verifies it.
	pc.rotateCA(ctx)

	// helm upgrade to changed values: podkey-csi rolls, and a new pod's
	// tmpfs has the new size; keyd keeps its keys (a credential issued
	// before still verifies).
	before := time.Now().Add(-time.Second)
	pc.upgrade(ctx, pc.values(map[string]any{"csi": map[string]any{"tmpfsSize": "8Mi", "logLevel": "debug"}, "keyd": map[string]any{"logLevel": "debug"}}))
	pc.waitRegistered(ctx, before)
	pc.waitKeydSocket()
	up := pc.pod(ctx, "payments", "after-upgrade", "payments", "payments", true)
	if l := pc.waitLog(up, "READY", 2*time.Minute); !strings.Contains(l, "size=8192k") {
		t.Fatalf("the upgraded tmpfs size is not in use:\n%s", l)
	}
	c := keydv1.NewKeydClient(mustDial(t, pc.sock()))
	if err := verifyAPIKey(ctx, c, ak, secret); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("after the upgrade keyd forgot a revocation: %v", err)
	}
	pc.deletePod(ctx, up)

	// keyd goes from one replica on bbolt to three on PostgreSQL, its
	// state migrated; a keyd pod deleted under load delays no pod.
	pc.toReplicas(ctx)

	// helm uninstall leaves no podkey object behind (the SecretProviderClass
	// CRD is kept on purpose) and the node no longer lists the driver.
	pc.uninstall(ctx)
	deadline := time.Now().Add(2 * time.Minute)
	for left := pc.leftovers(ctx); len(left) > 0; left = pc.leftovers(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("after helm uninstall: %v", left)
		}
		time.Sleep(time.Second)
	}
	dyn, err := pc.c.Dynamic()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(spc.GVR).Namespace("payments").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("the SecretProviderClass CRD was not kept: %v", err)
	}
}

// apiKeyFile is an API key file as a pod reads it.
type apiKeyFile struct{ AccessKeyID, SecretKey string }

// verifyAPIKey asks keyd to verify a signature made with an intl API key.
func verifyAPIKey(ctx context.Context, keyd keydv1.KeydClient, ak apiKeyFile, secret []byte) error {
	msg := []byte("GET /ledger")
	_, err := keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyID, StringToSign: msg,
		Signature: accesskey.Sign(suite.Intl, secret, msg)})
	return err
}

// apiKey reads an API key file of p's volume, as the node holds it.
func (pc *podkeyCluster) apiKey(p *corev1.Pod, file string) (ak apiKeyFile, secret []byte) {
	raw, err := os.ReadFile(filepath.Join(pc.volumeDir(p), file))
	if err != nil {
		pc.t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &ak); err != nil {
		pc.t.Fatalf("%s: %v", file, err)
	}
	if secret, err = base64.RawURLEncoding.DecodeString(ak.SecretKey); err != nil {
		pc.t.Fatalf("%s: %v", file, err)
	}
	return ak, secret
}

// rebootNode reboots the node while p runs and checks what a bank's
// operator expects of it: p comes back (same pod, new sandbox and
// container) with its volume on a new tmpfs holding a new API key that
// verifies, while the key p held before the reboot, which left the node
// with nothing to unpublish, is revoked by podkey-csi's restart recovery.
// It returns both keys' secrets for the scan.
func (pc *podkeyCluster) rebootNode(ctx context.Context, keyd keydv1.KeydClient, p *corev1.Pod) [][]byte {
	t := pc.t
	verify := func(ak apiKeyFile, secret []byte) error { return verifyAPIKey(ctx, keyd, ak, secret) }
	old, oldSecret := pc.apiKey(p, "ledger-api.json")
	if err := verify(old, oldSecret); err != nil {
		t.Fatalf("before the reboot the pod's key does not verify: %v", err)
	}
	if err := pc.node.Reboot(ctx); err != nil {
		t.Fatalf("reboot: %v\n%s", err, pc.diagnose(ctx))
	}
	deadline := time.Now().Add(4 * time.Minute)
	for strings.Count(pc.containerLog(p), "READY") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("pod %s did not come back after the reboot:\n%s\n%s", p.Name, pc.events(ctx, p), pc.diagnose(ctx))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if l := pc.containerLog(p); strings.Count(l, "MOUNT tmpfs /var/run/podkey tmpfs") < 2 {
		t.Fatalf("after the reboot the volume is not a tmpfs:\n%s", l)
	}
	pc.waitKeydSocket()
	fresh, freshSecret := pc.apiKey(p, "ledger-api.json")
	if fresh.AccessKeyID == old.AccessKeyID {
		t.Fatal("after the reboot the pod has its old API key")
	}
	if err := verify(fresh, freshSecret); err != nil {
		t.Fatalf("after the reboot the pod's fresh key does not verify: %v", err)
	}
	pc.waitRevoked(ctx, keyd, old, oldSecret, time.Now(), "the pod before the reboot")
	pc.waitRegistered(ctx, time.Time{})
	t.Logf("reboot: pod %s came back with a fresh key; the old one is revoked", p.Name)
	return [][]byte{oldSecret, freshSecret, []byte(old.SecretKey), []byte(fresh.SecretKey)}
}

// forceRenewal runs `podkey renew --pod-uid` for p and checks that its
// API key is refused at once and replaced in its volume by the kubelet's
// next republish, with a key that verifies. It returns both secrets.
func (pc *podkeyCluster) forceRenewal(ctx context.Context, keyd keydv1.KeydClient, p *corev1.Pod) [][]byte {
	t := pc.t
	verify := func(ak apiKeyFile, secret []byte) error { return verifyAPIKey(ctx, keyd, ak, secret) }
	old, oldSecret := pc.apiKey(p, "ledger-api.json")
	if err := verify(old, oldSecret); err != nil {
		t.Fatalf("before the renewal the pod's key does not verify: %v", err)
	}
	start := time.Now()
	if out, code := pc.admin("", "renew", "--pod-uid", string(p.UID)); code != 0 || !strings.Contains(out, "renewal") {
		t.Fatalf("podkey renew: %d %s", code, out)
	}
	if err := verify(old, oldSecret); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("right after podkey renew the old key: %v", err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		fresh, freshSecret := pc.apiKey(p, "ledger-api.json")
		if fresh.AccessKeyID != old.AccessKeyID {
			if err := verify(fresh, freshSecret); err != nil {
				t.Fatalf("the renewed key: %v", err)
			}
			t.Logf("forced renewal: the volume held a new key %s after the order", time.Since(start).Round(time.Second))
			return [][]byte{oldSecret, freshSecret}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the volume was not renewed within 3 minutes of podkey renew:\n%s", pc.podkeyLogs())
		}
		time.Sleep(time.Second)
	}
}

// rotateCA rotates keyd's intl CA, waits for the new bundle to reach the
// running podkey-csi pod's mounted file, restarts keyd (whose serving
// certificate then comes from the new CA), and checks that a new pod gets
// its volume through the same, unrestarted plugin pod.
func (pc *podkeyCluster) rotateCA(ctx context.Context) {
	t := pc.t
	before, err := pc.c.Admin.CoreV1().Pods(podkeyNS).List(ctx, metav1.ListOptions{LabelSelector: csiSelector})
	if err != nil || len(before.Items) != 1 {
		t.Fatalf("podkey-csi pods: %v %v", before, err)
	}
	plugin := before.Items[0]
	if out, code := pc.admin("", "hsm", "rotate", "ca"); code != 0 {
		t.Fatal(out)
	}
	file := filepath.Join(pc.node.RootDir, "pods", string(plugin.UID), "volumes", "kubernetes.io~configmap", "keyd-ca", "ca.crt")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(file)
		if strings.Count(string(b), "BEGIN CERTIFICATE") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated CA bundle did not reach podkey-csi's file %s:\n%s", file, b)
		}
		time.Sleep(time.Second)
	}
	pc.stopKeyd(ctx)
	pc.startKeyd(ctx)
	p := pc.pod(ctx, "payments", "after-ca-rotation", "payments", "payments", true)
	pc.waitLog(p, "READY", 3*time.Minute)
	after, err := pc.c.Admin.CoreV1().Pods(podkeyNS).Get(ctx, plugin.Name, metav1.GetOptions{})
	if err != nil || after.UID != plugin.UID || after.Status.ContainerStatuses[0].RestartCount != plugin.Status.ContainerStatuses[0].RestartCount {
		t.Fatalf("podkey-csi was restarted: %v %+v", err, after.Status.ContainerStatuses)
	}
	pc.deletePod(ctx, p)
}

// median is the middle value of v (the upper one of an even count).
func median[T cmp.Ordered](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// rotationReader resolves ..data once per read, reads both keys from that
// generation, accepts the read only if the generation still exists, and
// reports a set whose expiries differ (keys renewed together share one).
const rotationReader = `cd /var/run/podkey; first=""; n=0
while true; do
  d=$(readlink ..data)
  e1=$(grep -o '"expiry":"[^"]*"' $d/k1 2>/dev/null); e2=$(grep -o '"expiry":"[^"]*"' $d/k2 2>/dev/null)
  if [ -d "$d" ] && [ -n "$e1" ]; then
    if [ "$e1" != "$e2" ]; then echo "MIX $e1 $e2"; fi
    n=$((n+1)); if [ $((n % 50)) = 0 ]; then echo "OK $n"; fi
    if [ -z "$first" ]; then first=$e1; echo READY; elif [ "$e1" != "$first" ]; then echo "ROTATED $first -> $e1"; first=$e1; fi
  fi
  sleep 0.05
done`

// optionalScript starts while its optional object is missing (the
// metadata says so) and reports when the file appears.
const optionalScript = `m=/var/run/podkey
grep -q '"missing"' $m/podkey-metadata.json && echo MISSING-NOTED
while [ ! -e $m/db-late ]; do sleep 1; done
echo FILLED; sleep 3600`

func (pc *podkeyCluster) podWithScript(ctx context.Context, ns, name, sa, class, script string) *corev1.Pod {
	return pc.podWithDriver(ctx, "csi.podkey.io", ns, name, sa, class, script)
}

// podWithDriver runs script in a pod whose volume "creds", mounted at
// /var/run/podkey, is class through the CSI driver named.
func (pc *podkeyCluster) podWithDriver(ctx context.Context, driver, ns, name, sa, class, script string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
		NodeName: nodeName, ServiceAccountName: sa, TerminationGracePeriodSeconds: ptr.To[int64](1),
		SecurityContext: &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000)},
		Containers: []corev1.Container{{Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command:      []string{"/bin/sh", "-c", script},
			VolumeMounts: []corev1.VolumeMount{{Name: "creds", MountPath: "/var/run/podkey", ReadOnly: true}}}},
		Volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: driver, ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"secretProviderClass": class}}}}},
	}}
	p, err := pc.c.Admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		pc.t.Fatal(err)
	}
	return p
}

func mustDial(t testing.TB, sock string) *grpc.ClientConn {
	conn, err := keydclient.Dial(keydclient.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// scan reads every file under etcd's, the kubelet's and containerd's
// directories and the podkey logs, looking for each secret.
func (pc *podkeyCluster) scan(secrets [][]byte) {
	t := pc.t
	var roots []string
	roots = append(roots, filepath.Join(pc.c.Dir, "etcd"), pc.node.RootDir, filepath.Join(pc.node.Dir, "containerd"), pc.node.LogsDir)
	logs := pc.podkeyLogs()
	files := 0
	for _, root := range roots {
		_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err != nil || !info.Mode().IsRegular() || info.Size() > 64<<20 {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			files++
			for _, s := range secrets {
				if len(s) >= 8 && bytes.Contains(b, s) {
					t.Fatalf("a secret (%d bytes) was found in %s", len(s), path)
				}
			}
			return nil
		})
	}
	for _, s := range secrets {
		if len(s) >= 8 && strings.Contains(logs, string(s)) {
			t.Fatalf("a secret (%d bytes) was found in podkey's logs", len(s))
		}
	}
	// No service-account token (a JWT) in podkey's logs or the kubelet's:
	// pod tokens reach podkey-csi in the CSI secrets field, node tokens on
	// a projected volume, and neither is ever logged.
	kubelet, _ := os.ReadFile(filepath.Join(pc.c.Dir, nodeName+"-kubelet.log"))
	for name, l := range map[string]string{"podkey's logs": logs, "the kubelet's log": string(kubelet)} {
		if m := jwtPattern.FindString(l); m != "" {
			t.Fatalf("a token (%d characters) was found in %s", len(m), name)
		}
	}
	if files == 0 || len(kubelet) == 0 {
		t.Fatal("scanned nothing")
	}
	t.Logf("scanned %d files and %d log bytes for %d secrets, and %d log bytes for tokens", files, len(logs), len(secrets), len(logs)+len(kubelet))
}

// jwtPattern matches a JWT's header and payload (both base64url JSON).
var jwtPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}`)

func (pc *podkeyCluster) examplePod(ctx context.Context, name, class string, cmd ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
		NodeName: nodeName, ServiceAccountName: "payments", HostNetwork: true, TerminationGracePeriodSeconds: ptr.To[int64](1),
		SecurityContext: &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2000)},
		Containers: []corev1.Container{{Name: "app", Image: cluster.ExamplesImage, ImagePullPolicy: corev1.PullNever, Command: cmd,
			VolumeMounts: []corev1.VolumeMount{{Name: "creds", MountPath: "/var/run/podkey", ReadOnly: true}}}},
		Volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: "csi.podkey.io", ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"secretProviderClass": class}}}}},
	}}
	p, err := pc.c.Admin.CoreV1().Pods("payments").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		pc.t.Fatal(err)
	}
	return p
}

// signedRequests runs the example backend and workload as pods (host
// network, talking over 127.0.0.1) and checks issue 6's scenario.
func (pc *podkeyCluster) signedRequests(ctx context.Context) {
	t := pc.t
	pc.class(ctx, "payments", "backend", "- {name: mtls, kind: certificate, algorithm: ecdsa-p256}\n")
	pc.class(ctx, "payments", "workload", "- {name: ledger-api, kind: apiKey, ttl: 1m}\n")
	port := strings.Split(freePort(t), ":")[1]
	backendURL := "http://127.0.0.1:" + port
	backend := pc.examplePod(ctx, "ledger-backend", "backend", "/bin/example-backend", "--listen", "127.0.0.1:"+port,
		"--keyd-addr", pc.keydAddr, "--keyd-server-name", "127.0.0.1")
	pc.waitLog(backend, "serving on", 2*time.Minute)
	workload := pc.examplePod(ctx, "ledger-client", "workload", "/bin/example-workload", "--url", backendURL+"/v1/ping")
	pc.waitLog(workload, "OK", 2*time.Minute)

	vol, err := client.Open(pc.volumeDir(workload))
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	send := func(k client.APIKey, when time.Time, twice bool) []string {
		r, _ := http.NewRequest("GET", backendURL+"/v1/accounts", nil)
		if err := reqsign.Sign(r, k.Suite, k.ID, k.Secret, when); err != nil {
			t.Fatal(err)
		}
		var out []string
		for i := 0; i < 1+btoi(twice); i++ {
			resp, err := http.DefaultClient.Do(r.Clone(ctx))
			if err != nil {
				t.Fatal(err)
			}
			var ref apikey.Refusal
			_ = json.NewDecoder(resp.Body).Decode(&ref)
			resp.Body.Close()
			out = append(out, fmt.Sprintf("%d %s", resp.StatusCode, ref.Error))
		}
		return out
	}
	copied, err := vol.APIKey("ledger-api") // a key copied out of the pod
	if err != nil {
		t.Fatal(err)
	}
	if got := send(copied, time.Now(), true); got[0] != "200 " || got[1] != "401 "+apikey.ReasonReplayed {
		t.Fatalf("fresh then replayed: %v", got)
	}
	// Rotation mid-stream: the workload keeps calling through a renewal.
	wlog := pc.waitLog(workload, "KEY", time.Minute)
	deadline := time.Now().Add(3 * time.Minute)
	for strings.Count(wlog, "KEY ") < 2 || time.Now().Before(copied.Expiry.Add(time.Second)) {
		if time.Now().After(deadline) {
			t.Fatalf("no rotation observed by the workload:\n%s", tail(wlog))
		}
		time.Sleep(time.Second)
		wlog = pc.containerLog(workload)
	}
	if strings.Contains(wlog, "FAIL") {
		t.Fatalf("a signed request failed across rotation:\n%s", tail(wlog))
	}
	t.Logf("workload: %d signed calls across %d keys, none failed", strings.Count(wlog, "OK "), strings.Count(wlog, "KEY "))
	if got := send(copied, time.Now(), false); got[0] != "401 "+apikey.ReasonExpired {
		t.Fatalf("an expired copied key: %v", got)
	}
	current, err := vol.APIKey("ledger-api")
	if err != nil {
		t.Fatal(err)
	}
	pc.deletePod(ctx, workload)
	if got := send(current, time.Now(), false); got[0] != "403 "+apikey.ReasonRevoked {
		t.Fatalf("a deleted pod's key: %v", got)
	}
	pc.deletePod(ctx, backend)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}
