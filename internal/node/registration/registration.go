// Package registration registers podkey-csi with the kubelet through the
// kubelet's plugin registration socket directory, in process, for clusters
// that do not run the upstream node-driver-registrar sidecar.
package registration

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/podkey/podkey/internal/host/socket"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// DefaultDir is the kubelet's plugin registration directory.
const DefaultDir = "/var/lib/kubelet/plugins_registry"

// Server answers the kubelet's plugin watcher.
type Server struct {
	registerapi.UnimplementedRegistrationServer
	driver, endpoint string
	log              *slog.Logger

	mu         sync.Mutex
	registered bool
	lastError  string
}

// New describes a CSI driver whose CSI socket is endpoint (the path as the
// kubelet sees it).
func New(driver, endpoint string, log *slog.Logger) *Server {
	return &Server{driver: driver, endpoint: endpoint, log: log}
}

// GetInfo implements the registration API.
func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: s.driver, Endpoint: s.endpoint,
		SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	s.registered, s.lastError = st.PluginRegistered, st.Error
	s.mu.Unlock()
	if st.PluginRegistered {
		s.log.Info("registered with the kubelet", "driver", s.driver)
	} else {
		s.log.Error("the kubelet refused registration", "driver", s.driver, "error", st.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Registered reports the kubelet's last verdict.
func (s *Server) Registered() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registered, s.lastError
}

// SocketPath is where the kubelet's plugin watcher looks for the driver.
func SocketPath(dir, driver string) string { return filepath.Join(dir, driver+"-reg.sock") }

// Serve creates the registration socket in dir and serves until ctx ends,
// then removes the socket so the kubelet deregisters the driver.
func (s *Server) Serve(ctx context.Context, dir string) error {
	path := SocketPath(dir, s.driver)
	lis, err := socket.Listen(path, 0o600)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	g := grpc.NewServer()
	registerapi.RegisterRegistrationServer(g, s)
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	s.log.Info("registration socket ready", "path", path)
	err = g.Serve(lis)
	_ = os.Remove(path)
	return err
}
