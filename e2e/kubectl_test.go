package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/e2e/cluster"
)

// kubectl runs the cluster's kubectl (built with the control plane by
// hack/kube-binaries.sh) as an administrator, as a person would.
func (pc *podkeyCluster) kubectl(ctx context.Context, args ...string) (string, error) {
	cmd, err := pc.kubectlCmd(ctx, args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (pc *podkeyCluster) kubectlCmd(ctx context.Context, args ...string) (*exec.Cmd, error) {
	bin, err := cluster.KubeBinDir("..")
	if err != nil {
		return nil, err
	}
	kc := filepath.Join(pc.dir, "admin.kubeconfig")
	if err := pc.c.WriteKubeconfig(kc, ""); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", kc, "--request-timeout", "30s"}, args...)...)
	return cmd, nil
}

var forwardingRE = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)

// lookInside is what a person does to see into a pod: kubectl exec,
// logs and port-forward, through the API server to the node's kubelet.
func (pc *podkeyCluster) lookInside(ctx context.Context, p *corev1.Pod) {
	t := pc.t
	out, err := pc.kubectl(ctx, "-n", p.Namespace, "exec", p.Name, "--", "cat", "/var/run/podkey/podkey-metadata.json")
	if err != nil || !strings.Contains(out, `"objects"`) {
		t.Fatalf("kubectl exec: %v\n%s", err, out)
	}
	out, err = pc.kubectl(ctx, "-n", p.Namespace, "logs", p.Name)
	if err != nil || !strings.Contains(out, "READY") {
		t.Fatalf("kubectl logs: %v\n%s", err, out)
	}

	web := pc.podWithScript(ctx, p.Namespace, "look-inside-web", p.Spec.ServiceAccountName, "payments",
		`mkdir -p /tmp/www && echo podkey-port-forward > /tmp/www/index.html && echo READY && exec httpd -f -p 8080 -h /tmp/www`)
	defer pc.deletePod(ctx, web)
	pc.waitLog(web, "READY", 2*time.Minute)
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd, err := pc.kubectlCmd(fctx, "-n", web.Namespace, "port-forward", "pod/"+web.Name, ":8080")
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	port := ""
	sc := bufio.NewScanner(stdout)
	for port == "" && sc.Scan() {
		if m := forwardingRE.FindStringSubmatch(sc.Text()); m != nil {
			port = m[1]
		}
	}
	if port == "" {
		t.Fatalf("kubectl port-forward did not forward:\n%s", stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%s/", port))
	if err != nil {
		t.Fatalf("through kubectl port-forward: %v\n%s", err, stderr.String())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "podkey-port-forward") {
		t.Fatalf("through kubectl port-forward: %s %q", resp.Status, body)
	}
}

// ownersOnANode runs a pod of two containers as two users, with a class
// giving each its own file (owner and mode 0400): each reads its own and
// is refused the other's.
func (pc *podkeyCluster) ownersOnANode(ctx context.Context) {
	t := pc.t
	pc.class(ctx, "payments", "owners", `
- {name: legacy-db, kind: secret, file: db-password, mode: "0400", owner: {uid: 1001}}
- {name: card-key, kind: derivedKey, mode: "0400", owner: {uid: 1002}}
`)
	script := func(own, other string) string {
		return fmt.Sprintf(`m=/var/run/podkey; id -u
cat $m/%s >/dev/null && echo OWN-READ
cat $m/%s >/dev/null 2>&1 || echo OTHER-REFUSED
echo CHECKED; sleep 3600`, own, other)
	}
	container := func(name string, uid int64, own, other string) corev1.Container {
		return corev1.Container{Name: name, Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command:         []string{"/bin/sh", "-c", script(own, other)},
			SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To(uid), RunAsGroup: ptr.To(uid)},
			VolumeMounts:    []corev1.VolumeMount{{Name: "creds", MountPath: "/var/run/podkey", ReadOnly: true}}}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "payments-owners"}, Spec: corev1.PodSpec{
		NodeName: nodeName, ServiceAccountName: "payments", TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{container("app", 1001, "db-password", "card-key"), container("proxy", 1002, "card-key", "db-password")},
		Volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: "csi.podkey.io", ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"secretProviderClass": "owners"}}}}},
	}}
	p, err := pc.c.Admin.CoreV1().Pods("payments").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.deletePod(ctx, p)
	for _, c := range []struct{ name, uid string }{{"app", "1001"}, {"proxy", "1002"}} {
		dir := filepath.Join(pc.node.LogsDir, fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID), c.name, "*.log")
		var l string
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			if l = catFiles(dir); strings.Contains(l, "CHECKED") {
				break
			}
		}
		if !strings.Contains(l, c.uid) || !strings.Contains(l, "OWN-READ") || !strings.Contains(l, "OTHER-REFUSED") {
			t.Fatalf("container %s:\n%s\n%s", c.name, l, pc.events(ctx, p))
		}
	}
}
