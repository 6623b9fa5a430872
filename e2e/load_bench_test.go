package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mount "k8s.io/mount-utils"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

// rssKiB reads a process's resident set size.
func rssKiB(pid int) int { return statusKiB(pid, "VmRSS:") }

// statusKiB reads a KiB field of /proc/PID/status (VmRSS:, VmHWM:, ...).
func statusKiB(pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

func loadClass() *sscsi.SecretProviderClass {
	c := &sscsi.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "payments"}}
	c.Spec.Provider = "podkey"
	c.Spec.Parameters = map[string]string{"objects": "- {name: ledger-api, kind: apiKey, file: ledger-api.json}\n- {name: card-key, kind: derivedKey}\n"}
	return c
}

// burstShape is a burst: nodes simulated nodes publishing pods volumes
// each, all at once.
type burstShape struct{ nodes, pods int }

func (s burstShape) String() string { return fmt.Sprintf("%dx%d", s.nodes, s.pods) }

// burstShapes are the shapes to run: PODKEY_BURST_SHAPES ("250x40,10x200")
// or podkey's own (10 × 200) and the upstream secrets-store driver's
// published load test (250 nodes, 10,000 pods).
func burstShapes(t testing.TB) []burstShape {
	spec := os.Getenv("PODKEY_BURST_SHAPES")
	if spec == "" {
		spec = "10x200,250x40"
	}
	var shapes []burstShape
	for _, f := range strings.Split(spec, ",") {
		var s burstShape
		if _, err := fmt.Sscanf(f, "%dx%d", &s.nodes, &s.pods); err != nil || s.nodes < 1 || s.pods < 1 {
			t.Fatalf("PODKEY_BURST_SHAPES: %q is not NODESxPODS", f)
		}
		shapes = append(shapes, s)
	}
	return shapes
}

// phase is one half of a burst, publish or unpublish.
type phase struct {
	rate     float64       // volumes per second, from the first call to the last success
	p50, p99 time.Duration // from a volume's first call to its success, retries included
	errors   int           // volumes that never succeeded
	retried  int           // calls the kubelet would have retried (Unavailable, ResourceExhausted)
}

// kubeletRetry calls op as the kubelet calls a CSI driver: a call that
// fails with a retryable code is tried again after the kubelet's
// exponential backoff (500 ms, doubling; the kubelet caps it at 2 min 2 s,
// here the burst is given 5 minutes in all). It returns the final error
// and the number of failed tries.
func kubeletRetry(op func() error) (error, int) {
	deadline := time.Now().Add(5 * time.Minute)
	wait := 500 * time.Millisecond
	for tries := 0; ; tries++ {
		err := op()
		switch status.Code(err) {
		case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Aborted:
			if time.Now().Add(wait).Before(deadline) {
				time.Sleep(wait)
				wait = min(2*wait, 122*time.Second)
				continue
			}
		}
		return err, tries
	}
}

type burstResult struct {
	publish, unpublish phase
	keydPeakKiB        int   // keyd's VmHWM: the exact peak of its resident set
	keydPeakAnonKiB    int   // the peak of its anonymous memory (RssAnon, sampled): the heap, without the store's mapped file
	cgroupPeak         int64 // the memory cgroup's peak usage (0 without one)
	oomKills           int
	gcCycles           int     // keyd's garbage collections during the run
	retries            float64 // publishes' Issue calls tried again after keyd's overload refusals
	auditIntact        bool
}

// keydChartMemoryLimit is the chart's default memory limit of keyd
// (charts/podkey/values.yaml keyd.resources.limits.memory).
const keydChartMemoryLimit = 256 << 20

