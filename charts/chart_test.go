package charts

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// helm runs `go tool helm` (the version go.mod pins) from the repository
// root and returns its output and exit status.
func helm(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	cmd.Dir = ".."
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// render runs helm template and decodes every object.
func render(t *testing.T, values string, args ...string) map[string]*unstructured.Unstructured {
	t.Helper()
	out, errs, code := helm(t, values, append([]string{"template", "podkey", "charts/podkey", "--namespace", "podkey", "-f", "-"}, args...)...)
	if code != 0 {
		t.Fatalf("helm template: exit %d\n%s", code, errs)
	}
	objs := map[string]*unstructured.Unstructured{}
	for _, doc := range strings.Split(out, "\n---") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		if m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		objs[u.GetKind()+"/"+u.GetName()] = u
	}
	return objs
}

func TestLint(t *testing.T) {
	for _, values := range []string{"", "keyd: {hsm: {type: pkcs11, module: /opt/hsm/lib.so, pinFile: /hsm-pin/pin}}\ncsi: {registration: registrar}\nserviceMonitor: {enabled: true}\n"} {
		if out, errs, code := helm(t, values, "lint", "--strict", "charts/podkey", "-f", "-"); code != 0 {
			t.Fatalf("helm lint (values %q): exit %d\n%s%s", values, code, out, errs)
		}
	}
}

func TestDefaults(t *testing.T) {
	objs := render(t, "")
	for _, want := range []string{"Deployment/podkey-keyd", "Service/podkey-keyd", "DaemonSet/podkey-csi", "CSIDriver/csi.podkey.io",
		"ClusterRole/podkey-keyd", "ClusterRole/podkey-csi", "Role/podkey-keyd",
		"CustomResourceDefinition/secretproviderclasses.secrets-store.csi.x-k8s.io"} {
		if objs[want] == nil {
			t.Errorf("%s not rendered", want)
		}
	}
	for k := range objs {
		if strings.HasPrefix(k, "Secret/") {
			t.Errorf("the chart renders a Secret (%s): secrets never go to etcd", k)
		}
	}
	// keyd may create tokenreviews and, for local token verification,
	// read pods and service accounts; nothing else cluster-wide.
	rules, _, _ := unstructured.NestedSlice(objs["ClusterRole/podkey-keyd"].Object, "rules")
	want := `- apiGroups:
  - authentication.k8s.io
  resources:
  - tokenreviews
  verbs:
  - create
- apiGroups:
  - ""
  resources:
  - pods
  - serviceaccounts
  verbs:
  - list
  - watch
`
	if got := toYAML(t, rules); got != want {
		t.Errorf("keyd's cluster rights: %s", got)
	}
	csiRules := toYAML(t, objs["ClusterRole/podkey-csi"].Object["rules"])
	for _, verb := range []string{"create", "update", "delete", "patch", "- secrets\n", "pods"} {
		if strings.Contains(csiRules, verb) {
			t.Errorf("podkey-csi may %s: %s", verb, csiRules)
		}
	}
	// The CSI driver object as the plugin needs it.
	drv := toYAML(t, objs["CSIDriver/csi.podkey.io"].Object["spec"])
	for _, want := range []string{"podInfoOnMount: true", "requiresRepublish: true", "fsGroupPolicy: File", "- Ephemeral", "audience: podkey", "attachRequired: false", "serviceAccountTokenInSecrets: true"} {
		if !strings.Contains(drv, want) {
			t.Errorf("CSIDriver lacks %q:\n%s", want, drv)
		}
	}
	// podkey-csi: privileged (Bidirectional needs it) with the pods
	// directory propagated, the node token for audience podkey-node.
	ds := toYAML(t, objs["DaemonSet/podkey-csi"].Object)
	for _, want := range []string{"privileged: true", "readOnlyRootFilesystem: true", "mountPropagation: Bidirectional",
		"mountPath: /var/lib/kubelet/pods", "audience: podkey-node", "--registration-dir=/registration",
		"--keyd-addr=podkey-keyd.podkey.svc:7443", "name: podkey-ca", "--pods-dir=/var/lib/kubelet/pods", "--max-volume-bytes=64Mi"} {
		if !strings.Contains(ds, want) {
			t.Errorf("DaemonSet lacks %q", want)
		}
	}
	// tmpfs pages count against podkey-csi's memory cgroup: its limit
	// covers the node's volume bytes and its own needs (64Mi).
	containers, _, _ := unstructured.NestedSlice(objs["DaemonSet/podkey-csi"].Object, "spec", "template", "spec", "containers")
	limit, _, _ := unstructured.NestedString(containers[0].(map[string]any), "resources", "limits", "memory")
	if q := resource.MustParse(limit); q.Value() < (64<<20)+(64<<20) {
		t.Errorf("podkey-csi's memory limit %s does not cover --max-volume-bytes 64Mi and its own 64Mi", limit)
	}
	// keyd: not root, nothing writable but its volumes, no capabilities,
	// a SoftHSM2 token initialised on first start.
	dep := toYAML(t, objs["Deployment/podkey-keyd"].Object)
	for _, want := range []string{"runAsNonRoot: true", "readOnlyRootFilesystem: true", "- ALL", "--init-token",
		"--node-service-account=podkey/podkey-csi", "--ca-configmap=podkey/podkey-ca", "type: Recreate"} {
		if !strings.Contains(dep, want) {
			t.Errorf("keyd Deployment lacks %q", want)
		}
	}
	if strings.Contains(dep, "privileged: true") {
		t.Error("keyd is privileged")
	}
}

