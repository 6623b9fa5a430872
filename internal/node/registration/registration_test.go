package registration

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletHandshake plays the kubelet's plugin watcher: GetInfo over the
// registration socket, then NotifyRegistrationStatus.
func TestKubeletHandshake(t *testing.T) {
	dir := t.TempDir()
	s := New("csi.podkey.io", "/var/lib/kubelet/plugins/csi.podkey.io/csi.sock", slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, dir) }()
	conn, err := grpc.NewClient("unix://"+SocketPath(dir, "csi.podkey.io"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	info, err := c.GetInfo(cctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "csi.podkey.io" || info.Endpoint != "/var/lib/kubelet/plugins/csi.podkey.io/csi.sock" {
		t.Fatalf("info %+v", info)
	}
	if _, err := c.NotifyRegistrationStatus(cctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Registered(); !ok {
		t.Fatal("status not recorded")
	}
	cancel()
	<-done
	if matches, _ := filepath.Glob(filepath.Join(dir, "*")); len(matches) != 0 {
		t.Fatalf("socket left behind: %v", matches)
	}
}
