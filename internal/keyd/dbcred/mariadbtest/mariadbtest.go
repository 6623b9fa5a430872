// Package mariadbtest runs a MariaDB server of a test's own: a fresh data
// directory, a unix socket only, as the mysql user when the test runs as
// root.
package mariadbtest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Server is a running MariaDB.
type Server struct {
	dir  string
	cmd  *exec.Cmd
	cred *syscall.Credential
	user string
}

// Start runs a server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	for _, p := range []string{"mariadbd", "mariadb-install-db"} {
		if _, err := exec.LookPath(p); err != nil {
			if _, err := os.Stat("/usr/sbin/" + p); err != nil {
				t.Fatalf("MariaDB not installed (%s): run hack/install-deps.sh", p)
			}
		}
	}
	dir, err := os.MkdirTemp("", "podkey-maria-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{dir: dir, user: "root"}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("mysql")
		if err != nil {
			t.Fatalf("running as root needs the mysql user (hack/install-deps.sh): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred, s.user = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, "mysql"
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	install := exec.Command(prog("mariadb-install-db"), "--no-defaults", "--datadir="+s.data(), "--user="+s.user,
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	s.Start(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

func prog(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// SocketPath is the server's unix socket.
func (s *Server) SocketPath() string { return filepath.Join(s.dir, "sock") }

// Start starts the server (again, after Stop) and waits until it answers.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.cmd = exec.Command(prog("mariadbd"), "--no-defaults", "--datadir="+s.data(), "--socket="+s.SocketPath(),
		"--skip-networking", "--pid-file="+filepath.Join(s.dir, "pid"), "--user="+s.user,
		"--log-error="+filepath.Join(s.dir, "error.log"), "--innodb-buffer-pool-size=16M",
		"--innodb-log-file-size=8M", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0")
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		db := s.Open(t, "")
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		db.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
			t.Fatalf("MariaDB did not start: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server at once (SIGKILL: as a crash would).
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Freeze stops the server with SIGSTOP: it stops answering without
// closing a connection. Thaw resumes it.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { s.Thaw(t) })
}

// Thaw resumes a frozen server.
func (s *Server) Thaw(t testing.TB) {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// RootDSN is the administrator's DSN (root, no password, the socket).
func (s *Server) RootDSN(db string) string {
	return fmt.Sprintf("root@unix(%s)/%s", s.SocketPath(), db)
}

// DSN is user's DSN with password on the socket.
func (s *Server) DSN(user, password, db string) string {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = user, password, "unix", s.SocketPath(), db
	c.Timeout, c.ReadTimeout, c.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
	return c.FormatDSN()
}

// Open opens the database db as root.
func (s *Server) Open(t testing.TB, db string) *sql.DB {
	t.Helper()
	d, err := sql.Open("mysql", s.RootDSN(db)+"?timeout=5s&readTimeout=5s&writeTimeout=5s")
	if err != nil {
		t.Fatal(err)
	}
	return d
}
