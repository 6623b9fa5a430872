package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// benchPod is a pod on node-1 with its podkey token.
type benchPod struct {
	id    *keydv1.PodIdentity
	token string
}

func benchPods(b *testing.B, n int) []benchPod {
	ctx := context.Background()
	c := sharedCluster(b)
	if err := c.Node(ctx, "node-1"); err != nil {
		b.Fatal(err)
	}
	pods := make([]benchPod, n)
	for i := range pods {
		p, err := c.Pod(ctx, "payments", fmt.Sprintf("bench-%d-%d", podSeq.Add(1), i), "payments", "node-1")
		if err != nil {
			b.Fatal(err)
		}
		tok, err := c.Token(ctx, "payments", "payments", "podkey", p)
		if err != nil {
			b.Fatal(err)
		}
		pods[i] = benchPod{id: &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: p.Name, PodUid: string(p.UID), NodeName: "node-1"}, token: tok}
	}
	return pods
}

// call is one timed call.
type call struct {
	start, end time.Time
	err        error
}

// drive issues an API key per call from callers goroutines, each for its
// own pod, until stop closes, and returns every call.
func drive(kc keydv1.KeydClient, pods []benchPod, callers int, stop <-chan struct{}) []call {
	var mu sync.Mutex
	var calls []call
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(p benchPod) {
			defer wg.Done()
			var mine []call
			req := &keydv1.IssueRequest{Pod: p.id, PodToken: p.token, Objects: []*keydv1.ObjectRequest{{Name: "ledger", Kind: "apiKey"}}}
			for {
				select {
				case <-stop:
					mu.Lock()
					calls = append(calls, mine...)
					mu.Unlock()
					return
				default:
				}
				c := call{start: time.Now()}
				_, c.err = kc.Issue(context.Background(), req)
				c.end = time.Now()
				mine = append(mine, c)
			}
		}(pods[i%len(pods)])
	}
	wg.Wait()
	return calls
}

type rateStats struct {
	rate     float64
	p50, p99 time.Duration
	errors   int
}

