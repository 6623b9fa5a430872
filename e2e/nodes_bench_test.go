package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podkey/podkey/e2e/cluster"
	"github.com/podkey/podkey/internal/node/csidriver"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

// simNode is one simulated node: its podkey-csi pod's token (the node's
// identity) and the pods bound to it.
type simNode struct {
	name     string
	tokFile  string
	pods     []benchPod
	conn     *keydclient.NodeConn
	kc       keydv1.KeydClient
	replica  int
	certTime time.Duration
}

// BenchmarkTenThousandNodes simulates a bank cluster of PODKEY_SIM_NODES
// nodes (10,000) restarting after maintenance, against three real keyd
// processes on one durable PostgreSQL, with identities from a real
// kube-apiserver verified locally (keyd's default). Every node is a light
// in-process client with its own podkey-csi pod, token and node
// certificate, connected to one replica as a Service spreads them. First
// every node comes back and gets its node certificate; then pods arrive,
// open loop, at the rate of 100 pods a node restarting within 10 minutes
// (1,667 a second at 10,000 nodes), each publishing once with a token
// keyd has never seen. PODKEY_SIM_PODS_PER_NODE pods a node (2) exist in
// the API server: this machine's etcd and cores hold tens of thousands of
// pods, not a million, so the arrival rate is the full cluster's and its
// duration is scaled. Reported: node certificates and publishes per
// second against the offered rate, p50 and p99 from a pod's arrival,
// API-server identity requests per publish, keyd's memory with every node
// connected, audit records per second; with PODKEY_SIM_PROFILE set, the
// top of replica 1's CPU profile of the run is written there.
//
//	go test -run '^$' -bench TenThousandNodes -benchtime 1x -timeout 60m ./e2e
func BenchmarkTenThousandNodes(b *testing.B) {
	ctx := context.Background()
	nodes, perNode := envInt("PODKEY_SIM_NODES", 10_000), envInt("PODKEY_SIM_PODS_PER_NODE", 2)
	rate := float64(nodes) * 100 / 600 // arrivals a second: 100 pods a node within 10 minutes
	c := sharedCluster(b)
	rs := startReplicas(b, 3, onDurablePostgres)
	profile := filepath.Join(rs.w.dir, "keyd-1.pprof")
	rs.kill(0)
	rs.procs[0] = rs.w.startKeydAt(ctx, rs.socks[0], append([]string{"--listen", rs.addrs[0], "--cpuprofile", profile}, rs.args...)...)

	// The cluster as it stands before the restart: nodes, their
	// podkey-csi pods and the workload pods, with tokens (not timed).
	setup := time.Now()
	for _, sa := range [][2]string{{"podkey", "podkey-csi"}, {"payments", "payments"}} {
		if err := c.ServiceAccount(ctx, sa[0], sa[1]); err != nil {
			b.Fatal(err)
		}
	}
	sim := make([]*simNode, nodes)
	parallel(b, 32, nodes, func(i int) error {
		n := &simNode{name: fmt.Sprintf("sim-node-%05d", i), replica: i % 3}
		csi, err := createPod(ctx, c, "podkey", "csi-"+n.name, "podkey-csi", n.name)
		if err != nil {
			return err
		}
		tok, err := c.Token(ctx, "podkey", "podkey-csi", "podkey-node", csi)
		if err != nil {
			return err
		}
		n.tokFile = filepath.Join(rs.w.dir, n.name+"-token")
		if err := os.WriteFile(n.tokFile, []byte(tok), 0o600); err != nil {
			return err
		}
		for j := range perNode {
			p, err := createPod(ctx, c, "payments", fmt.Sprintf("app-%s-%d", n.name, j), "payments", n.name)
			if err != nil {
				return err
			}
			tok, err := c.Token(ctx, "payments", "payments", "podkey", p)
			if err != nil {
				return err
			}
			n.pods = append(n.pods, benchPod{id: &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: p.Name,
				PodUid: string(p.UID), NodeName: n.name}, token: tok})
		}
		sim[i] = n
		return nil
	})
	b.Logf("%d nodes and %d pods created in %s", nodes, nodes*(1+perNode), time.Since(setup).Round(time.Second))
	time.Sleep(3 * time.Second) // keyd's caches list the pods
	_, admin := rs.local(b, 0)
	st0, err := admin.Status(ctx, &keydv1.StatusRequest{})
	if err != nil {
		b.Fatal(err)
	}
	before := apiRequests(b)

	// The nodes come back: each asks for its node certificate (64 at once).
	start := time.Now()
	parallel(b, 64, nodes, func(i int) error {
		n := sim[i]
		t0 := time.Now()
		nc, err := keydclient.DialNode(ctx, keydclient.NodeOptions{Address: rs.addrs[n.replica], CAFile: rs.caFile,
			ServerName: "localhost", TokenFile: n.tokFile})
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		n.conn, n.kc, n.certTime = nc, keydv1.NewKeydClient(nc), time.Since(t0)
		return nil
	})
	certElapsed := time.Since(start)
	b.Cleanup(func() {
		for _, n := range sim {
			if n != nil && n.conn != nil {
				n.conn.Close()
			}
		}
	})
	certLat := make([]time.Duration, nodes)
	for i, n := range sim {
		certLat[i] = n.certTime
	}
	afterCerts := apiRequests(b)

	// The pods come back, open loop at the cluster's rate: pod k arrives at
	// k/rate whatever keyd's pace, and is timed from its arrival.
	var all []struct {
		n *simNode
		p benchPod
	}
	for j := range perNode {
		for _, n := range sim {
			all = append(all, struct {
				n *simNode
				p benchPod
			}{n, n.pods[j]})
		}
	}
	lat := make([]time.Duration, len(all))
	var errs, retries, kubeletRetries atomic.Int64
	failed := &failures{}
	var wg sync.WaitGroup
	var peakRSS atomic.Int64
	sampling := make(chan struct{})
	go func() {
		for {
			select {
			case <-sampling:
				return
			case <-time.After(500 * time.Millisecond):
			}
			sum := 0
			for _, p := range rs.procs {
				sum += rssKiB(p.Process.Pid)
			}
			if int64(sum) > peakRSS.Load() {
				peakRSS.Store(int64(sum))
			}
		}
	}()
	cpu0 := cpuByCommand()
	start = time.Now()
	for k, a := range all {
		arrive := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
		time.Sleep(time.Until(arrive))
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &keydv1.IssueRequest{Pod: a.p.id, PodToken: a.p.token, Objects: []*keydv1.ObjectRequest{{Name: "ledger", Kind: "apiKey"}}}
			// As podkey-csi publishes: keyd's overload refusals waited out
			// as it hints, then the kubelet's retries.
			err, tries := kubeletRetry(func() error {
				_, err := csidriver.WaitOutOverload(ctx, a.n.kc, req, csidriver.DefaultKeydTimeout, csidriver.DefaultOverloadWait,
					func() { retries.Add(1) })
				if err != nil {
					failed.note(err)
				}
				return err
			})
			kubeletRetries.Add(int64(tries))
			if err != nil {
				if errs.Add(1) == 1 {
					fmt.Fprintln(os.Stderr, "first failure:", err)
				}
				return
			}
			lat[k] = time.Since(arrive)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuByCommand()
	close(sampling)
	after := apiRequests(b)
	st1, err := admin.Status(ctx, &keydv1.StatusRequest{})
	if err != nil {
		b.Fatal(err)
	}
	rssNow := 0
	for _, p := range rs.procs {
		rssNow += rssKiB(p.Process.Pid)
	}

	if out := os.Getenv("PODKEY_SIM_PROFILE"); out != "" {
		_ = rs.procs[0].Process.Signal(syscall.SIGTERM)
		_ = rs.procs[0].Wait()
		top, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=30", filepath.Join(rs.w.bin, "podkey-keyd"), profile).Output()
		if err != nil {
			b.Fatalf("pprof: %v", err)
		}
		if err := os.WriteFile(out, top, 0o644); err != nil {
			b.Fatal(err)
		}
	}

	// Percentiles of the calls that succeeded (a failed pod's slot is 0).
	pct := func(d []time.Duration, p float64) float64 {
		var s []time.Duration
		for _, v := range d {
			if v > 0 {
				s = append(s, v)
			}
		}
		if len(s) == 0 {
			return 0
		}
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[int(float64(len(s)-1)*p)].Microseconds()) / 1000
	}
	published := float64(len(all)) - float64(errs.Load())
	identity := func(a, z map[string]float64) float64 {
		return z["tokenreviews"] + z["pods"] + z["serviceaccounts"] - a["tokenreviews"] - a["pods"] - a["serviceaccounts"]
	}
	failed.print()
	b.Run(fmt.Sprintf("nodes-%d", nodes), func(b *testing.B) {
		b.ReportMetric(float64(nodes)/certElapsed.Seconds(), "node-certs/s")
		b.ReportMetric(pct(certLat, 0.99), "node-cert-p99-ms")
		b.ReportMetric(rate, "offered-publishes/s")
		b.ReportMetric(published/elapsed.Seconds(), "publishes/s")
		b.ReportMetric(pct(lat, 0.50), "publish-p50-ms")
		b.ReportMetric(pct(lat, 0.99), "publish-p99-ms")
		b.ReportMetric(float64(errs.Load()), "errors")
		b.ReportMetric(float64(retries.Load()), "overload-retries")
		b.ReportMetric(float64(kubeletRetries.Load()), "kubelet-retries")
		for code, n := range failed.count {
			b.ReportMetric(float64(n), "failed-tries:"+code)
		}
		// Where the machine's CPU went while pods published: seconds of
		// CPU per second of the phase, by process (2 = both cores).
		for name, d := range cpu {
			if used := (d - cpu0[name]).Seconds() / elapsed.Seconds(); used >= 0.01 {
				b.ReportMetric(used, "cores:"+name)
			}
		}
		b.ReportMetric(identity(before, afterCerts)/float64(nodes), "api-calls/node-cert")
		b.ReportMetric(identity(afterCerts, after)/float64(len(all)), "api-calls/publish")
		b.ReportMetric(float64(peakRSS.Load())/1024, "keyd-3-replicas-peak-MiB")
		b.ReportMetric(float64(rssNow)/1024/3, "keyd-rss-per-replica-MiB")
		b.ReportMetric(float64(st1.AuditRecords-st0.AuditRecords)/(elapsed+certElapsed).Seconds(), "audit-records/s")
		b.ReportMetric(float64(1_000_000)/(published/elapsed.Seconds())/60, "min-for-1M-pods-here")
	})
}

