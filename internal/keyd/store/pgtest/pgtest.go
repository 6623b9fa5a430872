// Package pgtest runs a PostgreSQL server of a test's own: initdb on a
// fresh data directory, a unix socket only, as the unprivileged postgres
// user when the test runs as root (the server refuses root).
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Server is a running PostgreSQL.
type Server struct {
	dir, bin string
	port     int
	cred     *syscall.Credential
	dbs      atomic.Int64
	running  bool
	tls      bool
	durable  bool
	// CAFile verifies a StartTLS server's certificate.
	CAFile string
}

// binDir finds the PostgreSQL programs: Debian's postgresql package puts
// them in /usr/lib/postgresql/<version>/bin, off PATH.
func binDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", fmt.Errorf("PostgreSQL not installed: run hack/install-deps.sh")
}

// Start runs a server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, false, false, false)
}

// StartWithPasswords runs a server whose unix socket trusts the
// superuser podkey (ConnString) and asks every other role for its
// password (SCRAM-SHA-256): for tests of logins made for pods.
func StartWithPasswords(t testing.TB) *Server {
	t.Helper()
	return start(t, false, false, true)
}

// StartDurable runs a server that syncs every commit to disk, as in
// production, for measurements beside bbolt (which fsyncs every commit);
// Start's server skips fsync to keep tests fast.
func StartDurable(t testing.TB) *Server {
	t.Helper()
	return start(t, false, true, false)
}

// StartTLS runs a server that takes TCP connections on 127.0.0.1 only
// over TLS, with a certificate for 127.0.0.1 and localhost from a CA of
// its own (CAFile), as a managed database would; TLSConnString reaches it.
func StartTLS(t testing.TB) *Server {
	t.Helper()
	return start(t, true, false, false)
}

// StartTLSWithPasswords is StartTLS with StartWithPasswords' rules, on
// TCP too: the superuser podkey is trusted, every other role gives its
// password.
func StartTLSWithPasswords(t testing.TB) *Server {
	t.Helper()
	return start(t, true, false, true)
}

func start(t testing.TB, withTLS, durable, passwords bool) *Server {
	bin, err := binDir()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "podkey-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{dir: dir, bin: bin, port: 20000 + os.Getpid()%20000, tls: withTLS, durable: durable}
	if withTLS {
		s.port = freePort(t)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user (hack/install-deps.sh): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	s.run(t, "initdb", "-D", s.data(), "-U", "podkey", "--auth=trust", "-E", "UTF8", "--no-sync")
	if withTLS {
		s.configureTLS(t)
	}
	if passwords {
		hba := "local all podkey trust\nlocal all all scram-sha-256\n"
		if withTLS {
			hba += "hostssl all podkey 127.0.0.0/8 trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n"
		}
		if err := os.WriteFile(filepath.Join(s.data(), "pg_hba.conf"), []byte(hba), 0o600); err != nil {
			t.Fatal(err)
		}
		if s.cred != nil {
			_ = os.Chown(filepath.Join(s.data(), "pg_hba.conf"), int(s.cred.Uid), int(s.cred.Gid))
		}
	}
	s.Start(t)
	t.Cleanup(func() {
		if s.running {
			s.Stop(t)
		}
	})
	return s
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// Start starts the server again after Stop, on the same socket and data.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	listen := ""
	if s.tls {
		listen = "127.0.0.1,127.0.0.2" // the second is not in the certificate
	}
	s.run(t, "pg_ctl", "start", "-w", "-D", s.data(), "-l", filepath.Join(s.dir, "log"),
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses='%s' -c fsync=%t", s.port, s.dir, listen, s.durable))
	s.running = true
}

// Stop stops the server at once, dropping every connection (pg_ctl's
// immediate mode: as a crash would).
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.run(t, "pg_ctl", "stop", "-m", "immediate", "-D", s.data())
	s.running = false
}

func (s *Server) run(t testing.TB, prog string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, prog), args...)
	cmd.Dir = s.dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		t.Fatalf("%s: %v\n%s\n%s", prog, err, out, log)
	}
}

// Socket is the directory of the server's unix socket, and its port.
func (s *Server) Socket() (dir string, port int) { return s.dir, s.port }

// ConnString is the connection string of database db.
func (s *Server) ConnString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=podkey dbname=%s sslmode=disable", s.dir, s.port, db)
}

// NewDatabase creates an empty database and returns its connection string.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("podkey_%d", s.dbs.Add(1))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return s.ConnString(name)
}

// Freeze stops the server and every session's process with SIGSTOP: the
// database stops answering without closing a connection, as a stalled
// disk or a frozen host would. Thaw (or the test's end) resumes them.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	pids := s.processes(t)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	t.Cleanup(func() { s.signal(pids, syscall.SIGCONT) })
}

// Thaw resumes a frozen server.
func (s *Server) Thaw(t testing.TB) {
	t.Helper()
	s.signal(s.processes(t), syscall.SIGCONT)
}

func (s *Server) signal(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
}

// processes are the postmaster (from postmaster.pid) and its children.
func (s *Server) processes(t testing.TB) []int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	master, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{master}
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		st, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if i := strings.LastIndexByte(string(st), ')'); i > 0 {
			if f := strings.Fields(string(st[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(master) {
				pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
