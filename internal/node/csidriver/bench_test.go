package csidriver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// Benchmarks of the node path on real tmpfs mounts and a real keyd on
// SoftHSM2 (run as root). Compare BenchmarkPublishCold with
// BenchmarkBareTmpfsMountAndWrite, its physical floor on this machine:
//
//	go test -run '^$' -bench . ./internal/node/csidriver

type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	b.ReportMetric(float64(l[len(l)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(l[len(l)*99/100].Microseconds()), "p99-µs")
}

func BenchmarkPublishCold(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("real tmpfs mounts need root")
	}
	h := newBenchHarness(b)
	ctx := context.Background()
	var lat latencies
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		uid := fmt.Sprintf("bench-%d", i)
		target := filepath.Join(h.Dir, "pods", uid, "mount")
		start := time.Now()
		if _, err := h.D.NodePublishVolume(ctx, publishReq(target, uid, "payments")); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uid, TargetPath: target}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	lat.report(b)
}

// BenchmarkRepublishNoop is the kubelet's periodic republish of a volume
// whose credentials are not due, with forced renewals of other scopes in
// force: no keyd call, no write.
func BenchmarkRepublishNoop(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("real tmpfs mounts need root")
	}
	h := newBenchHarness(b)
	ctx := context.Background()
	target := filepath.Join(h.Dir, "pods", "noop", "mount")
	req := publishReq(target, "noop", "payments")
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		b.Fatal(err)
	}
	defer h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: target})
	// Forced renewals in force for other scopes: every republish checks
	// them, none applies.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go h.D.Run(rctx)
	for _, r := range []*keydv1.ForceRenewalRequest{{PodUid: "another-pod"}, {Namespace: "shop"}, {Namespace: "payments", ServiceAccount: "batch"}} {
		if _, err := h.Keyd.Admin.ForceRenewal(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // a few of the driver's polls (every 20 ms here)
	var lat latencies
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	lat.report(b)
}

// BenchmarkBareTmpfsMountAndWrite is the floor: mount a tmpfs and write
// files of the same sizes as a published volume, without keyd.
func BenchmarkBareTmpfsMountAndWrite(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("real tmpfs mounts need root")
	}
	dir := b.TempDir()
	m := volume.NewMounter(nil)
	files := map[string]volume.File{}
	for name, size := range map[string]int{"ledger-api.json": 260, "mtls.key": 240, "mtls.crt": 700, "mtls.ca.crt": 600,
		"card-key": 32, "svc-token": 580, "db-password": 15, volume.MetadataFile: 1500} {
		files[name] = volume.File{Data: make([]byte, size), Mode: 0o440}
	}
	var lat latencies
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		target := filepath.Join(dir, fmt.Sprint(i))
		start := time.Now()
		if err := m.Mount(target, volume.DefaultSizeLimit, os.Getgid()); err != nil {
			b.Fatal(err)
		}
		if err := volume.Write(target, files, os.Getgid()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if err := m.Teardown(target); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	lat.report(b)
}
