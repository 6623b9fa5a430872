// Package bench measures podkey against its physical limit in one run on
// one token: raw HSM operations per second beside credentials issued per
// second through keyd's gRPC API, as ratios. Nothing here asserts a time;
// it reports.
package bench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
)

// Options configure a run. Every field says its default.
type Options struct {
	HSM hsm.Config // the token, already initialised with 'podkey hsm init'
	// Duration of each measurement. Default 2s.
	Duration time.Duration
	// Concurrency levels. Default 1, 8, 64.
	Concurrency []int
	// Database, when set, adds the database rows: a login made for a new
	// pod on it, beside an API key; and every login revoked and dropped.
	Database *Database
}

// Database is a connection the bench defines in its keyd (as 'podkey
// database put' does) and makes logins on. Every login it makes is
// dropped before Run returns.
type Database struct {
	Engine, GroupRole string
	Admin             string // the admin connection string
}

// Result is one row.
type Result struct {
	Name        string
	Concurrency int
	PerSecond   float64
	P50, P99    time.Duration
	Errors      int64
	FirstError  error   // the first of the errors, to say why
	Limit       string  // the raw operation compared against
	LimitRate   float64 // its rate at the same concurrency
	HSMOps      int     // HSM operations per credential (the audit log's one a second not counted)
	// CPU is the process's CPU time (user and system, every thread: keyd,
	// its callers and the in-process PKCS#11 module) per successful call.
	CPU time.Duration
	// LimitCPU is the raw operation's CPU per call at the same callers.
	LimitCPU time.Duration
}

// processCPU is this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure fills the rate, latencies, errors and CPU per call of a row.
func (r *Result) measure(ctx context.Context, n int, d time.Duration, op func(ctx context.Context) error) {
	var ok atomic.Int64
	var first sync.Once
	cpu0 := processCPU()
	r.PerSecond, r.P50, r.P99, r.Errors = Measure(ctx, n, d, func(ctx context.Context) error {
		err := op(ctx)
		if err == nil {
			ok.Add(1)
		} else {
			first.Do(func() { r.FirstError = err })
		}
		return err
	})
	if c := ok.Load(); c > 0 {
		r.CPU = (processCPU() - cpu0) / time.Duration(c)
	}
}

// Measure runs op from n goroutines for d and reports the rate, the
// median and 99th-percentile latency of successful calls, and the errors.
func Measure(ctx context.Context, n int, d time.Duration, op func(ctx context.Context) error) (float64, time.Duration, time.Duration, int64) {
	var (
		count, errs atomic.Int64
		mu          sync.Mutex
		lat         []time.Duration
		wg          sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if err := op(ctx); err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
				count.Add(1)
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(float64(len(lat)-1)*p)]
	}
	return float64(count.Load()) / elapsed.Seconds(), pct(0.50), pct(0.99), errs.Load()
}

type kindCase struct {
	name   string
	object *keydv1.ObjectRequest
	limit  string // raw operation name
	hsmOps int
}

// rawOp is one raw operation measured beside issuance.
type rawOp struct {
	name string
	op   func(context.Context) error
}

// TuneRuntime tunes this process's garbage collector as podkey-keyd tunes
// itself, since keyd runs in it (the callers share the setting), and
// returns the GOGC in force.
func TuneRuntime() (gogc int) {
	service.TuneRuntime(slog.New(slog.DiscardHandler))
	gogc = debug.SetGCPercent(-1)
	debug.SetGCPercent(gogc)
	return gogc
}

