// Package keydtest runs a real keyd for tests: a fresh SoftHSM2 token with
// root keys, a bbolt store in a temporary directory, the local socket and a
// TLS listener on a free loopback port, and captured JSON logs.
package keydtest

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

// SyncBuffer collects logs from the server's goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is the content so far.
func (s *SyncBuffer) String() string { return string(s.Bytes()) }

// Bytes is a copy of the content so far.
func (s *SyncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// Env is a running keyd.
type Env struct {
	T      testing.TB
	Opts   service.Options
	Logs   *SyncBuffer
	Keyd   keydv1.KeydClient
	Admin  keydv1.AdminClient
	cancel context.CancelFunc
	done   chan error
	srv    *service.Server
}

// PolicyYAML lets payments/payments obtain every object.
const PolicyYAML = `version: v1
rules:
- namespace: payments
  serviceAccount: payments
  objects: ["*"]
`

// start runs a real keyd on a fresh SoftHSM2 token, with a unix socket and
// a TLS listener on a free loopback port.
// Start runs keyd; mutate may change its options first. It stops when
// the test ends.
func Start(t testing.TB, mutate func(*service.Options)) *Env {
	t.Helper()
	cfg := keyringtest.Token(t)
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	_ = os.WriteFile(polFile, []byte(PolicyYAML), 0o600)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	e := &Env{T: t, Logs: &SyncBuffer{}}
	e.Opts = service.Options{
		HSM: cfg, StorePath: filepath.Join(dir, "keyd.db"), Socket: filepath.Join(dir, "keyd.sock"),
		Listen: addr, PolicyFile: polFile, InsecureLocalIdentity: true,
		Logger: slog.New(slog.NewJSONHandler(e.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&e.Opts)
	}
	e.Run()
	t.Cleanup(e.Stop)
	return e
}

// Run starts keyd again after Stop.
func (e *Env) Run() {
	t := e.T
	srv, err := service.New(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.srv, e.cancel, e.done = srv, cancel, make(chan error, 1)
	go func() { e.done <- srv.Serve(ctx) }()
	conn := e.Dial(keydclient.Options{Socket: e.Opts.Socket})
	e.Keyd, e.Admin = keydv1.NewKeydClient(conn), keydv1.NewAdminClient(conn)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.Admin.Status(context.Background(), &keydv1.StatusRequest{}); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("keyd did not come up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops keyd and closes the token and store.
func (e *Env) Stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.srv.Close()
	e.cancel = nil
}

// Dial connects to keyd.
func (e *Env) Dial(o keydclient.Options) *grpc.ClientConn {
	conn, err := keydclient.Dial(o)
	if err != nil {
		e.T.Fatal(err)
	}
	e.T.Cleanup(func() { conn.Close() })
	return conn
}