// failures counts failed tries by gRPC code, keeping each code's first
// message.
type failures struct {
	mu    sync.Mutex
	count map[string]int
	first map[string]string
}

func (f *failures) note(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.count == nil {
		f.count, f.first = map[string]int{}, map[string]string{}
	}
	code := status.Code(err).String()
	if f.count[code]++; f.count[code] == 1 {
		f.first[code] = err.Error()
	}
}

func (f *failures) print() {
	for code, msg := range f.first {
		fmt.Fprintf(os.Stderr, "%d tries failed with %s, the first: %s\n", f.count[code], code, msg)
	}
}

// cpuByCommand is the CPU time (user and system) of every process on the
// machine, summed by command name (the load generator is e2e.test).
func cpuByCommand() map[string]time.Duration {
	out := map[string]time.Duration{}
	files, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range files {
		name, cpu := statCPU(f)
		if strings.HasPrefix(name, "kworker/") || strings.HasPrefix(name, "ksoftirqd/") {
			name = "kernel-threads"
		}
		if name != "" {
			out[name] += cpu
		}
	}
	return out
}

// createPod creates a pod bound to node in ns, whose service account
// exists.
func createPod(ctx context.Context, c *cluster.Cluster, ns, name, sa, node string) (*corev1.Pod, error) {
	return c.Admin.CoreV1().Pods(ns).Create(ctx, cluster.PodObject(name, sa, node), metav1.CreateOptions{})
}

// parallel runs fn for 0..n-1 from workers goroutines; the first error
// fails the benchmark.
func parallel(b *testing.B, workers, n int, fn func(i int) error) {
	work := make(chan int)
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}