// Run measures and writes a table to w.
func Run(ctx context.Context, o Options, w io.Writer) ([]Result, error) {
	if o.Duration == 0 {
		o.Duration = 2 * time.Second
	}
	if len(o.Concurrency) == 0 {
		o.Concurrency = []int{1, 8, 64}
	}
	// One token and keyring, for keyd and for the raw operations beside it.
	tok, err := hsm.Open(o.HSM)
	if err != nil {
		return nil, err
	}
	defer tok.Close()
	kr, err := keyring.Open(ctx, tok)
	if err != nil {
		return nil, err
	}
	defer kr.Close()
	conn, stop, err := startKeyd(ctx, kr)
	if err != nil {
		return nil, err
	}
	defer stop()
	client := keydv1.NewKeydClient(conn)
	raw, err := rawOps(ctx, tok, kr, healthpb.NewHealthClient(conn))
	if err != nil {
		return nil, err
	}
	kinds, err := kindCases(tok)
	if err != nil {
		return nil, err
	}
	verifies, err := verifyCases(ctx, client)
	if err != nil {
		return nil, err
	}
	if o.Database != nil {
		if _, err := keydv1.NewAdminClient(conn).PutDatabase(ctx, &keydv1.PutDatabaseRequest{Name: "bench-db",
			Engine: o.Database.Engine, GroupRole: o.Database.GroupRole, AdminConnection: o.Database.Admin}); err != nil {
			return nil, fmt.Errorf("bench: the database: %w", err)
		}
	}
	// Every issuance is a new pod on a node, as a volume publish is: keyd
	// records the pod's node with the issuance's audit record.
	var uid atomic.Int64
	var results []Result
	var dbPods sync.Map // uid of every pod given a database login
	for _, n := range o.Concurrency {
		done := map[string]Result{}
		against := func(r Result, limit string) Result {
			r.Limit, r.LimitRate, r.LimitCPU = limit, done[limit].PerSecond, done[limit].CPU
			return r
		}
		for _, r := range raw {
			res := Result{Name: "raw " + r.name, Concurrency: n}
			res.measure(ctx, n, o.Duration, r.op)
			done[r.name] = res
			results = append(results, res)
		}
		for _, k := range kinds {
			res := Result{Name: "issue " + k.name, Concurrency: n, HSMOps: k.hsmOps}
			res.measure(ctx, n, o.Duration, func(ctx context.Context) error {
				p := benchPod
				p.UID = fmt.Sprintf("bench-%d", uid.Add(1))
				_, err := client.Issue(ctx, &keydv1.IssueRequest{Pod: keydv1.NewPodIdentity(p), Objects: []*keydv1.ObjectRequest{k.object}})
				return err
			})
			results = append(results, against(res, k.limit))
			done[res.Name] = res
		}
		if o.Database != nil {
			// A new pod's own login: a password from the token's generator,
			// wrapped under the KEK, a lease written, the login created.
			res := Result{Name: "issue database login (new pod)", Concurrency: n, HSMOps: 3}
			res.measure(ctx, n, o.Duration, func(ctx context.Context) error {
				p := benchPod
				p.UID = fmt.Sprintf("bench-%d", uid.Add(1))
				dbPods.Store(p.UID, true)
				_, err := client.Issue(ctx, &keydv1.IssueRequest{Pod: keydv1.NewPodIdentity(p),
					Objects: []*keydv1.ObjectRequest{{Name: "bench-db", Kind: string(object.Database)}}})
				return err
			})
			results = append(results, against(res, "issue apiKey intl"))
		}
		for _, v := range verifies {
			res := Result{Name: v.name, Concurrency: n, HSMOps: 1}
			res.measure(ctx, n, o.Duration, v.op)
			res = against(res, v.limit)
			done[v.name] = res
			results = append(results, res)
		}
	}
	if o.Database != nil {
		res, err := revokeDatabaseLogins(ctx, conn, &dbPods)
		if err != nil {
			return nil, err
		}
		results = append(results, res)
	}
	return results, Print(w, results)
}