// runBurst runs one burst against one keyd process: the shape's nodes are
// real podkey-csi drivers (csidriver, each with its own state, metrics and
// connection to keyd, as on separate machines) in this process, with a
// fake mounter whose volumes and state are written into one real tmpfs
// (as root; a disk directory otherwise): this measures keyd and the
// driver's own work, not the kernel's mount path (see
// BenchmarkPublishCold), nor one disk's metadata journal shared by what
// would be 250 machines' disks. Every pod is
// published at once, then unpublished at once. With memLimit > 0 (needs
// root), keyd runs in a memory cgroup of that limit from its start, as in
// its container.
func runBurst(t testing.TB, shape burstShape, memLimit int64, keydArgs ...string) burstResult {
	w := newWorld(t)
	ctx := context.Background()
	var cg string
	if memLimit > 0 {
		cg = memoryCgroup(t, memLimit)
		w.keydCgroup = cg
	}
	w.keydEnv = []string{"GODEBUG=gctrace=1"}
	keydProc := w.startKeyd(ctx, append([]string{"--listen", "127.0.0.1:0", "--insecure-local-identity"}, keydArgs...)...)
	root := t.TempDir() // the simulated nodes' pods directory
	if os.Geteuid() == 0 {
		if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512m,mode=0700", "tmpfs", root).Run(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = exec.Command("umount", root).Run() })
	}
	drivers := make([]*csidriver.Driver, shape.nodes)
	regs := make([]*prometheus.Registry, shape.nodes)
	for i := range drivers {
		conn, err := keydclient.Dial(keydclient.Options{Socket: w.sock()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		kc := keydv1.NewKeydClient(conn)
		regs[i] = prometheus.NewRegistry()
		drivers[i], err = csidriver.New(csidriver.Options{NodeID: fmt.Sprintf("node-%d", i), StateDir: filepath.Join(root, "state", strconv.Itoa(i)), PodsDir: root, Issuer: kc, Revoker: kc,
			Classes: spc.Static{"payments/payments": loadClass()}, Volumes: volume.NewMounter(mount.NewFakeMounter(nil)),
			Registerer: regs[i], Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
	}
	run := func(op func(node, pod int) error) phase {
		var mu sync.Mutex
		var lat []time.Duration
		errs, retried := 0, 0
		var wg sync.WaitGroup
		start := time.Now()
		for n := 0; n < shape.nodes; n++ {
			for p := 0; p < shape.pods; p++ {
				wg.Add(1)
				go func(n, p int) {
					defer wg.Done()
					t0 := time.Now()
					err, tries := kubeletRetry(func() error { return op(n, p) })
					mu.Lock()
					lat = append(lat, time.Since(t0))
					retried += tries
					if err != nil {
						if errs == 0 {
							t.Logf("first failure: %v", err)
						}
						errs++
					}
					mu.Unlock()
				}(n, p)
			}
		}
		wg.Wait()
		elapsed := time.Since(start)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return phase{rate: float64(len(lat)) / elapsed.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], errors: errs, retried: retried}
	}
	target := func(n, p int) string { return filepath.Join(root, fmt.Sprintf("n%d", n), fmt.Sprintf("p%d", p)) }
	req := func(n, p int) *csi.NodePublishVolumeRequest {
		uid := fmt.Sprintf("load-%d-%d", n, p)
		r := podPublishRequest(target(n, p), "payments", "pod-"+uid, uid, "payments", "token-"+uid)
		r.VolumeContext["secretProviderClass"] = "payments"
		return r
	}
	for _, line := range strings.Split(w.keydErr.String(), "\n") {
		if strings.Contains(line, "admission of") {
			t.Logf("keyd: %s", line)
		}
	}
	gcBefore := gcCycles(w.keydErr.String())
	var r burstResult
	stop := make(chan struct{})
	sampled := make(chan int)
	go func() {
		peak := 0
		for {
			select {
			case <-stop:
				sampled <- peak
				return
			case <-time.After(20 * time.Millisecond):
				peak = max(peak, statusKiB(keydProc.Process.Pid, "RssAnon:"))
			}
		}
	}()
	r.publish = run(func(n, p int) error {
		_, err := drivers[n].NodePublishVolume(ctx, req(n, p))
		return err
	})
	r.unpublish = run(func(n, p int) error {
		r := req(n, p)
		_, err := drivers[n].NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: r.VolumeId, TargetPath: r.TargetPath})
		return err
	})
	close(stop)
	r.keydPeakAnonKiB = <-sampled
	r.keydPeakKiB = statusKiB(keydProc.Process.Pid, "VmHWM:")
	r.gcCycles = gcCycles(w.keydErr.String()) - gcBefore
	for _, reg := range regs {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "podkey_csi_keyd_overload_retries_total" {
				r.retries += mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
	}
	if cg != "" {
		r.cgroupPeak, r.oomKills = cgroupPeak(t, cg)
	}
	out, code := w.run("", "podkey", "audit", "verify")
	r.auditIntact = code == 0
	if !r.auditIntact {
		t.Logf("podkey audit verify: %d %s", code, out)
	}
	return r
}

// gcCycles is the number of the last collection keyd's gctrace reported.
func gcCycles(stderr string) int {
	n := 0
	for _, m := range regexp.MustCompile(`(?m)^gc (\d+) @`).FindAllStringSubmatch(stderr, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	return n
}

// memoryCgroup makes a cgroup v1 memory cgroup with limit and swap off,
// removed when the test ends (after its processes).
func memoryCgroup(t testing.TB, limit int64) string {
	needRoot(t)
	dir := filepath.Join("/sys/fs/cgroup/memory", fmt.Sprintf("podkey-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("no memory cgroup here: %v", err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if os.Remove(dir) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Some kernels refuse swappiness in a child; a missing swap makes it moot.
	_ = os.WriteFile(filepath.Join(dir, "memory.swappiness"), []byte("0"), 0o644)
	return dir
}

// cgroupPeak reads a memory cgroup's peak usage and its OOM kills.
func cgroupPeak(t testing.TB, dir string) (int64, int) {
	b, err := os.ReadFile(filepath.Join(dir, "memory.max_usage_in_bytes"))
	if err != nil {
		t.Fatal(err)
	}
	peak, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	oc, _ := os.ReadFile(filepath.Join(dir, "memory.oom_control"))
	kills := 0
	for _, line := range strings.Split(string(oc), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "oom_kill" {
			kills, _ = strconv.Atoi(f[1])
		}
	}
	return peak, kills
}

// BenchmarkBurstLoad runs every burst shape (see burstShapes) with keyd
// under the chart's memory limit when run as root, and reports publish and
// unpublish rates, p50/p99, errors once the drivers' retries settle,
// keyd's peak resident memory, its garbage collections and the retries.
//
//	go test -run '^$' -bench BurstLoad -benchtime 1x ./e2e
func BenchmarkBurstLoad(b *testing.B) {
	var limit int64
	if os.Geteuid() == 0 {
		limit = keydChartMemoryLimit
	}
	for _, shape := range burstShapes(b) {
		b.Run(shape.String(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				reportBurst(b, runBurst(b, shape, limit))
			}
		})
	}
}

// BenchmarkBurstAdmission compares, at 250 × 40, keyd's admission as
// shipped (calls beyond those running wait in a bounded queue, the rest
// are refused with a retry hint) with no queue (every call beyond those
// running refused) under the chart's memory limit, and with no bound at
// all (no memory limit either: it needs more than the chart gives).
//
//	go test -run '^$' -bench BurstAdmission -benchtime 1x ./e2e
func BenchmarkBurstAdmission(b *testing.B) {
	var limit int64
	if os.Geteuid() == 0 {
		limit = keydChartMemoryLimit
	}
	shape := burstShape{nodes: 250, pods: 40}
	for _, v := range []struct {
		name  string
		limit int64
		args  []string
	}{
		{"queue", limit, nil},
		{"no-queue", limit, []string{"--max-queued=-1"}},
		{"unbounded", 0, []string{"--max-inflight=1000000", "--max-queued=-1"}},
	} {
		b.Run(v.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				reportBurst(b, runBurst(b, shape, v.limit, v.args...))
			}
		})
	}
}

func reportBurst(b *testing.B, r burstResult) {
	b.ReportMetric(r.publish.rate, "publishes/s")
	b.ReportMetric(float64(r.publish.p50.Milliseconds()), "publish-p50-ms")
	b.ReportMetric(float64(r.publish.p99.Milliseconds()), "publish-p99-ms")
	b.ReportMetric(float64(r.publish.retried), "kubelet-retries")
	b.ReportMetric(float64(r.keydPeakAnonKiB)/1024, "keyd-peak-anon-MiB")
	b.ReportMetric(float64(r.cgroupPeak)/(1<<20), "cgroup-peak-MiB")
	b.ReportMetric(float64(r.publish.errors), "publish-errors")
	b.ReportMetric(r.unpublish.rate, "unpublishes/s")
	b.ReportMetric(float64(r.unpublish.p99.Milliseconds()), "unpublish-p99-ms")
	b.ReportMetric(float64(r.unpublish.errors), "unpublish-errors")
	b.ReportMetric(float64(r.keydPeakKiB)/1024, "keyd-peak-MiB")
	b.ReportMetric(float64(r.gcCycles), "keyd-gc-cycles")
	b.ReportMetric(r.retries, "overload-retries")
	b.ReportMetric(float64(r.oomKills), "oom-kills")
}

// TestBurstWithinKeydMemoryLimit: the upstream secrets-store driver's
// load-test scale (250 nodes, 10,000 pods, all at once) against one keyd
// held to the chart's memory limit by a real memory cgroup: every publish
// succeeds once the drivers' retries settle, keyd is never OOM-killed,
// its peak memory stays under the limit (both the cgroup's own count,
// which decides OOM kills, and keyd's anonymous resident memory, which no
// reclaim can shrink), every unpublish succeeds, and the audit chain is
// intact afterwards. keyd's VmHWM is logged too: it also counts the pages
// of its binary and libraries, shared with the page cache and charged to
// the cgroup that first read them (here, not keyd's).
func TestBurstWithinKeydMemoryLimit(t *testing.T) {
	needRoot(t)
	shape := burstShape{nodes: 250, pods: 40}
	r := runBurst(t, shape, keydChartMemoryLimit)
	t.Logf("%s: %.0f publishes/s, p50 %v, p99 %v, %d errors, %d kubelet retries, %.0f overload retries; keyd peak RSS %.1f MiB (anonymous %.1f MiB), cgroup peak %.1f MiB of %d MiB, %d GC cycles, %d OOM kills; %.0f unpublishes/s, %d errors",
		shape, r.publish.rate, r.publish.p50, r.publish.p99, r.publish.errors, r.publish.retried, r.retries, float64(r.keydPeakKiB)/1024, float64(r.keydPeakAnonKiB)/1024,
		float64(r.cgroupPeak)/(1<<20), keydChartMemoryLimit>>20, r.gcCycles, r.oomKills, r.unpublish.rate, r.unpublish.errors)
	switch {
	case r.publish.errors > 0:
		t.Errorf("%d publishes failed", r.publish.errors)
	case r.unpublish.errors > 0:
		t.Errorf("%d unpublishes failed", r.unpublish.errors)
	case r.oomKills > 0:
		t.Errorf("keyd was OOM-killed %d times", r.oomKills)
	case int64(r.keydPeakAnonKiB)<<10 >= keydChartMemoryLimit:
		t.Errorf("keyd's peak anonymous memory %d KiB reached the %d MiB limit", r.keydPeakAnonKiB, keydChartMemoryLimit>>20)
	case r.cgroupPeak >= keydChartMemoryLimit:
		t.Errorf("keyd's memory cgroup peaked at %d bytes, its limit", r.cgroupPeak)
	case !r.auditIntact:
		t.Error("the audit chain does not verify after the burst")
	}
}

// BenchmarkPluginFootprint measures the podkey-csi binary's resident
// memory with no volume and with 200 live volumes on real tmpfs mounts.
//
//	go test -run '^$' -bench PluginFootprint -benchtime 1x ./e2e
func BenchmarkPluginFootprint(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("real tmpfs mounts need root")
	}
	w := newWorld(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.startKeyd(ctx)
	if out, code := w.run("enrolled-secret", "podkey", "secret", "put", "payments/legacy-db"); code != 0 {
		b.Fatal(out)
	}
	p := w.startPlugin(ctx, "")
	node := csiClient(b, p.socket)
	time.Sleep(time.Second)
	idle := rssKiB(p.cmd.Process.Pid)
	var targets []string
	for i := 0; i < 200; i++ {
		target := filepath.Join(w.dir, "pods", fmt.Sprint(i), "mount")
		targets = append(targets, target)
		if _, err := node.NodePublishVolume(ctx, publishRequest(target, fmt.Sprintf("fp-%d", i))); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	loaded := rssKiB(p.cmd.Process.Pid)
	for i, target := range targets {
		_, _ = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + fmt.Sprintf("fp-%d", i), TargetPath: target})
	}
	b.ReportMetric(float64(idle)/1024, "csi-idle-MiB")
	b.ReportMetric(float64(loaded)/1024, "csi-200-volumes-MiB")
}
