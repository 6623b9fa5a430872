package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/e2e/cluster"
)

// driverSetup is one way of giving a pod its credentials, for the
// side-by-side benchmark.
type driverSetup struct {
	name, driver, class string
	processes           []string // the node processes that serve it
}

// BenchmarkPodStartDrivers compares, on the real node in one run, pod
// creation to Running with no volume, with a podkey-csi volume, with the
// upstream secrets-store driver and podkey-provider (the same class), and
// with the upstream driver and its own fake provider (one fixed file, no
// secret service behind it: the driver's floor); medians of seven,
// interleaved. Then each setup's node processes' resident memory idle and
// with 200 live volumes (20 pods of 10 volumes).
//
//	go test -run '^$' -bench PodStartDrivers -benchtime 1x -timeout 30m ./e2e
func BenchmarkPodStartDrivers(b *testing.B) {
	pc := startPodkeyCluster(b)
	ctx := context.Background()
	providers := filepath.Join(pc.node.Dir, "secrets-store-providers")
	before := time.Now().Add(-time.Second)
	pc.upgrade(ctx, pc.values(map[string]any{"csi": map[string]any{"mode": "both", "providersDir": providers, "secretsStoreRotationPollInterval": upstreamPoll}}))
	pc.waitRegistered(ctx, before)
	pc.installUpstream(ctx, providers)
	pc.fakeProvider(ctx, providers)
	setups := []driverSetup{
		{name: "none"},
		{name: "podkey-csi", driver: "csi.podkey.io", class: "payments", processes: []string{"podkey-csi"}},
		{name: "upstream+podkey", driver: upstreamDriver, class: "payments", processes: []string{"secrets-store-csi-driver", "podkey-csi"}},
		{name: "upstream+fake", driver: upstreamDriver, class: "fake", processes: []string{"secrets-store-csi-driver", "fakeprovider"}},
	}
	starts := map[string][]time.Duration{}
	for i := 0; i < 7; i++ {
		for _, s := range setups {
			start := time.Now()
			p := pc.volumesPod(ctx, fmt.Sprintf("start-%s-%d", s.name, i), s, 1)
			if _, err := waitPodPhase(ctx, pc.c, "payments", p.Name, corev1.PodRunning, 2*time.Minute); err != nil {
				b.Fatalf("%s: %v\n%s", s.name, err, pc.events(ctx, p))
			}
			starts[s.name] = append(starts[s.name], time.Since(start))
			pc.deletePod(ctx, p)
		}
	}
	for _, s := range setups {
		b.ReportMetric(float64(median(starts[s.name]).Milliseconds()), "start-"+s.name+"-ms")
	}
	b.ReportMetric(float64(median(starts["upstream+podkey"]))/float64(median(starts["podkey-csi"])), "upstream+podkey/podkey-csi")
	b.ReportMetric(float64(median(starts["upstream+podkey"]))/float64(median(starts["upstream+fake"])), "upstream+podkey/upstream+fake")

	// Resident memory, idle and with 200 live volumes.
	for _, s := range setups[1:] {
		idle := pc.rss(b, s.processes)
		var pods []*corev1.Pod
		for i := 0; i < 20; i++ {
			pods = append(pods, pc.volumesPod(ctx, fmt.Sprintf("rss-%s-%d", s.name, i), s, 10))
		}
		for _, p := range pods {
			if _, err := waitPodPhase(ctx, pc.c, "payments", p.Name, corev1.PodRunning, 5*time.Minute); err != nil {
				b.Fatalf("%s: %v\n%s", s.name, err, pc.events(ctx, p))
			}
		}
		time.Sleep(2 * time.Second)
		loaded := pc.rss(b, s.processes)
		for i, proc := range s.processes {
			b.ReportMetric(float64(idle[i])/1024, fmt.Sprintf("%s:%s-idle-MiB", s.name, proc))
			b.ReportMetric(float64(loaded[i])/1024, fmt.Sprintf("%s:%s-200-volumes-MiB", s.name, proc))
		}
		for _, p := range pods {
			_ = pc.c.Admin.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{})
		}
		for _, p := range pods {
			pc.deletePod(ctx, p)
		}
	}
	pc.removeUpstream(ctx)
}

// volumesPod creates a pod (busybox, sleeping) with n volumes of setup s.
func (pc *podkeyCluster) volumesPod(ctx context.Context, name string, s driverSetup, n int) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: strings.ReplaceAll(name, "+", "-")}, Spec: corev1.PodSpec{
		NodeName: nodeName, ServiceAccountName: "payments", TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{{Name: "app", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"/bin/sleep", "3600"}}},
	}}
	for i := 0; s.driver != "" && i < n; i++ {
		v := fmt.Sprintf("creds-%d", i)
		p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: v, MountPath: "/var/run/podkey/" + v, ReadOnly: true})
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: v, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: s.driver, ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"secretProviderClass": s.class}}}})
	}
	p, err := pc.c.Admin.CoreV1().Pods("payments").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		pc.t.Fatal(err)
	}
	return p
}

// fakeProvider runs the upstream driver's fake provider on the node (a
// pod serving <providers>/fake.sock) and a class "fake" for it.
func (pc *podkeyCluster) fakeProvider(ctx context.Context, providers string) {
	t := pc.t
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "fake-provider", Namespace: upstreamNS}, Spec: corev1.PodSpec{
		NodeName: nodeName, TerminationGracePeriodSeconds: ptr.To[int64](1), AutomountServiceAccountToken: ptr.To(false),
		Containers: []corev1.Container{{Name: "fake", Image: cluster.SecretsStoreImage, ImagePullPolicy: corev1.PullNever,
			Command:      []string{"fakeprovider", "--socket", "/providers/fake.sock"},
			VolumeMounts: []corev1.VolumeMount{{Name: "providers", MountPath: "/providers"}}}},
		Volumes: []corev1.Volume{{Name: "providers", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: providers}}}},
	}}
	if _, err := pc.c.Admin.CoreV1().Pods(upstreamNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitPodPhase(ctx, pc.c, upstreamNS, p.Name, corev1.PodRunning, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// The driver refuses a class without parameters.
	if err := pc.c.SecretProviderClass(ctx, "payments", "fake", map[string]any{"provider": "fake", "parameters": map[string]any{"note": "the fake provider returns one fixed file"}}); err != nil {
		t.Fatal(err)
	}
}

// rss is the resident memory (KiB) of the one node process running each
// named binary.
func (pc *podkeyCluster) rss(t testing.TB, names []string) []int {
	out := make([]int, len(names))
	for i, name := range names {
		pid, err := processByName(name)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = rssKiB(pid)
	}
	return out
}

// processByName finds the one process whose argv[0] names binary.
func processByName(binary string) (int, error) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var found []int
	for _, d := range dirs {
		cmd, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		argv0, _, _ := bytes.Cut(cmd, []byte{0})
		if filepath.Base(string(argv0)) == binary {
			pid, _ := strconv.Atoi(filepath.Base(d))
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		return 0, fmt.Errorf("%d processes run %s, want one", len(found), binary)
	}
	return found[0], nil
}
