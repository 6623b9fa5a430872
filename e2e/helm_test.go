package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/e2e/cluster"
)

const (
	releaseName   = "podkey"
	keydClaim     = "podkey-keyd-data"
	keydSelector  = "app.kubernetes.io/instance=podkey,app.kubernetes.io/component=keyd"
	csiSelector   = "app.kubernetes.io/instance=podkey,app.kubernetes.io/component=csi"
	keydDeployNam = "podkey-keyd"
)

// helm runs the helm pinned in go.mod (go tool helm) against the cluster.
func (pc *podkeyCluster) helm(args ...string) (string, error) {
	pc.t.Helper()
	kc := filepath.Join(pc.dir, "admin.kubeconfig")
	if _, err := os.Stat(kc); err != nil {
		if err := pc.c.WriteKubeconfig(kc, ""); err != nil {
			pc.t.Fatal(err)
		}
	}
	cmd := exec.Command("go", append([]string{"tool", "helm", "--kubeconfig", kc, "--namespace", podkeyNS}, args...)...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(pc.dir, "helm-cache"), "HELM_CONFIG_HOME="+filepath.Join(pc.dir, "helm-config"),
		"HELM_DATA_HOME="+filepath.Join(pc.dir, "helm-data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// values are the chart values for this node (cluster.PodkeyValues) with
// keyd's data on its PersistentVolume and a policy for payments/payments,
// and extra merged one level deep (extra["csi"] into the csi values).
func (pc *podkeyCluster) values(extra map[string]any) string {
	if pc.metricsPort == 0 {
		var err error
		if pc.metricsPort, err = cluster.FreePort(); err != nil {
			pc.t.Fatal(err)
		}
	}
	v := pc.c.PodkeyValues(pc.node, pc.keydAddr, pc.metricsPort)
	keyd := v["keyd"].(map[string]any)
	keyd["persistence"] = map[string]any{"enabled": true, "existingClaim": keydClaim}
	keyd["policy"] = map[string]any{"rules": []any{map[string]any{"namespace": "payments", "serviceAccount": "payments", "objects": []any{"*"}}}}
	for k, e := range extra {
		if m, ok := e.(map[string]any); ok {
			if base, ok := v[k].(map[string]any); ok {
				for kk, vv := range m {
					base[kk] = vv
				}
				continue
			}
		}
		v[k] = e
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		pc.t.Fatal(err)
	}
	f := filepath.Join(pc.dir, fmt.Sprintf("values-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, b, 0o600); err != nil {
		pc.t.Fatal(err)
	}
	return f
}

// keydVolume makes keyd's data a PersistentVolume on the node (hostPath,
// owned by keyd's user) bound to the claim the chart is given, so keyd
// keeps its token, store and audit log across restarts. It returns the
// directory on the host.
func (pc *podkeyCluster) keydVolume(ctx context.Context) string {
	t := pc.t
	dir := filepath.Join(pc.node.Dir, "keyd-data")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	if err := pc.c.Namespace(ctx, podkeyNS); err != nil {
		t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "podkey-e2e-keyd"}, Spec: corev1.PersistentVolumeSpec{
		Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
		AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
		StorageClassName:              "",
		ClaimRef:                      &corev1.ObjectReference{Namespace: podkeyNS, Name: keydClaim},
		PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: ptr.To(corev1.HostPathDirectory)}},
	}}
	if _, err := pc.c.Admin.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: keydClaim}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		StorageClassName: ptr.To(""), VolumeName: pv.Name,
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}}
	if _, err := pc.c.Admin.CoreV1().PersistentVolumeClaims(podkeyNS).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// install runs helm install --wait and waits until the kubelet has