func TestVendorHSMAndOptions(t *testing.T) {
	objs := render(t, `
keyd:
  hsm: {type: pkcs11, module: /opt/hsm/libvendor.so, tokenLabel: bank, pinFile: /hsm-pin/pin, mechanismsFile: /hsm-pin/mechanisms.yaml}
  extraVolumes: [{name: hsm, hostPath: {path: /opt/hsm}}, {name: hsm-pin, csi: {driver: vault.csi.example, readOnly: true}}]
  extraVolumeMounts: [{name: hsm, mountPath: /opt/hsm, readOnly: true}, {name: hsm-pin, mountPath: /hsm-pin, readOnly: true}]
  persistence: {enabled: true, storageClass: fast, size: 2Gi}
  policy:
    rules: [{namespace: payments, serviceAccount: payments, objects: ["*"]}]
csi: {registration: registrar, keydAddress: keyd.example:7443}
secretProviderClassCRD: {install: false}
serviceMonitor: {enabled: true}
`)
	dep := toYAML(t, objs["Deployment/podkey-keyd"].Object)
	for _, want := range []string{"value: /opt/hsm/libvendor.so", "value: bank", "value: /hsm-pin/pin", "value: /hsm-pin/mechanisms.yaml",
		"mountPath: /hsm-pin", "claimName: podkey-keyd", "--policy-file=/etc/podkey/policy/policy.yaml", "checksum/policy"} {
		if !strings.Contains(dep, want) {
			t.Errorf("keyd Deployment lacks %q", want)
		}
	}
	for _, not := range []string{"--init-token"} {
		if strings.Contains(dep, not) {
			t.Errorf("a vendor HSM install has %q", not)
		}
	}
	if objs["PersistentVolumeClaim/podkey-keyd"] == nil || objs["ConfigMap/podkey-keyd-policy"] == nil || objs["ServiceMonitor/podkey-csi"] == nil {
		t.Error("the PVC, the policy ConfigMap or the ServiceMonitor is missing")
	}
	if objs["CustomResourceDefinition/secretproviderclasses.secrets-store.csi.x-k8s.io"] != nil {
		t.Error("the CRD was rendered with install: false")
	}
	pol, _, _ := unstructured.NestedString(objs["ConfigMap/podkey-keyd-policy"].Object, "data", "policy.yaml")
	if !strings.HasPrefix(pol, "version: v1\nrules:") {
		t.Errorf("policy file:\n%s", pol)
	}
	ds := toYAML(t, objs["DaemonSet/podkey-csi"].Object)
	for _, want := range []string{"name: node-driver-registrar", "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.podkey.io/csi.sock",
		"--registration-dir=\n", "--keyd-addr=keyd.example:7443"} {
		if !strings.Contains(ds, want) {
			t.Errorf("DaemonSet lacks %q", want)
		}
	}
}