// revokeDatabaseLogins revokes every pod the bench gave a login and
// measures how fast keyd's reaper ends and drops them.
func revokeDatabaseLogins(ctx context.Context, conn *grpc.ClientConn, pods *sync.Map) (Result, error) {
	client, admin := keydv1.NewKeydClient(conn), keydv1.NewAdminClient(conn)
	cpu0, start := processCPU(), time.Now()
	var err error
	n := 0
	pods.Range(func(k, _ any) bool {
		n++
		p := benchPod
		p.UID = k.(string)
		_, err = client.Revoke(ctx, &keydv1.RevokeRequest{Pod: keydv1.NewPodIdentity(p)})
		return err == nil
	})
	if err != nil {
		return Result{}, fmt.Errorf("bench: revoking database logins: %w", err)
	}
	for last := -1; last != 0; {
		l, err := admin.ListLeases(ctx, &keydv1.ListLeasesRequest{})
		if err != nil {
			return Result{}, err
		}
		last = len(l.Leases)
		if time.Since(start) > 10*time.Minute {
			return Result{}, fmt.Errorf("bench: %d database logins still not dropped after 10m", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := Result{Name: "revoke database login (reaper: sessions ended, login dropped)", Concurrency: 1}
	if n > 0 {
		d := time.Since(start)
		r.PerSecond, r.CPU = float64(n)/d.Seconds(), (processCPU()-cpu0)/time.Duration(n)
	}
	return r, nil
}

// verifyCase is a Verify row.
type verifyCase struct {
	name, limit string
	op          func(context.Context) error
}

// verifyCases verify one intl API key's signatures as a backend does: over
// a plain string (a signature check alone), and over signed HTTP requests,
// each with a fresh nonce that keyd records durably with the audit record
// (the cost of refusing replays after a restart is the ratio between them).
func verifyCases(ctx context.Context, client keydv1.KeydClient) ([]verifyCase, error) {
	p := benchPod
	p.UID = "bench-verify"
	resp, err := client.Issue(ctx, &keydv1.IssueRequest{Pod: keydv1.NewPodIdentity(p),
		Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: string(object.APIKey)}}})
	if err != nil {
		return nil, err
	}
	ak := resp.Credentials[0].GetApiKey()
	msg := []byte("GET /ledger")
	plainSig := accesskey.Sign(suite.Intl, ak.SecretKey, msg)
	const plain = "verify apiKey signature"
	return []verifyCase{
		{plain, "HSM HMAC-SHA256", func(ctx context.Context) error {
			_, err := client.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: msg, Signature: plainSig})
			return err
		}},
		{"verify signed request (durable nonce)", plain, func(ctx context.Context) error {
			r, _ := http.NewRequest(http.MethodGet, "https://ledger/v1/accounts", nil)
			if err := reqsign.Sign(r, suite.Intl, ak.AccessKeyId, ak.SecretKey, time.Now()); err != nil {
				return err
			}
			a, sts, err := reqsign.Canonical(r)
			if err != nil {
				return err
			}
			_, err = client.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: a.AccessKeyID, StringToSign: sts, Signature: a.Signature})
			return err
		}},
	}, nil
}

// benchPod is the pod every issuance is for, but for its UID.
var benchPod = pod.Identity{Namespace: "bench", ServiceAccount: "bench", Name: "p", Node: "bench-node"}

