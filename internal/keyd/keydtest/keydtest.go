// Package keydtest runs a real keyd for tests: a fresh SoftHSM2 token with
// root keys, a bbolt store in a temporary directory, the local socket and a
// TLS listener on a free loopback port, and captured JSON logs.
package keydtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/keyd/store"
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
	T testing.TB
	// HSM is the test's SoftHSM2 token, StorePath its bbolt file and
	// Postgres, when set, the PostgreSQL connection string keyd keeps
	// its state in instead. Run opens them into Opts.
	HSM       hsm.Config
	StorePath string
	Postgres  string
	Opts      service.Options
	Logs      *SyncBuffer
	Keyd      keydv1.KeydClient
	Admin     keydv1.AdminClient
	cancel    context.CancelFunc
	done      chan error
	srv       *service.Server
}

// PolicyYAML lets payments/payments obtain every object.
const PolicyYAML = `version: v1
rules:
- namespace: payments
  serviceAccount: payments
  objects: ["*"]
`

// Start runs a real keyd on a fresh SoftHSM2 token and a bbolt store, with
// a unix socket and a TLS listener on a free loopback port; mutate may
// change its options first. It stops when the test ends.
func Start(t testing.TB, mutate func(*service.Options)) *Env {
	t.Helper()
	return StartOn(t, "", mutate)
}

// StartOn is Start with keyd's state in the PostgreSQL database at conn
// ("" keeps the bbolt store).
func StartOn(t testing.TB, conn string, mutate func(*service.Options)) *Env {
	t.Helper()
	return start(t, conn, "", mutate)
}

// StartAt is Start with the bbolt store at path.
func StartAt(t testing.TB, path string, mutate func(*service.Options)) *Env {
	t.Helper()
	return start(t, "", path, mutate)
}

// StartOnModule is Start on a token of a module of the matrix (SoftHSM2
// or the SM module, with its mechanism table).
func StartOnModule(t testing.TB, m hsmtest.Module, mutate func(*service.Options)) *Env {
	t.Helper()
	return startOn(t, keyringtest.TokenOn(t, m), "", "", mutate)
}

func start(t testing.TB, conn, path string, mutate func(*service.Options)) *Env {
	t.Helper()
	return startOn(t, keyringtest.Token(t), conn, path, mutate)
}

func startOn(t testing.TB, cfg hsm.Config, conn, path string, mutate func(*service.Options)) *Env {
	t.Helper()
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	_ = os.WriteFile(polFile, []byte(PolicyYAML), 0o600)
	addr := FreeAddr(t)
	if path == "" {
		path = filepath.Join(dir, "keyd.db")
	}
	e := &Env{T: t, Logs: &SyncBuffer{}, HSM: cfg, StorePath: path, Postgres: conn}
	e.Opts = service.Options{
		Socket: filepath.Join(dir, "keyd.sock"), SharedPorts: conn != "",
		Listen: addr, PolicyFile: polFile, InsecureLocalIdentity: true,
		CheckpointInterval: -1, // on demand: tests count records
		Logger:             slog.New(slog.NewJSONHandler(e.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&e.Opts)
	}
	e.Run()
	t.Cleanup(e.Stop)
	return e
}

// Run starts keyd again after Stop: it opens the token, the keyring and
// the store as podkey-keyd does, and injects them.
func (e *Env) Run() {
	t := e.T
	e.open()
	srv, err := service.New(context.Background(), e.Opts)
	if err != nil {
		e.closeDeps()
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
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("keyd did not come up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// keyd opens its JWK Set's listener after the socket answers.
	for e.Opts.JWKSListen != "" {
		c, err := net.Dial("tcp", e.Opts.JWKSListen)
		if err == nil {
			c.Close()
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("keyd's JWK Set listener did not come up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreeAddr is a loopback address with a port free now, for a listener
// a test configures keyd with.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Stop stops keyd and closes the token and store.
func (e *Env) Stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.srv.Close()
	e.closeDeps()
	e.cancel = nil
}

func (e *Env) open() {
	t := e.T
	tok, err := hsm.Open(e.HSM)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.Open(context.Background(), tok)
	if err != nil {
		tok.Close()
		t.Fatal(err)
	}
	var st store.Store
	if e.Postgres != "" {
		st, err = store.OpenPostgres(context.Background(), e.Postgres, store.PostgresOptions{})
	} else {
		st, err = store.OpenBolt(e.StorePath)
	}
	if err != nil {
		kr.Close()
		tok.Close()
		t.Fatal(err)
	}
	e.Opts.Keyring, e.Opts.Store = kr, st
}

func (e *Env) closeDeps() {
	e.Opts.Store.Close()
	e.Opts.Keyring.Close()
	e.Opts.Keyring.Token().Close()
}

// AuditLines are keyd's audit records as ExportAudit streams them, one
// JSON document each; a stream that fails before its end fails the test.
func (e *Env) AuditLines() []string {
	e.T.Helper()
	stream, err := e.Admin.ExportAudit(context.Background(), &keydv1.ExportAuditRequest{})
	if err != nil {
		e.T.Fatal(err)
	}
	var out []string
	for {
		rec, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			e.T.Fatal(err)
		}
		out = append(out, string(rec.Json))
	}
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

// Replica starts another keyd on e's token and on the PostgreSQL database
// at conn ("": e's), with a socket of its own and neither a TLS listener
// nor a policy file: a replica of e, with mutate's changes to its
// options. It stops when the test ends.
func (e *Env) Replica(conn string, mutate ...func(*service.Options)) *Env {
	if conn == "" {
		conn = e.Postgres
	}
	o := e.Opts
	o.Socket, o.Listen, o.PolicyFile = filepath.Join(e.T.TempDir(), "keyd.sock"), "", ""
	for _, m := range mutate {
		m(&o)
	}
	r := &Env{T: e.T, HSM: e.HSM, Postgres: conn, Opts: o, Logs: &SyncBuffer{}}
	r.Run()
	e.T.Cleanup(r.Stop)
	return r
}