func measureIssue(kc keydv1.KeydClient, pods []benchPod, callers int, d time.Duration) rateStats {
	stop := make(chan struct{})
	time.AfterFunc(d, func() { close(stop) })
	start := time.Now()
	calls := drive(kc, pods, callers, stop)
	elapsed := time.Since(start)
	var lat []time.Duration
	s := rateStats{}
	for _, c := range calls {
		if c.err != nil {
			s.errors++
			continue
		}
		lat = append(lat, c.end.Sub(c.start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		s.p50, s.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	s.rate = float64(len(lat)) / elapsed.Seconds()
	return s
}

// BenchmarkReplicas measures keyd's store and replicas in one run, on
// one machine (every replica shares its two cores), all over TLS with a
// node certificate and pod tokens reviewed by a real kube-apiserver (the
// review cached, as in steady state), every store syncing each commit:
//   - issue: API keys per second at 1, 8 and 64 callers on bbolt, on
//     PostgreSQL with one replica and with three, each as a ratio to bbolt;
//   - failover: SIGKILL of one of three replicas under 8 callers, repeated;
//     per kill, the time from the kill to the success of the slowest call
//     it cut (retried on another replica by the client), p50 and p99;
//   - audit: records appended per second by the audit log's group commit,
//     PostgreSQL beside bbolt, with a software MAC (the store's cost only).
func BenchmarkReplicas(b *testing.B) {
	pods := benchPods(b, 64)
	const cell = 3 * time.Second
	configs := []struct {
		name  string
		n     int
		where replicaStore
	}{{"bbolt-1", 1, onBolt}, {"postgres-1", 1, onDurablePostgres}, {"postgres-3", 3, onDurablePostgres}}
	base := map[int]float64{}
	var failoverSet *replicaSet
	for _, cfg := range configs {
		rs := startReplicas(b, cfg.n, cfg.where)
		kc := keydv1.NewKeydClient(rs.nodeConn(b))
		measureIssue(kc, pods, 64, time.Second) // every replica reviews every pod's token once
		for _, callers := range []int{1, 8, 64} {
			s := measureIssue(kc, pods, callers, cell)
			if cfg.name == "bbolt-1" {
				base[callers] = s.rate
			}
			b.Run(fmt.Sprintf("issue/%s/callers-%d", cfg.name, callers), func(b *testing.B) {
				b.ReportMetric(s.rate, "issues/s")
				b.ReportMetric(float64(s.p50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(s.p99.Microseconds())/1000, "p99-ms")
				b.ReportMetric(s.rate/base[callers], "x-bbolt")
				b.ReportMetric(float64(s.errors), "errors")
			})
		}
		if cfg.n == 3 {
			failoverSet = rs
		} else {
			for i := range rs.procs {
				rs.kill(i)
			}
		}
	}
	b.Run("failover/postgres-3/callers-8", func(b *testing.B) { benchFailover(b, failoverSet, pods) })
	benchAuditAppend(b)
}

func benchFailover(b *testing.B, rs *replicaSet, pods []benchPod) {
	kc := keydv1.NewKeydClient(rs.nodeConn(b))
	stop := make(chan struct{})
	done := make(chan []call)
	go func() { done <- drive(kc, pods, 8, stop) }()
	const kills = 10
	var killedAt []time.Time
	for k := 0; k < kills; k++ {
		time.Sleep(700 * time.Millisecond)
		i := k % len(rs.procs)
		killedAt = append(killedAt, time.Now())
		rs.kill(i)
		time.Sleep(300 * time.Millisecond)
		rs.start(i)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	calls := <-done
	var worst []time.Duration
	failed := 0
	for _, c := range calls {
		if c.err != nil {
			failed++
		}
	}
	for _, at := range killedAt {
		var w time.Duration
		for _, c := range calls {
			if c.err == nil && c.start.Before(at) && c.end.After(at) {
				w = max(w, c.end.Sub(at))
			}
		}
		worst = append(worst, w)
	}
	sort.Slice(worst, func(i, j int) bool { return worst[i] < worst[j] })
	b.ReportMetric(float64(worst[len(worst)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(worst[len(worst)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(worst[len(worst)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(kills, "kills")
	b.ReportMetric(float64(failed), "failed-calls")
	b.ReportMetric(float64(len(calls)), "calls")
}

// benchAuditAppend appends audit records from 1 and 64 goroutines for
// two seconds each to a bbolt file and to a PostgreSQL database.
func benchAuditAppend(b *testing.B) {
	ctx := context.Background()
	key := []byte("benchmark audit key, software")
	mac := func(_ context.Context, data []byte) ([]byte, error) {
		m := hmac.New(sha256.New, key)
		m.Write(data)
		return m.Sum(nil), nil
	}
	bolt, err := store.OpenBolt(filepath.Join(b.TempDir(), "audit.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer bolt.Close()
	pg, err := store.OpenPostgres(ctx, pgtest.StartDurable(b).NewDatabase(b), store.PostgresOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Close()
	base := map[int]float64{}
	for _, st := range []struct {
		name string
		s    store.Store
	}{{"bbolt", bolt}, {"postgres", pg}} {
		log := audit.Open(st.s, audit.MACFunc(mac))
		for _, writers := range []int{1, 64} {
			var n atomic.Int64
			stop := time.Now().Add(2 * time.Second)
			start := time.Now()
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(stop) {
						if err := log.Append(ctx, audit.Record{Action: audit.ActionIssue, Result: audit.ResultOK, Namespace: "payments", Pod: "p"}); err != nil {
							b.Error(err)
							return
						}
						n.Add(1)
					}
				}()
			}
			wg.Wait()
			rate := float64(n.Load()) / time.Since(start).Seconds()
			if st.name == "bbolt" {
				base[writers] = rate
			}
			b.Run(fmt.Sprintf("audit/%s/writers-%d", st.name, writers), func(b *testing.B) {
				b.ReportMetric(rate, "records/s")
				b.ReportMetric(rate/base[writers], "x-bbolt")
			})
		}
	}
}