// startKeyd serves keyd in this process on kr, a temporary bbolt store and
// socket, with a policy granting the bench pod everything and one
// enrolled secret, and returns a connection to it once it answers.
func startKeyd(ctx context.Context, kr *keyring.Keyring) (*grpc.ClientConn, func(), error) {
	dir, err := os.MkdirTemp("", "podkey-bench-")
	if err != nil {
		return nil, nil, err
	}
	var cleanup []func()
	stop := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	cleanup = append(cleanup, func() { os.RemoveAll(dir) })
	fail := func(err error) (*grpc.ClientConn, func(), error) { stop(); return nil, nil, err }
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte("version: v1\nrules:\n- {namespace: bench, serviceAccount: bench, objects: [\"*\"]}\n"), 0o600); err != nil {
		return fail(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, "keyd.db"))
	if err != nil {
		return fail(err)
	}
	cleanup = append(cleanup, func() { st.Close() })
	srv, err := service.New(ctx, service.Options{Keyring: kr, Store: st, Socket: filepath.Join(dir, "keyd.sock"),
		PolicyFile: pol, InsecureLocalIdentity: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return fail(err)
	}
	cleanup = append(cleanup, func() { srv.Close() })
	sctx, cancel := context.WithCancel(ctx)
	cleanup = append(cleanup, cancel)
	go srv.Serve(sctx)
	conn, err := keydclient.Dial(keydclient.Options{Socket: filepath.Join(dir, "keyd.sock")})
	if err != nil {
		return fail(err)
	}
	cleanup = append(cleanup, func() { conn.Close() })
	readyCtx, cancelReady := context.WithTimeout(ctx, 10*time.Second)
	defer cancelReady()
	if _, err := keydv1.NewAdminClient(conn).PutSecret(readyCtx, &keydv1.PutSecretRequest{Namespace: "bench", Name: "db", Value: []byte("bench-secret-value")},
		grpc.WaitForReady(true)); err != nil {
		return fail(fmt.Errorf("bench: keyd not ready: %w", err))
	}
	return conn, stop, nil
}

// rawNames names the raw operations a token does: the gm ones are HSM
// operations on a module whose mechanism table has them, software under
// unwrapped keys otherwise.
type rawNames struct{ gmMAC, gmSign, kek string }

func namesFor(tok *hsm.Token) rawNames {
	m := tok.Mechanisms()
	n := rawNames{gmMAC: "software HMAC-SM3", gmSign: "software SM2 sign", kek: "HSM AES-256-GCM encrypt"}
	if m.SM3HMAC != 0 {
		n.gmMAC = "HSM HMAC-SM3"
	}
	if m.SM2Sign != 0 && m.SM2KeyGen != 0 {
		n.gmSign = "HSM SM2 sign"
	}
	if m.SM4GCM != 0 {
		n.kek = "HSM SM4-GCM encrypt"
	}
	return n
}