// Replicas: PostgreSQL and a vendor HSM, a rolling update, a headless
// Service the node agents resolve every replica through, a
// PodDisruptionBudget and a preference for different nodes.
func TestKeydReplicas(t *testing.T) {
	objs := render(t, `
keyd:
  replicas: 3
  store: {type: postgres, postgres: {connectionFile: /etc/podkey/postgres/dsn}}
  hsm: {type: pkcs11, module: /opt/hsm/libvendor.so, tokenLabel: bank, pinFile: /hsm-pin/pin}
  extraVolumes: [{name: pg, secret: {secretName: keyd-postgres}}]
  extraVolumeMounts: [{name: pg, mountPath: /etc/podkey/postgres, readOnly: true}]
`)
	dep := objs["Deployment/podkey-keyd"]
	if n, _, _ := unstructured.NestedFieldNoCopy(dep.Object, "spec", "replicas"); fmt.Sprint(n) != "3" {
		t.Errorf("replicas: %v", n)
	}
	y := toYAML(t, dep.Object)
	for _, want := range []string{"--postgres-file=/etc/podkey/postgres/dsn", "type: RollingUpdate", "podAntiAffinity", "topologyKey: kubernetes.io/hostname"} {
		if !strings.Contains(y, want) {
			t.Errorf("keyd Deployment lacks %q", want)
		}
	}
	if pdb := objs["PodDisruptionBudget/podkey-keyd"]; pdb == nil {
		t.Error("no PodDisruptionBudget")
	} else if n, _, _ := unstructured.NestedFieldNoCopy(pdb.Object, "spec", "maxUnavailable"); fmt.Sprint(n) != "1" {
		t.Errorf("PodDisruptionBudget maxUnavailable %v", n)
	}
	if svc := objs["Service/podkey-keyd-replicas"]; svc == nil {
		t.Error("no headless Service")
	} else if ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP"); ip != "None" {
		t.Errorf("replicas Service clusterIP %q", ip)
	}
	ds := toYAML(t, objs["DaemonSet/podkey-csi"].Object)
	for _, want := range []string{"--keyd-addr=dns:///podkey-keyd-replicas.podkey.svc:7443", "--keyd-server-name=podkey-keyd.podkey.svc"} {
		if !strings.Contains(ds, want) {
			t.Errorf("DaemonSet lacks %q", want)
		}
	}
	// On the host network replicas may share a node: no host ports, and
	// probes that ask the replica itself, not whoever answers the port.
	objs = render(t, `
keyd:
  replicas: 3
  hostNetwork: true
  store: {type: postgres, postgres: {connectionFile: /etc/podkey/postgres/dsn}}
  hsm: {type: pkcs11, module: /opt/hsm/libvendor.so, tokenLabel: bank, pinFile: /hsm-pin/pin}
`)
	y = toYAML(t, objs["Deployment/podkey-keyd"].Object)
	if strings.Contains(y, "containerPort") || !strings.Contains(y, "- policy") || strings.Contains(y, "tcpSocket") {
		t.Errorf("host-network replicas: ports or probes:\n%s", y)
	}
	// One replica on bbolt: none of it.
	objs = render(t, "")
	if objs["PodDisruptionBudget/podkey-keyd"] != nil || objs["Service/podkey-keyd-replicas"] != nil ||
		strings.Contains(toYAML(t, objs["Deployment/podkey-keyd"].Object), "podAntiAffinity") {
		t.Error("a single keyd got replica objects")
	}
}

// Provider mode: podkey-csi serves the upstream driver's provider API in
// its providers directory, watches its node's pods, and podkey's own
// CSIDriver and kubelet registration are not installed.
func TestProviderMode(t *testing.T) {
	objs := render(t, "csi: {mode: provider}")
	ds := toYAML(t, objs["DaemonSet/podkey-csi"].Object)
	for _, want := range []string{"--mode=provider", "--provider-socket=/providers/podkey.sock", "path: /var/run/secrets-store-csi-providers", "--registration-dir=\n"} {
		if !strings.Contains(ds, want) {
			t.Errorf("DaemonSet lacks %q", want)
		}
	}
	if strings.Contains(ds, "node-driver-registrar") {
		t.Error("provider mode registers podkey's own driver")
	}
	if objs["CSIDriver/csi.podkey.io"] != nil {
		t.Error("provider mode installs podkey's CSIDriver")
	}
	if !strings.Contains(toYAML(t, objs["ClusterRole/podkey-csi"].Object), "- pods") {
		t.Error("provider mode cannot watch its node's pods")
	}
	both := render(t, "csi: {mode: both}")
	if both["CSIDriver/csi.podkey.io"] == nil || !strings.Contains(toYAML(t, both["DaemonSet/podkey-csi"].Object), "--provider-socket") {
		t.Error("both modes: the CSIDriver or the provider socket is missing")
	}
	if strings.Contains(toYAML(t, render(t, "")["ClusterRole/podkey-csi"].Object), "pods") {
		t.Error("csi mode may read pods")
	}
}

