// Package partition cuts one keyd replica off its PostgreSQL without a
// word (no FIN, no RST: a frozen host or a silent partition) while it
// appends to the shared audit chain, under load on every replica.
package partition

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/jackc/pgx/v5"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// proxy relays TCP connections to target; frozen, it stops relaying in
// both directions and closes nothing, as a silent partition does.
type proxy struct {
	l      net.Listener
	target string
	frozen atomic.Bool

	mu    sync.Mutex
	ports []int // local ports of the connections to target
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *proxy) serve(c net.Conn) {
	for p.frozen.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.ports = append(p.ports, s.LocalAddr().(*net.TCPAddr).Port)
	p.mu.Unlock()
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for p.frozen.Load() {
				time.Sleep(10 * time.Millisecond)
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				dst.Close()
				return
			}
		}
	}
	go relay(s, c)
	go relay(c, s)
}

func (p *proxy) port() int { return p.l.Addr().(*net.TCPAddr).Port }

type sample struct {
	at  time.Time
	lat time.Duration
	err error
}

// load issues from one replica continuously until stop, recording each
// call.
func load(e *keydtest.Env, name string, stop <-chan struct{}, out chan<- sample) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		uid := fmt.Sprintf("%s-%d", name, i)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{
			Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"},
			Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
		cancel()
		out <- sample{at: start, lat: time.Since(start), err: err}
	}
}

func p99(s []sample) time.Duration {
	if len(s) == 0 {
		return 0
	}
	lat := make([]time.Duration, len(s))
	for i := range s {
		lat[i] = s[i].lat
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[(len(lat)-1)*99/100]
}

// One of three replicas cut off its database mid-append under load: the
// server ends its session (idle in transaction) and frees the chain's
// lock, so the other two go on within seconds; the cut replica's own
// calls fail Unavailable in bounded time instead of hanging; when the
// path heals it serves again; the chain stays whole.
func TestSilentPartitionOfOneReplica(t *testing.T) {
	pg := pgtest.StartTLS(t)
	db := pgtest.DatabaseName(pg.NewDatabase(t))
	direct := pg.TLSConnString(db)
	b := keydtest.StartOn(t, direct, nil)
	var cut *proxy
	{
		port := strings.Fields(strings.SplitN(direct, "port=", 2)[1])[0]
		cut = newProxy(t, "127.0.0.1:"+port)
	}
	viaProxy := strings.Replace(direct, "port=", fmt.Sprintf("port=%d dummy=", cut.port()), 1)
	viaProxy = strings.Replace(viaProxy, " dummy="+strings.Fields(strings.SplitN(direct, "port=", 2)[1])[0], "", 1)
	a := b.Replica(viaProxy)
	c := b.Replica(direct)

	stop := make(chan struct{})
	samples := map[string]chan sample{"a": make(chan sample, 1<<16), "b": make(chan sample, 1<<16), "c": make(chan sample, 1<<16)}
	var wg sync.WaitGroup
	for name, e := range map[string]*keydtest.Env{"a": a, "b": b, "c": c} {
		for w := range 4 {
			wg.Add(1)
			go func() { defer wg.Done(); load(e, fmt.Sprintf("%s%d", name, w), stop, samples[name]) }()
		}
	}
	time.Sleep(2 * time.Second)
	// Cut while replica a holds the audit chain's lock (polled from the
	// database's own view: its sessions are those through the proxy).
	watch, err := pgx.Connect(context.Background(), pg.ConnString(db))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	holdsLock := func() bool {
		cut.mu.Lock()
		ports := append([]int(nil), cut.ports...)
		cut.mu.Unlock()
		var n int
		_ = watch.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND a.client_port = ANY($1)`, ports).Scan(&n)
		return n > 0
	}
	var cutAt time.Time
	hunt := time.Now()
	for try := 0; ; try++ {
		if holdsLock() {
			cut.frozen.Store(true)
			if holdsLock() {
				cutAt = time.Now()
				break
			}
			cut.frozen.Store(false) // it committed in between: again
		}
		if try > 20000 {
			t.Fatal("replica a was never seen holding the chain's lock")
		}
	}
	time.Sleep(12 * time.Second)
	cut.frozen.Store(false)
	healedAt := time.Now()
	time.Sleep(6 * time.Second)
	close(stop)
	wg.Wait()

	collect := func(name string) []sample {
		close(samples[name])
		var out []sample
		for s := range samples[name] {
			out = append(out, s)
		}
		return out
	}
	sa, others := collect("a"), append(collect("b"), collect("c")...)
	var before, during []sample
	var lastFailure time.Time
	for _, s := range others {
		switch {
		case s.at.Add(s.lat).Before(hunt):
			before = append(before, s)
		case s.at.Add(s.lat).After(cutAt) && s.at.Before(healedAt):
			during = append(during, s)
		}
		if s.err != nil && s.at.After(lastFailure) {
			lastFailure = s.at.Add(s.lat)
			if status.Code(s.err) != codes.Unavailable {
				t.Errorf("another replica's call failed with %v", s.err)
			}
		}
	}
	recovered := time.Duration(0)
	if lastFailure.After(cutAt) {
		recovered = lastFailure.Sub(cutAt)
	}
	var worst time.Duration
	for _, s := range during {
		worst = max(worst, s.lat)
	}
	t.Logf("other replicas: p99 %s before the cut (%d calls), %s during it (%d calls), slowest %s; their last failure %s after the cut",
		p99(before), len(before), p99(during), len(during), worst.Round(time.Millisecond), recovered.Round(time.Millisecond))
	if worst > 6*time.Second { // the server ends the cut session after 3 s idle in its transaction
		t.Fatalf("another replica's call waited %s for the cut replica's lock", worst)
	}
	if recovered > 8*time.Second {
		t.Fatalf("the other replicas failed calls until %s after the cut", recovered)
	}
	okDuring := 0
	for _, s := range during {
		if s.err == nil && s.at.After(cutAt.Add(8*time.Second)) {
			okDuring++
		}
	}
	if okDuring == 0 {
		t.Fatal("the other replicas served nothing in the cut's last four seconds")
	}
	// The cut replica: bounded failures, then service again.
	var slowest time.Duration
	servedAfter := false
	okCut, failedCut := 0, 0
	for _, s := range sa {
		if s.at.After(cutAt) && s.at.Before(healedAt) {
			slowest = max(slowest, s.lat)
			if s.err == nil {
				okCut++
			} else {
				failedCut++
			}
		}
		if s.at.After(healedAt.Add(3*time.Second)) && s.err == nil {
			servedAfter = true
		}
	}
	t.Logf("the cut replica: %d calls served and %d failed during the cut, the slowest %s; serving again after healing: %v",
		okCut, failedCut, slowest.Round(time.Millisecond), servedAfter)
	if okCut > 0 {
		t.Fatalf("the cut replica served %d calls without its database", okCut)
	}
	if slowest > 15*time.Second {
		t.Fatalf("a call on the cut replica took %s", slowest)
	}
	if !servedAfter {
		t.Fatal("the cut replica did not serve again after the path healed")
	}
	if v, err := b.Admin.VerifyAudit(context.Background(), &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
		t.Fatalf("the shared chain after the cut: %v %v", v, err)
	}
}