// rawOps are the operations issuance is compared with, in table order.
func rawOps(ctx context.Context, tok *hsm.Token, kr *keyring.Keyring, health healthpb.HealthClient) ([]rawOp, error) {
	ecdsaSigner, err := tok.ECDSASigner(ctx, keyring.Label(keyring.CA, suite.Intl, 1))
	if err != nil {
		return nil, err
	}
	sm2Signer, err := kr.TokenSigner(suite.GM, kr.Current(keyring.JWT, suite.GM))
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256([]byte("bench"))
	small := make([]byte, 64)
	names := namesFor(tok)
	gmMACGen := kr.Current(keyring.MAC, suite.GM)
	return []rawOp{
		{"HSM HMAC-SHA256", func(ctx context.Context) error {
			_, err := tok.HMACSHA256(ctx, keyring.AuditLabel, small)
			return err
		}},
		{"HSM ECDSA P-256 sign", func(ctx context.Context) error {
			_, err := ecdsaSigner.SignContext(ctx, digest[:])
			return err
		}},
		{names.kek, func(ctx context.Context) error {
			_, err := tok.EncryptGCM(ctx, keyring.KEKLabel, small, nil)
			return err
		}},
		// The keyring's own HMAC-SM3: inside the module when it has the
		// mechanism, in keyd's memory otherwise.
		{names.gmMAC, func(ctx context.Context) error {
			_, err := kr.MAC(ctx, suite.GM, gmMACGen, small)
			return err
		}},
		// e signed as it is (nil options): the SM2 of a token or a
		// certificate without keyd's Z computation.
		{names.gmSign, func(context.Context) error {
			_, err := sm2Signer.Sign(rand.Reader, digest[:], nil)
			return err
		}},
		// The transport's floor: a health check through the same connection
		// and keyd, no credential work. Kinds without HSM work compare with it.
		{"keyd gRPC round trip", func(ctx context.Context) error {
			_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
	}, nil
}

// kindCases are the issuance rows: one object of each kind and suite,
// requested as a node requests it. A certificate's CSR is made once and
// sent with every call, so the rows measure keyd, not key generation.
//
// hsmOps counts token operations per issued credential; software work
// under unwrapped keys is not counted, nor the audit log's one MAC a
// second, which every credential in that second shares.
func kindCases(tok *hsm.Token) ([]kindCase, error) {
	names := namesFor(tok)
	gmMAC, gmMACOps := "keyd gRPC round trip", 0
	if strings.HasPrefix(names.gmMAC, "HSM") {
		gmMAC, gmMACOps = names.gmMAC, 1
	}
	gmSignOps := 0
	if strings.HasPrefix(names.gmSign, "HSM") {
		gmSignOps = 1
	}
	cases := []struct {
		name   string
		spec   object.Spec
		limit  string
		hsmOps int
	}{
		{"apiKey intl", object.Spec{Name: "k", Kind: object.APIKey}, "HSM HMAC-SHA256", 1},
		{"apiKey gm", object.Spec{Name: "k", Kind: object.APIKey, Suite: suite.GM}, gmMAC, gmMACOps},
		{"derivedKey intl", object.Spec{Name: "d", Kind: object.DerivedKey}, "HSM HMAC-SHA256", 1},
		{"derivedKey gm", object.Spec{Name: "d", Kind: object.DerivedKey, Suite: suite.GM}, gmMAC, gmMACOps},
		{"certificate intl", object.Spec{Name: "c", Kind: object.Certificate}, "HSM ECDSA P-256 sign", 1},
		{"certificate gm", object.Spec{Name: "c", Kind: object.Certificate, Algorithm: "sm2"}, names.gmSign, gmSignOps},
		// Two CA signatures, the KEK wrapping the escrow, a store write.
		{"tlcp pair", object.Spec{Name: "l", Kind: object.TLCP}, names.gmSign, 2 * gmSignOps},
		{"token intl", object.Spec{Name: "t", Kind: object.Token}, "HSM ECDSA P-256 sign", 1},
		{"token gm", object.Spec{Name: "t", Kind: object.Token, Suite: suite.GM}, names.gmSign, gmSignOps},
		{"secret", object.Spec{Name: "db", Kind: object.Secret}, names.kek, 1},
	}
	var out []kindCase
	for _, c := range cases {
		if err := c.spec.Normalize(); err != nil {
			return nil, err
		}
		req, _, err := keydclient.IssueRequest(benchPod, "", []object.Spec{c.spec})
		if err != nil {
			return nil, err
		}
		out = append(out, kindCase{c.name, req.Objects[0], c.limit, c.hsmOps})
	}
	return out, nil
}

// Print renders results as a Markdown table.
func Print(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| operation\t callers\t per second\t p50\t p99\t errors\t CPU per call\t compared with (same callers)\t its rate\t ratio\t its CPU\t CPU beyond it\t HSM ops per credential (+1 a second for the audit log)\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t---\t---\t---\t---\t---\t---\t")
	us := func(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
	for _, r := range results {
		ratio, limit, limitRate, limitCPU, beyond, ops := "", "", "", "", "", ""
		if r.Limit != "" {
			limit, limitRate, limitCPU, beyond = r.Limit, fmt.Sprintf("%.0f", r.LimitRate), us(r.LimitCPU), us(r.CPU-r.LimitCPU)
			if r.LimitRate > 0 {
				ratio = fmt.Sprintf("%.2f", r.PerSecond/r.LimitRate)
			}
			ops = fmt.Sprint(r.HSMOps)
		}
		fmt.Fprintf(tw, "| %s\t %d\t %.0f\t %s\t %s\t %d\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", r.Name, r.Concurrency, r.PerSecond,
			r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Errors, us(r.CPU), limit, limitRate, ratio, limitCPU, beyond, ops)
	}
	return tw.Flush()
}