// Bad values are refused with a message naming the field, and nothing is
// rendered.
func TestSchemaRejectsBadValues(t *testing.T) {
	for _, c := range []struct{ values, want string }{
		{"keyd: {hsm: {type: luna}}", "/keyd/hsm/type"},
		{"keyd: {hsm: {pin: '1234'}}", "additional properties 'pin' not allowed"},
		{"keyd: {port: 70000}", "/keyd/port"},
		{"keyd: {nodeCertTTL: forever}", "/keyd/nodeCertTTL"},
		{"csi: {tmpfsSize: lots}", "/csi/tmpfsSize"},
		{"csi: {registration: sidecar}", "/csi/registration"},
		{"csi: {kubeletDir: relative/path}", "/csi/kubeletDir"},
		{"keyd: {policy: {rules: [{namespace: a, serviceAccount: b}]}}", "objects"},
		{"keyd: {hsm: {type: pkcs11}}", "keyd.hsm.pinFile is required"},
		{"typo: true", "additional properties 'typo' not allowed"},
		{"keyd: {replicas: 3}", "/keyd/store/type"},
		{"keyd: {replicas: 3, store: {type: postgres, postgres: {connectionFile: /pg/dsn}}}", "/keyd/hsm/type"},
		{"keyd: {store: {type: postgres}}", "postgres"},
		{"keyd: {store: {type: postgres, postgres: {connectionFile: 'host=db password=x'}}}", "/keyd/store/postgres/connectionFile"},
		{"keyd: {replicas: 0}", "/keyd/replicas"},
		{"csi: {mode: sidecar}", "/csi/mode"},
		{"keyd: {replicas: 2, persistence: {enabled: true}, store: {type: postgres, postgres: {connectionFile: /d}}, hsm: {type: pkcs11, pinFile: /p}}", "keyd.persistence"},
		{"csi: {keydAddress: 'a:1,,b:2'}", "/csi/keydAddress"},
	} {
		out, errs, code := helm(t, c.values, "template", "podkey", "charts/podkey", "-f", "-")
		if code == 0 || out != "" || !strings.Contains(errs, c.want) {
			t.Errorf("values %q: exit %d, want a refusal naming %q; stdout %d bytes\n%s", c.values, code, c.want, len(out), errs)
		}
	}
}

// manifests/ is the chart rendered with its defaults (make manifests).
func TestManifestsAreCurrent(t *testing.T) {
	for _, f := range []string{"manifests/podkey.yaml", "manifests/crds/secretproviderclasses.yaml"} {
		want, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"template", "podkey", "charts/podkey", "--namespace", "podkey"}
		if strings.Contains(f, "crds") {
			args = append(args, "--show-only", "templates/secretproviderclass-crd.yaml")
		}
		out, errs, code := helm(t, "", args...)
		if code != 0 {
			t.Fatal(errs)
		}
		if !strings.HasSuffix(string(want), out) {
			t.Errorf("%s is not the chart's current rendering: run make manifests", f)
		}
	}
}

func toYAML(t *testing.T, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestImageKeyprovider(t *testing.T) {
	off := toYAML(t, render(t, "")["DaemonSet/podkey-csi"].Object)
	if strings.Contains(off, "keyprovider") {
		t.Error("the keyprovider is on by default")
	}
	ds := toYAML(t, render(t, "csi: {imageKeyprovider: {enabled: true, hostDir: /var/run/podkey-images, cacheTTL: 30s}}\n")["DaemonSet/podkey-csi"].Object)
	for _, want := range []string{"--keyprovider-socket=/var/run/podkey-images/keyprovider.sock", "--image-key-cache-ttl=30s",
		"mountPath: /var/run/podkey-images", "path: /var/run/podkey-images"} {
		if !strings.Contains(ds, want) {
			t.Errorf("DaemonSet lacks %q", want)
		}
	}
	for _, bad := range []string{"csi: {imageKeyprovider: {hostDir: relative}}\n", "csi: {imageKeyprovider: {cacheTTL: soon}}\n", "csi: {imageKeyprovider: {socket: x}}\n"} {
		if _, _, code := helm(t, bad, "template", "podkey", "charts/podkey", "-f", "-"); code == 0 {
			t.Errorf("values %q accepted", bad)
		}
	}
}
