package localtoken

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// BenchmarkPodCacheMemory fills the store keyd's pod informer keeps (what
// podFacts leaves of each pod, keyed and indexed by namespace as the
// informer does) with PODKEY_CACHE_PODS pods shaped like a real
// cluster's (10,000 nodes, 100 pods each by default), and reports the
// heap it holds per pod and in all: keyd's memory for local verification
// at that scale, measured rather than estimated.
//
//	go test -run '^$' -bench PodCacheMemory -benchtime 1x ./internal/keyd/identity/localtoken
func BenchmarkPodCacheMemory(b *testing.B) {
	const nodes, perNode = 10_000, 100
	for range b.N {
		before := heap()
		store := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		now := metav1.NewTime(time.Now())
		for n := range nodes {
			for i := range perNode {
				p := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("payments-api-7d9f8c6b5-%05d%02d", n, i), Namespace: fmt.Sprintf("team-%03d", (n*perNode+i)%400),
						UID: types.UID(fmt.Sprintf("%08x-1111-4222-8333-%012x", n, i)), ResourceVersion: fmt.Sprint(1_000_000 + n*perNode + i),
						Labels: map[string]string{"app": "payments-api", "pod-template-hash": "7d9f8c6b5"}, CreationTimestamp: now},
					Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%05d.prod.bank.internal", n), ServiceAccountName: "payments-api",
						Containers: []corev1.Container{{Name: "app", Image: "registry.bank.internal/payments/api:1.42.0"}}},
					Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"},
				}
				obj, err := podFacts(p)
				if err != nil {
					b.Fatal(err)
				}
				if err := store.Add(obj); err != nil {
					b.Fatal(err)
				}
			}
		}
		held := heap() - before
		pods := nodes * perNode
		b.ReportMetric(float64(held)/float64(pods), "bytes/pod")
		b.ReportMetric(float64(held)/(1<<20), "MiB-for-1M-pods")
		runtime.KeepAlive(store)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
