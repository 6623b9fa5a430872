package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// toReplicas moves the installed keyd from one replica on bbolt to three
// on PostgreSQL, as an operator would: a PostgreSQL server outside the
// cluster taking only TLS (on the host, which keyd's host network
// reaches), keyd stopped, `podkey store migrate` from its volume, and a
// helm upgrade to three replicas sharing the token (SoftHSM2's directory
// from keyd's old volume standing in for a network HSM: type pkcs11). A
// pod's key issued before still verifies at every replica; a keyd pod
// deleted while pods are being created delays none of them; the shared
// audit chain verifies.
func (pc *podkeyCluster) toReplicas(ctx context.Context) {
	t := pc.t
	pre := pc.pod(ctx, "payments", "before-replicas", "payments", "payments", true)
	pc.waitLog(pre, "READY", 2*time.Minute)
	preKey, preSecret := pc.apiKey(pre, "ledger-api.json")

	// The database, and the files an operator would put in Secrets: the
	// connection string and the database's CA, as the host and as keyd's
	// pods see them.
	pg := pgtest.StartTLS(t)
	db := pgtest.DatabaseName(pg.NewDatabase(t))
	pgDir := filepath.Join(pc.node.Dir, "keyd-postgres")
	if err := os.MkdirAll(pgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(pg.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	hostDSN := filepath.Join(pgDir, "dsn-host")
	files := map[string]string{
		"ca.pem":   string(ca),
		"dsn":      strings.Replace(pg.TLSConnString(db), pg.CAFile, "/etc/podkey/postgres/ca.pem", 1) + "\n",
		"dsn-host": strings.Replace(pg.TLSConnString(db), pg.CAFile, filepath.Join(pgDir, "ca.pem"), 1) + "\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(pgDir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The token directory, as keyd's pods will see it at /hsm and as the
	// host sees it.
	hsmConf := "directories.tokendir = %s/softhsm-tokens/\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	_ = os.WriteFile(filepath.Join(pc.dataDir, "softhsm2-replicas.conf"), []byte(fmt.Sprintf(hsmConf, "/hsm")), 0o600)
	hostConf := filepath.Join(pc.dir, "softhsm2-host.conf")
	_ = os.WriteFile(hostConf, []byte(fmt.Sprintf(hsmConf, pc.dataDir)), 0o600)
	hostEnv := append(os.Environ(), "SOFTHSM2_CONF="+hostConf, "PODKEY_HSM_TOKEN=podkey", "PODKEY_HSM_PIN_FILE="+filepath.Join(pc.dataDir, "pin"))

	pc.stopKeyd(ctx)
	out, code := runBinary(t, hostEnv, "", filepath.Join(pc.bin, "podkey"), "store", "migrate",
		"--from", filepath.Join(pc.dataDir, "keyd.db"), "--postgres-file", hostDSN)
	if code != 0 {
		t.Fatalf("podkey store migrate: exit %d\n%s", code, out)
	}
	t.Logf("migrated: %s", strings.TrimSpace(out))
	for _, dir := range []string{pc.dataDir, pgDir} {
		if out, err := exec.Command("chown", "-R", "65532:65532", dir).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v %s", err, out)
		}
	}

	base := pc.c.PodkeyValues(pc.node, pc.keydAddr, pc.metricsPort)["keyd"].(map[string]any)
	env := append(base["extraEnv"].([]any), map[string]any{"name": "SOFTHSM2_CONF", "value": "/hsm/softhsm2-replicas.conf"})
	before := time.Now().Add(-time.Second)
	pc.upgrade(ctx, pc.values(map[string]any{"keyd": map[string]any{
		"replicas":    3,
		"store":       map[string]any{"type": "postgres", "postgres": map[string]any{"connectionFile": "/etc/podkey/postgres/dsn"}},
		"hsm":         map[string]any{"type": "pkcs11", "module": "/usr/lib/softhsm/libsofthsm2.so", "tokenLabel": "podkey", "pinFile": "/hsm/pin", "maxSessions": 32},
		"persistence": map[string]any{"enabled": false},
		"extraEnv":    env,
		"extraVolumes": []any{
			map[string]any{"name": "hsm", "hostPath": map[string]any{"path": pc.dataDir, "type": "Directory"}},
			map[string]any{"name": "postgres", "hostPath": map[string]any{"path": pgDir, "type": "Directory"}},
		},
		"extraVolumeMounts": []any{
			map[string]any{"name": "hsm", "mountPath": "/hsm"},
			map[string]any{"name": "postgres", "mountPath": "/etc/podkey/postgres", "readOnly": true},
		},
	}}))
	pc.scaleKeyd(ctx, 3)
	replicas := pc.keydPods(ctx, before)
	if len(replicas) != 3 {
		t.Fatalf("%d keyd replicas after the upgrade:\n%s", len(replicas), pc.diagnose(ctx))
	}
	for _, r := range replicas {
		k := keydv1.NewKeydClient(mustDial(t, pc.replicaSock(r)))
		if err := verifyAPIKey(ctx, k, preKey, preSecret); err != nil {
			t.Fatalf("a key issued on bbolt, at replica %s on PostgreSQL: %v", r.Name, err)
		}
	}

	// Pods created while a keyd pod is deleted all start.
	var pods []*corev1.Pod
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pc.pod(ctx, "payments", fmt.Sprintf("with-replicas-%d", i), "payments", "payments", true)
			mu.Lock()
			pods = append(pods, p)
			mu.Unlock()
		}()
		if i == 2 {
			if err := pc.c.Admin.CoreV1().Pods(podkeyNS).Delete(ctx, replicas[0].Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	for _, p := range pods {
		pc.waitLog(p, "READY", 3*time.Minute)
	}
	t.Logf("%d pods started while keyd pod %s was deleted", len(pods), replicas[0].Name)
	if out, code := runBinary(t, hostEnv, "", filepath.Join(pc.bin, "podkey"), "audit", "verify", "--postgres-file", hostDSN); code != 0 {
		t.Fatalf("the replicas' audit chain: exit %d\n%s", code, out)
	} else {
		t.Logf("%s", strings.TrimSpace(out))
	}
	for _, p := range append(pods, pre) {
		pc.deletePod(ctx, p)
	}
	k := keydv1.NewKeydClient(mustDial(t, pc.replicaSock(replicas[1])))
	if err := verifyAPIKey(ctx, k, preKey, preSecret); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a deleted pod's key at a replica: %v", err)
	}
}

// keydPods are the keyd pods running and ready, created after after.
func (pc *podkeyCluster) keydPods(ctx context.Context, after time.Time) []*corev1.Pod {
	pods, err := pc.c.Admin.CoreV1().Pods(podkeyNS).List(ctx, metav1.ListOptions{LabelSelector: keydSelector})
	if err != nil {
		pc.t.Fatal(err)
	}
	var out []*corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && podReady(p) && p.CreationTimestamp.Time.After(after) {
			out = append(out, p)
		}
	}
	return out
}

// replicaSock is a keyd pod's local socket, on its data volume (an
// emptyDir with replicas) as the node holds it, through a short link: the
// kubelet's path is longer than a socket address may be.
func (pc *podkeyCluster) replicaSock(p *corev1.Pod) string {
	dir := filepath.Join(pc.node.RootDir, "pods", string(p.UID), "volumes", "kubernetes.io~empty-dir", "data")
	link := filepath.Join(os.TempDir(), "pk-"+string(p.UID)[:8])
	_ = os.Remove(link)
	if err := os.Symlink(dir, link); err != nil {
		pc.t.Fatal(err)
	}
	pc.t.Cleanup(func() { os.Remove(link) })
	return filepath.Join(link, "keyd.sock")
}
