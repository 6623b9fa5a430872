package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// apiRequests reads the API server's own request counters
// (apiserver_request_total) for the resources keyd's identity checks use:
// TokenReviews created, and pod and service account lists and watches.
func apiRequests(b *testing.B) map[string]float64 {
	c := sharedCluster(b)
	body, err := c.Admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, _ := strconv.ParseFloat(line[i+1:], 64)
		// TokenReviews keyd creates; pod and service account reads (lists,
		// watches), not the pods and tokens the bench itself creates.
		post := strings.Contains(line, `verb="POST"`)
		for _, res := range []string{"tokenreviews", "pods", "serviceaccounts"} {
			if strings.Contains(line, `resource="`+res+`"`) && post == (res == "tokenreviews") {
				out[res] += v
			}
		}
	}
	return out
}

// restartShape is PODKEY_RESTART_PODS pods (default 2000) on node-1, as
// the pods of a cluster restarting all come back at once.
func restartPods() int {
	if n, err := strconv.Atoi(os.Getenv("PODKEY_RESTART_PODS")); err == nil && n > 0 {
		return n
	}
	return 2000
}

// BenchmarkClusterRestart simulates a cluster-wide restart, scaled to
// this machine: every pod of the cluster comes back at once and asks keyd
// for its credentials with a token keyd has never seen (64 at a time, as
// many nodes' plugins do), against three real keyd processes on one
// durable PostgreSQL, with tokens checked by TokenReview or locally. It
// reports issuances per second, p50 and p99 latency, the API server's
// identity requests per issuance (its own counters), keyd's resident
// memory and audit records per second:
//
//	PODKEY_RESTART_PODS=2000 go test -run '^$' -bench ClusterRestart -benchtime 1x ./e2e
func BenchmarkClusterRestart(b *testing.B) {
	pods := benchPods(b, restartPods())
	for _, mode := range []string{"tokenreview", "local-with-fallback"} {
		rs := startReplicas(b, 3, onDurablePostgres)
		for i := range rs.procs {
			rs.kill(i)
		}
		rs.args = append(rs.args, "--pod-identity", mode)
		for i := range rs.procs {
			rs.start(i)
		}
		kc := keydv1.NewKeydClient(rs.nodeConn(b))
		time.Sleep(2 * time.Second) // the caches list
		before := apiRequests(b)
		_, admin := rs.local(b, 0)
		st0, err := admin.Status(context.Background(), &keydv1.StatusRequest{})
		if err != nil {
			b.Fatal(err)
		}
		s := restart(kc, pods, 64)
		after := apiRequests(b)
		st1, err := admin.Status(context.Background(), &keydv1.StatusRequest{})
		if err != nil {
			b.Fatal(err)
		}
		rss := 0
		for _, p := range rs.procs {
			rss = max(rss, rssKiB(p.Process.Pid))
		}
		b.Run(mode, func(b *testing.B) {
			b.ReportMetric(s.rate, "issues/s")
			b.ReportMetric(float64(s.p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(s.p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric((after["tokenreviews"]-before["tokenreviews"])/float64(len(pods)), "tokenreviews/issue")
			b.ReportMetric((after["pods"]+after["serviceaccounts"]-before["pods"]-before["serviceaccounts"])/float64(len(pods)), "pod-reads/issue")
			b.ReportMetric(float64(rss)/1024, "keyd-max-rss-MiB")
			b.ReportMetric(float64(st1.AuditRecords-st0.AuditRecords)/s.elapsed.Seconds(), "audit-records/s")
			b.ReportMetric(float64(s.errors), "errors")
		})
		for i := range rs.procs {
			rs.kill(i)
		}
	}
}

type restartStats struct {
	rateStats
	elapsed time.Duration
}

// restart issues one API key for every pod, callers at a time, each pod
// once, and times each from its first try (retried on ResourceExhausted as
// podkey-csi does).
func restart(kc keydv1.KeydClient, pods []benchPod, callers int) restartStats {
	work := make(chan benchPod)
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				req := &keydv1.IssueRequest{Pod: p.id, PodToken: p.token, Objects: []*keydv1.ObjectRequest{{Name: "ledger", Kind: "apiKey"}}}
				t0 := time.Now()
				err, _ := kubeletRetry(func() error { _, err := kc.Issue(context.Background(), req); return err })
				mu.Lock()
				if err != nil {
					if errs == 0 {
						fmt.Fprintln(os.Stderr, "first failure:", err)
					}
					errs++
				} else {
					lat = append(lat, time.Since(t0))
				}
				mu.Unlock()
			}
		}()
	}
	for _, p := range pods {
		work <- p
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	s := restartStats{elapsed: elapsed}
	s.errors = errs
	if len(lat) > 0 {
		s.p50, s.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	s.rate = float64(len(lat)) / elapsed.Seconds()
	return s
}
