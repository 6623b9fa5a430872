package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/podkey/podkey/internal/keyd/bench"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
)

// spireServer builds (once, cached) SPIRE's server v1.13.3 and returns
// its binary.
func spireServer(t testing.TB) string { return hackOutput(t, "spire-server.sh") }

// spireConf is SPIRE's server configuration for the comparison: memory
// key manager, sqlite datastore, P-256 keys, its admin API on a local
// socket, one-hour SVIDs as keyd's default.
const spireConf = `server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = "%s/api.sock"
  trust_domain = "bench.podkey.test"
  data_dir = "%s/data"
  log_level = "ERROR"
  ca_key_type = "ec-p256"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "%s/data/datastore.sqlite3"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`

// issuer is one server under load, its process and one call.
type issuer struct {
	name string
	pid  int
	call func(ctx context.Context, i int64) error
}

// issuanceRow is one issuer at one concurrency, over the rounds.
type issuanceRow struct {
	rate, cpuPerCert []float64 // per round
	p50, p99         []float64 // ms
	rssKiB           []int
	errs             int64
}

// BenchmarkIssuanceBesideSPIRE drives keyd (its own process, suite intl on
// SoftHSM2 and suite gm in software, development identity over its local
// socket; and a second keyd whose gm CA key is inside the SM development
// module, keyd-gm-in-sm-module) and SPIRE's server v1.13.3 (memory key manager, sqlite
// datastore, MintX509SVID over its local admin socket) with the same load
// from this process: X.509 certificates from fresh ECDSA P-256 (or SM2)
// CSRs, at 1, 8 and 64 callers, interleaved, three rounds of 5 s
// (PODKEY_SPIRE_ROUNDS, PODKEY_SPIRE_SECONDS). Reported, as medians over the
// rounds: rate, p50, p99, the server's CPU per certificate (from its
// /proc/PID/stat), its resident memory, and keyd's rate and certificates
// per CPU-second as ratios to SPIRE's. keyd makes every certificate's
// audit record and node binding durable before it answers; SPIRE's Mint
// writes nothing. With PODKEY_KEYD_CPUPROFILE=FILE keyd writes its CPU
// profile of the whole run there. With PODKEY_BASELINE_BIN=DIR a keyd
// built from another revision (DIR/podkey-keyd, DIR/podkey) is measured
// beside it, interleaved, as baseline-keyd-*.
//
//	go test -run '^$' -bench IssuanceBesideSPIRE -benchtime 1x -timeout 30m ./e2e
func BenchmarkIssuanceBesideSPIRE(b *testing.B) {
	rounds, seconds := envInt("PODKEY_SPIRE_ROUNDS", 3), envInt("PODKEY_SPIRE_SECONDS", 5)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	spire := startSPIRE(b, ctx)
	w := newWorld(b)
	args := []string{"--listen", "127.0.0.1:0", "--insecure-local-identity"}
	profile := os.Getenv("PODKEY_KEYD_CPUPROFILE") // keyd's own profile under this load
	if profile != "" {
		args = append(args, "--cpuprofile", profile)
	}
	keydProc := w.startKeyd(ctx, args...)
	keyd := keydv1.NewKeydClient(mustDial(b, w.sock()))
	// The same keyd on the SM development module: gm signed inside it.
	smw := newSMWorld(b)
	smProc := smw.startKeyd(ctx)
	smKeyd := keydv1.NewKeydClient(mustDial(b, smw.sock()))
	// A baseline keyd (PODKEY_BASELINE_BIN: a directory with podkey and
	// podkey-keyd built from another revision) on the same token, measured
	// interleaved with this one: before and after a change in one run.
	var base keydv1.KeydClient
	var baseProc *exec.Cmd
	if dir := os.Getenv("PODKEY_BASELINE_BIN"); dir != "" {
		own := w.bin
		w.bin = dir
		sock := filepath.Join(w.dir, "base.sock")
		baseProc = w.startKeydAt(ctx, sock, "--store", filepath.Join(w.dir, "base.db"), "--insecure-local-identity")
		w.bin, w.keyd = own, keydProc // stopKeyd stops (and profiles) the keyd under test
		base = keydv1.NewKeydClient(mustDial(b, sock))
	}

	// CSRs made before the measurement, so that the callers, which share
	// the machine's cores with the servers, spend little.
	const pool = 1024
	keydCSRs := func(s object.Spec) []*keydv1.ObjectRequest {
		if err := s.Normalize(); err != nil {
			b.Fatal(err)
		}
		out := make([]*keydv1.ObjectRequest, pool)
		for i := range out {
			req, _, err := keydclient.IssueRequest(pod.Identity{}, "", []object.Spec{s})
			if err != nil {
				b.Fatal(err)
			}
			out[i] = req.Objects[0]
		}
		return out
	}
	intlCSRs := keydCSRs(object.Spec{Name: "c", Kind: object.Certificate, Suite: suite.Intl})
	gmCSRs := keydCSRs(object.Spec{Name: "c", Kind: object.Certificate, Algorithm: "sm2"})
	spireCSRs := make([][]byte, pool)
	for i := range spireCSRs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		id, _ := url.Parse(fmt.Sprintf("spiffe://bench.podkey.test/ns/bench/pod/%d", i))
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
		if err != nil {
			b.Fatal(err)
		}
		spireCSRs[i] = csr
	}
	var uid atomic.Int64
	keydIssue := func(keyd keydv1.KeydClient, csrs []*keydv1.ObjectRequest) func(context.Context, int64) error {
		return func(ctx context.Context, i int64) error {
			p := pod.Identity{Namespace: "payments", Name: "bench", ServiceAccount: "payments", UID: fmt.Sprintf("spire-bench-%d", uid.Add(1)), Node: "node-1"}
			_, err := keyd.Issue(ctx, &keydv1.IssueRequest{Pod: keydv1.NewPodIdentity(p), Objects: []*keydv1.ObjectRequest{csrs[i%pool]}})
			return err
		}
	}
	issuers := []issuer{
		{"keyd-intl", keydProc.Process.Pid, keydIssue(keyd, intlCSRs)},
		{"keyd-gm", keydProc.Process.Pid, keydIssue(keyd, gmCSRs)},
		{"keyd-gm-in-sm-module", smProc.Process.Pid, keydIssue(smKeyd, gmCSRs)},
		{"spire", spire.pid, func(ctx context.Context, i int64) error {
			_, err := spire.client.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: spireCSRs[i%pool], Ttl: 3600})
			return err
		}},
	}
	if base != nil {
		issuers = append(issuers, issuer{"baseline-keyd-intl", baseProc.Process.Pid, keydIssue(base, intlCSRs)},
			issuer{"baseline-keyd-gm", baseProc.Process.Pid, keydIssue(base, gmCSRs)})
	}
	for _, is := range issuers { // warm both (connections, caches, first CA)
		if err := is.call(ctx, 0); err != nil {
			b.Fatalf("%s: %v", is.name, err)
		}
	}
	callers := envInts("PODKEY_SPIRE_CALLERS", []int{1, 8, 64})
	rows := map[string]*issuanceRow{}
	for r := 0; r < rounds; r++ {
		for _, n := range callers {
			for _, is := range issuers {
				var seq atomic.Int64
				cpu0 := processCPU(is.pid)
				rate, p50, p99, errs := bench.Measure(ctx, n, time.Duration(seconds)*time.Second, func(ctx context.Context) error {
					return is.call(ctx, seq.Add(1))
				})
				cpu := processCPU(is.pid) - cpu0
				key := fmt.Sprintf("callers=%d/%s", n, is.name)
				row := rows[key]
				if row == nil {
					row = &issuanceRow{}
					rows[key] = row
				}
				row.rate = append(row.rate, rate)
				row.cpuPerCert = append(row.cpuPerCert, cpu.Seconds()/(rate*float64(seconds)))
				row.p50, row.p99 = append(row.p50, ms(p50)), append(row.p99, ms(p99))
				row.rssKiB = append(row.rssKiB, rssKiB(is.pid))
				row.errs += errs
			}
		}
	}
	if profile != "" {
		w.stopKeyd() // writes the profile
	}
	for _, n := range callers {
		spireRow := rows[fmt.Sprintf("callers=%d/spire", n)]
		for _, is := range issuers {
			key := fmt.Sprintf("callers=%d/%s", n, is.name)
			row := rows[key]
			b.Run(key, func(b *testing.B) {
				b.ReportMetric(median(row.rate), "certs/s")
				b.ReportMetric(median(row.p50), "p50-ms")
				b.ReportMetric(median(row.p99), "p99-ms")
				b.ReportMetric(median(row.cpuPerCert)*1000, "server-cpu-ms/cert")
				b.ReportMetric(float64(median(row.rssKiB))/1024, "server-rss-MiB")
				b.ReportMetric(float64(row.errs), "errors")
				if is.name != "spire" {
					b.ReportMetric(median(row.rate)/median(spireRow.rate), "rate/spire")
					b.ReportMetric(median(spireRow.cpuPerCert)/median(row.cpuPerCert), "per-core/spire")
				}
			})
		}
	}
}

