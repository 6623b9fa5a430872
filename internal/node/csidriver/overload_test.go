package csidriver_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// TestBurstAgainstAnOverloadedKeydAllPublish: a real keyd that runs one
// call at a time and queues none refuses most of a burst of 24 publishes;
// the driver waits out each refusal by keyd's hint, with jitter, and
// every publish succeeds without the kubelet's help.
func TestBurstAgainstAnOverloadedKeydAllPublish(t *testing.T) {
	dir := t.TempDir()
	k := keydtest.Start(t, func(o *service.Options) { o.MaxInflight, o.MaxQueued = 1, -1 })
	if _, err := k.Admin.PutSecret(context.Background(), &keydv1.PutSecretRequest{Namespace: "payments", Name: "legacy-db", Value: []byte("db-password-Q7x")}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	d, err := csidriver.New(csidriver.Options{
		NodeID: "node-1", StateDir: filepath.Join(dir, "state"), PodsDir: filepath.Join(dir, "pods"),
		Issuer: k.Keyd, Revoker: k.Keyd, Classes: classes, Volumes: volume.NewMounter(mount.NewFakeMounter(nil)),
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 24)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid := fmt.Sprintf("burst-%d", i)
			_, errs[i] = d.NodePublishVolume(context.Background(), publishReq(filepath.Join(dir, "pods", uid, "volumes", "creds"), uid, "payments"))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	retries, err := counter(reg, "podkey_csi_keyd_overload_retries_total")
	if err != nil {
		t.Fatal(err)
	}
	if retries == 0 {
		t.Fatal("24 publishes at once against one slot and no queue: keyd refused none")
	}
	t.Logf("%v retries after keyd's refusals", retries)
}

func counter(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue(), nil
		}
	}
	return 0, fmt.Errorf("metric %s not exported", name)
}

// busyIssuer is keyd refusing everything for overload, with no hint.
type busyIssuer struct{ calls int }

func (b *busyIssuer) Issue(context.Context, *keydv1.IssueRequest, ...grpc.CallOption) (*keydv1.IssueResponse, error) {
	b.calls++
	return nil, status.Error(codes.ResourceExhausted, "podkey-keyd is at its limit of calls in progress")
}

// TestOverloadOutlastingTheWaitGoesBackToTheKubelet: when keyd stays
// overloaded past OverloadWait, the publish returns ResourceExhausted (the
// kubelet retries it) with a message that says so, and leaves nothing.
func TestOverloadOutlastingTheWaitGoesBackToTheKubelet(t *testing.T) {
	dir := t.TempDir()
	k := keydtest.Start(t, nil)
	busy := &busyIssuer{}
	fake := mount.NewFakeMounter(nil)
	d, err := csidriver.New(csidriver.Options{
		NodeID: "node-1", StateDir: filepath.Join(dir, "state"), PodsDir: filepath.Join(dir, "pods"),
		Issuer: busy, Revoker: k.Keyd, Classes: classes, Volumes: volume.NewMounter(fake),
		OverloadWait: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.NodePublishVolume(context.Background(), publishReq(filepath.Join(dir, "pods", "u1", "volumes", "creds"), "u1", "payments"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "podkey-keyd is busy; retrying") {
		t.Fatalf("overload past the wait: %v", err)
	}
	if busy.calls < 2 {
		t.Fatalf("keyd was asked %d times within the wait", busy.calls)
	}
	if d.Volumes() != 0 || len(fake.MountPoints) != 0 {
		t.Fatalf("a refused publish left %d volumes, %d mounts", d.Volumes(), len(fake.MountPoints))
	}
}
