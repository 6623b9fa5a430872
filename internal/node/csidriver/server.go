package csidriver

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/podkey/podkey/internal/host/socket"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Serve listens on the CSI unix socket (removing a stale one) and serves
// until ctx ends.
func (d *Driver) Serve(ctx context.Context, path string) error {
	return d.ServeAPI(ctx, path, "CSI", func(g *grpc.Server) {
		csi.RegisterIdentityServer(g, d)
		csi.RegisterNodeServer(g, d)
	})
}

// ServeAPI listens on the unix socket path (removing a stale one) and
// serves what register adds, each call logged as the CSI calls are, until
// ctx ends: the upstream driver's provider API in provider mode.
func (d *Driver) ServeAPI(ctx context.Context, path, what string, register func(*grpc.Server)) error {
	lis, err := socket.Listen(path, 0o600)
	if err != nil {
		return fmt.Errorf("csidriver: %s: %w", what, err)
	}
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(d.logUnary))
	register(g)
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	d.opts.Logger.Info("serving "+what, "socket", path, "driver", d.opts.DriverName, "node", d.opts.NodeID)
	return g.Serve(lis)
}

// volumeRequest is implemented by requests that name a volume.
type volumeRequest interface{ GetVolumeId() string }

// logUnary logs method, volume, code and duration. Requests are never
// logged: their volume context and secrets carry the pod's token.
func (d *Driver) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	attrs := []any{"method", info.FullMethod, "code", status.Code(err).String(), "duration", time.Since(start)}
	if vr, ok := req.(volumeRequest); ok && vr.GetVolumeId() != "" {
		attrs = append(attrs, "volumeID", vr.GetVolumeId())
	}
	level := slog.LevelDebug
	if err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, "message", status.Convert(err).Message())
	} else if info.FullMethod == csi.Node_NodePublishVolume_FullMethodName || info.FullMethod == csi.Node_NodeUnpublishVolume_FullMethodName {
		level = slog.LevelInfo
	}
	d.opts.Logger.Log(ctx, level, "csi call", attrs...)
	return resp, err
}