// registered podkey-csi and keyd answers on its socket.
func (pc *podkeyCluster) install(ctx context.Context, valuesFile string) {
	t := pc.t
	start := time.Now()
	out, err := pc.helm("install", releaseName, "charts/podkey", "-f", valuesFile, "--wait", "--timeout", "5m")
	if err != nil {
		t.Fatalf("helm install: %v\n%s\n%s", err, out, pc.diagnose(ctx))
	}
	t.Logf("helm install took %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	// podkey-csi is ready only once the kubelet has registered it, so
	// --wait has waited for that too.
	if !pc.registered(ctx, "csi.podkey.io") {
		t.Fatalf("helm install --wait returned before the kubelet registered csi.podkey.io:\n%s", pc.diagnose(ctx))
	}
	pc.waitRegistered(ctx, time.Time{})
	pc.waitKeydSocket()
}

// waitRegistered waits for the driver on the node's CSINode and, when
// after is set, for a podkey-csi pod started after it to be ready.
func (pc *podkeyCluster) waitRegistered(ctx context.Context, after time.Time) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if pc.csiReady(ctx, after) && pc.registered(ctx, "csi.podkey.io") {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	pc.t.Fatalf("podkey-csi not ready and registered on %s:\n%s", nodeName, pc.diagnose(ctx))
}

func (pc *podkeyCluster) csiReady(ctx context.Context, after time.Time) bool {
	pods, err := pc.c.Admin.CoreV1().Pods(podkeyNS).List(ctx, metav1.ListOptions{LabelSelector: csiSelector})
	if err != nil {
		return false
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.CreationTimestamp.Time.After(after) && podReady(&p) {
			return true
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (pc *podkeyCluster) waitKeydSocket() {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, code := pc.admin("", "policy", "get"); code == 0 {
			return
		}
		if time.Now().After(deadline) {
			pc.t.Fatalf("keyd does not answer on %s:\n%s", pc.sock(), pc.diagnose(context.Background()))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// stopKeyd scales keyd's Deployment to zero and waits for its pod to go.
func (pc *podkeyCluster) stopKeyd(ctx context.Context) { pc.scaleKeyd(ctx, 0) }

// startKeyd scales it back to one and waits until keyd answers.
func (pc *podkeyCluster) startKeyd(ctx context.Context) {
	pc.scaleKeyd(ctx, 1)
	pc.waitKeydSocket()
}

func (pc *podkeyCluster) scaleKeyd(ctx context.Context, n int32) {
	t := pc.t
	deps := pc.c.Admin.AppsV1().Deployments(podkeyNS)
	if _, err := deps.UpdateScale(ctx, keydDeployNam, &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: keydDeployNam, Namespace: podkeyNS},
		Spec: autoscalingv1.ScaleSpec{Replicas: n}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		pods, err := pc.c.Admin.CoreV1().Pods(podkeyNS).List(ctx, metav1.ListOptions{LabelSelector: keydSelector})
		if err == nil {
			ready := 0
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && podReady(&p) {
					ready++
				}
			}
			if (n == 0 && len(pods.Items) == 0) || (n > 0 && ready == int(n)) {
				return
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("keyd did not scale to %d:\n%s", n, pc.diagnose(ctx))
}

// restartPlugin deletes the podkey-csi pod; the DaemonSet starts another,
// which the kubelet registers again.
func (pc *podkeyCluster) restartPlugin(ctx context.Context) {
	t := pc.t
	before := time.Now().Add(-time.Second)
	if err := pc.c.Admin.CoreV1().Pods(podkeyNS).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: csiSelector}); err != nil {
		t.Fatal(err)
	}
	pc.waitRegistered(ctx, before)
}

// upgrade runs helm upgrade --wait with new values.
func (pc *podkeyCluster) upgrade(ctx context.Context, valuesFile string) {
	out, err := pc.helm("upgrade", releaseName, "charts/podkey", "-f", valuesFile, "--wait", "--timeout", "5m")
	if err != nil {
		pc.t.Fatalf("helm upgrade: %v\n%s\n%s", err, out, pc.diagnose(ctx))
	}
}

// uninstall runs helm uninstall --wait.
func (pc *podkeyCluster) uninstall(ctx context.Context) {
	out, err := pc.helm("uninstall", releaseName, "--wait", "--timeout", "5m")
	if err != nil {
		pc.t.Fatalf("helm uninstall: %v\n%s\n%s", err, out, pc.diagnose(ctx))
	}
}

// diagnose describes podkey's pods, their events and recent logs, for a
// failure message (logs of keyd and podkey-csi hold no secrets).
func (pc *podkeyCluster) diagnose(ctx context.Context) string {
	var b strings.Builder
	pods, _ := pc.c.Admin.CoreV1().Pods(podkeyNS).List(ctx, metav1.ListOptions{})
	if pods != nil {
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "pod %s: %s on %q\n", p.Name, p.Status.Phase, p.Spec.NodeName)
			for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
				fmt.Fprintf(&b, "  %s ready=%v restarts=%d state=%+v\n", cs.Name, cs.Ready, cs.RestartCount, cs.State)
			}
			b.WriteString(pc.events(ctx, &p))
		}
	}
	dss, _ := pc.c.Admin.AppsV1().DaemonSets(podkeyNS).List(ctx, metav1.ListOptions{})
	if dss != nil {
		for _, d := range dss.Items {
			fmt.Fprintf(&b, "daemonset %s: desired %d ready %d\n", d.Name, d.Status.DesiredNumberScheduled, d.Status.NumberReady)
		}
	}
	var deps *appsv1.DeploymentList
	deps, _ = pc.c.Admin.AppsV1().Deployments(podkeyNS).List(ctx, metav1.ListOptions{})
	if deps != nil {
		for _, d := range deps.Items {
			fmt.Fprintf(&b, "deployment %s: ready %d/%d %+v\n", d.Name, d.Status.ReadyReplicas, ptr.Deref(d.Spec.Replicas, 1), d.Status.Conditions)
		}
	}
	b.WriteString(tail(pc.podkeyLogs()))
	return b.String()
}

// leftovers lists the objects of the release still in the cluster, by
// the label every chart object carries and by name for the cluster-wide
// ones; a list that fails is reported, never taken for empty. The
// SecretProviderClass CRD is kept on purpose.
func (pc *podkeyCluster) leftovers(ctx context.Context) []string {
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + releaseName}
	var left []string
	add := func(kind string, n int, err error) {
		if err != nil && !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("%s: %v", kind, err))
		} else if n > 0 {
			left = append(left, fmt.Sprintf("%d %s", n, kind))
		}
	}
	cs := pc.c.Admin
	pods, err := cs.CoreV1().Pods(podkeyNS).List(ctx, sel)
	add("pods", len(pods.Items), err)
	deployments, err := cs.AppsV1().Deployments(podkeyNS).List(ctx, sel)
	add("deployments", len(deployments.Items), err)
	replicasets, err := cs.AppsV1().ReplicaSets(podkeyNS).List(ctx, sel)
	add("replicasets", len(replicasets.Items), err)
	daemonsets, err := cs.AppsV1().DaemonSets(podkeyNS).List(ctx, sel)
	add("daemonsets", len(daemonsets.Items), err)
	revisions, err := cs.AppsV1().ControllerRevisions(podkeyNS).List(ctx, sel)
	add("controllerrevisions", len(revisions.Items), err)
	services, err := cs.CoreV1().Services(podkeyNS).List(ctx, sel)
	add("services", len(services.Items), err)
	cms, err := cs.CoreV1().ConfigMaps(podkeyNS).List(ctx, metav1.ListOptions{})
	n := 0
	for _, cm := range cms.Items {
		if cm.Name != "kube-root-ca.crt" {
			n++
		}
	}
	add("configmaps", n, err)
	secrets, err := cs.CoreV1().Secrets(podkeyNS).List(ctx, metav1.ListOptions{})
	n = 0
	for _, s := range secrets.Items {
		if !strings.HasPrefix(s.Name, "sh.helm.release") || s.Labels["name"] == releaseName {
			n++
		}
	}
	add("secrets (helm release records included)", n, err)
	serviceaccounts, err := cs.CoreV1().ServiceAccounts(podkeyNS).List(ctx, sel)
	add("serviceaccounts", len(serviceaccounts.Items), err)
	roles, err := cs.RbacV1().Roles(podkeyNS).List(ctx, sel)
	add("roles", len(roles.Items), err)
	rolebindings, err := cs.RbacV1().RoleBindings(podkeyNS).List(ctx, sel)
	add("rolebindings", len(rolebindings.Items), err)
	clusterroles, err := cs.RbacV1().ClusterRoles().List(ctx, sel)
	add("clusterroles", len(clusterroles.Items), err)
	clusterrolebindings, err := cs.RbacV1().ClusterRoleBindings().List(ctx, sel)
	add("clusterrolebindings", len(clusterrolebindings.Items), err)
	_, err = cs.StorageV1().CSIDrivers().Get(ctx, "csi.podkey.io", metav1.GetOptions{})
	add("csidriver", btoi(err == nil), err)
	if cn, err := cs.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
		for _, d := range cn.Spec.Drivers {
			if d.Name == "csi.podkey.io" {
				left = append(left, "csi.podkey.io still registered on the node")
			}
		}
	}
	return left
}
