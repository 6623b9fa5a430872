package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mount "k8s.io/mount-utils"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/csinode"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/spc"
	"github.com/podkey/podkey/pkg/volume"
)

// rssKiB reads a process's resident set size.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
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

// BenchmarkBurstLoad: 10 simulated nodes (node drivers in this process,
// each with its own state) publish 200 pods each at once against one keyd
// process, then unpublish them all at once. Reports throughput, p99 and
// errors, and keyd's resident memory under the load. Volumes are fake
// mounts written into one real tmpfs (as root; a disk directory
// otherwise, where the file system's metadata work dominates): this
// measures keyd and the plugin's own work, not the kernel's mount path
// (see BenchmarkPublishCold).
//
//	go test -run '^$' -bench BurstLoad -benchtime 1x ./e2e
func BenchmarkBurstLoad(b *testing.B) {
	const nodes, podsPerNode = 10, 200

	w := newWorld(b)
	ctx := context.Background()
	keydProc := w.startKeyd(ctx)
	conn, err := keydclient.Dial(keydclient.Options{Socket: w.sock()})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	kc := keydv1.NewKeydClient(conn)
	root := b.TempDir() // the simulated nodes' pods directory
	drivers := make([]*csinode.Driver, nodes)
	for i := range drivers {
		drivers[i], err = csinode.New(csinode.Options{NodeID: fmt.Sprintf("node-%d", i), StateDir: b.TempDir(), PodsDir: root, Issuer: kc, Revoker: kc,
			Classes: spc.Static{"payments/payments": loadClass()}, Volumes: volume.NewMounter(mount.NewFakeMounter(nil)),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
	}
	if os.Geteuid() == 0 {
		if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs", root).Run(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = exec.Command("umount", root).Run() })
	}
	type result struct {
		d   time.Duration
		err error
	}
	run := func(op func(node, pod int) error) ([]time.Duration, int, time.Duration) {
		var mu sync.Mutex
		var lat []time.Duration
		errs := 0
		var wg sync.WaitGroup
		start := time.Now()
		peak := 0
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
					if r := rssKiB(keydProc.Process.Pid); r > peak {
						peak = r
					}
				}
			}
		}()
		for n := 0; n < nodes; n++ {
			for p := 0; p < podsPerNode; p++ {
				wg.Add(1)
				go func(n, p int) {
					defer wg.Done()
					t0 := time.Now()
					err := op(n, p)
					mu.Lock()
					lat = append(lat, time.Since(t0))
					if err != nil {
						errs++
					}
					mu.Unlock()
				}(n, p)
			}
		}
		wg.Wait()
		close(stop)
		elapsed := time.Since(start)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(peak)/1024, "keyd-peak-MiB")
		return lat, errs, elapsed
	}
	target := func(n, p int) string { return filepath.Join(root, fmt.Sprintf("n%d", n), fmt.Sprintf("p%d", p)) }
	req := func(n, p int) *csi.NodePublishVolumeRequest {
		uid := fmt.Sprintf("load-%d-%d", n, p)
		r := podPublishRequest(target(n, p), "payments", "pod-"+uid, uid, "payments", "token-"+uid)
		r.VolumeContext["secretProviderClass"] = "payments"
		return r
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat, errs, elapsed := run(func(n, p int) error {
			_, err := drivers[n].NodePublishVolume(ctx, req(n, p))
			return err
		})
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "publishes/s")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "publish-p99-ms")
		b.ReportMetric(float64(errs), "publish-errors")
		lat, errs, elapsed = run(func(n, p int) error {
			r := req(n, p)
			_, err := drivers[n].NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: r.VolumeId, TargetPath: r.TargetPath})
			return err
		})
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "unpublishes/s")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "unpublish-p99-ms")
		b.ReportMetric(float64(errs), "unpublish-errors")
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