type spireProcess struct {
	pid    int
	client svidv1.SVIDClient
}

// startSPIRE runs SPIRE's server and waits for its admin socket.
func startSPIRE(t testing.TB, ctx context.Context) spireProcess {
	bin := spireServer(t)
	dir, err := os.MkdirTemp("", "podkey-spire-") // short: a unix socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	port, _ := strconv.Atoi(strings.Split(freePort(t), ":")[1])
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(spireConf, port, dir, dir, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "run", "-config", conf)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "api.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := svidv1.NewSVIDClient(conn)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		id, _ := url.Parse("spiffe://bench.podkey.test/ready")
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := client.MintX509SVID(cctx, &svidv1.MintX509SVIDRequest{Csr: csr})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SPIRE's server did not mint: %v\n%s", err, log)
		}
	}
	return spireProcess{pid: cmd.Process.Pid, client: client}
}

// processCPU is a process's user and system CPU time so far.
func processCPU(pid int) time.Duration {
	_, cpu := statCPU(fmt.Sprintf("/proc/%d/stat", pid))
	return cpu
}

// statCPU reads a /proc/PID/stat file: the command's name and its user
// and system CPU time so far ("" when unreadable).
func statCPU(path string) (string, time.Duration) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return "", 0
	}
	f := strings.Fields(s[close+1:])
	if len(f) < 13 {
		return "", 0
	}
	// After the command: state(0) ppid(1) ... utime(11) stime(12), in
	// clock ticks of 1/100 s on Linux.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return s[open+1 : close], time.Duration(ut+st) * 10 * time.Millisecond
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// envInts is a comma-separated list of positive integers from the
// environment, or def.
func envInts(name string, def []int) []int {
	var out []int
	for _, f := range strings.Split(os.Getenv(name), ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return def
	}
	return out
}
