package localtoken

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// watch keeps what the checks need of every pod (uid, node, service
// account, deletion) and every service account (uid), from informers that
// drop the rest of each object as it arrives.
type watch struct {
	pods, accounts cache.SharedIndexInformer
	staleAfter     time.Duration
	now            func() time.Time

	mu     sync.Mutex
	broken map[string]brokenSince // by informer, while its watch fails
}

type brokenSince struct {
	at time.Time
	rv string // the informer's resource version then; a new one means it recovered
}

// podFact is all the cache keeps of a pod: what the checks compare, with
// the names many pods share (namespace, node, service account) interned.
// At a million pods it is what keyd's memory for local verification
// grows with: BenchmarkPodCacheMemory measures 354 bytes a pod, against
// 1,599 for a corev1.Pod trimmed in place (the whole struct stays).
type podFact struct {
	name, uid, rv            string
	namespace, node, account unique.Handle[string]
	deleting                 bool
}

// GetObjectMeta keys a fact as the informer keys its pod (meta.Accessor),
// for the events that add, replace or remove it; lookups use the key.
func (p *podFact) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: p.name, Namespace: p.namespace.Value(), UID: types.UID(p.uid), ResourceVersion: p.rv}
}

// GetObjectKind and DeepCopyObject make a fact a runtime.Object.
func (p *podFact) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }
func (p *podFact) DeepCopyObject() runtime.Object   { c := *p; return &c }

// podFacts is the informer's transform: a pod in, its fact out.
func podFacts(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &podFact{name: p.Name, uid: string(p.UID), rv: p.ResourceVersion, namespace: unique.Make(p.Namespace),
		node: unique.Make(p.Spec.NodeName), account: unique.Make(p.Spec.ServiceAccountName), deleting: p.DeletionTimestamp != nil}, nil
}

var serviceAccounts = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}

func startWatch(ctx context.Context, cs kubernetes.Interface, cfg *rest.Config, staleAfter time.Duration, now func() time.Time) (*watch, error) {
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	pf := informers.NewSharedInformerFactory(cs, 0)
	af := metadatainformer.NewSharedInformerFactory(md, 0)
	w := &watch{pods: pf.Core().V1().Pods().Informer(), accounts: af.ForResource(serviceAccounts).Informer(),
		staleAfter: staleAfter, now: now, broken: map[string]brokenSince{}}
	if err := w.pods.SetTransform(podFacts); err != nil {
		return nil, err
	}
	for name, inf := range map[string]cache.SharedIndexInformer{"pods": w.pods, "serviceaccounts": w.accounts} {
		if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, r *cache.Reflector, err error) {
			w.mu.Lock()
			if _, ok := w.broken[name]; !ok {
				w.broken[name] = brokenSince{at: w.now(), rv: inf.LastSyncResourceVersion()}
			}
			w.mu.Unlock()
			cache.DefaultWatchErrorHandler(ctx, r, err)
		}); err != nil {
			return nil, err
		}
	}
	pf.Start(ctx.Done())
	af.Start(ctx.Done())
	return w, nil
}

// fresh says whether the caches can be trusted now: listed once, and no
// watch failing for longer than staleAfter without having recovered.
func (w *watch) fresh() error {
	if !w.pods.HasSynced() || !w.accounts.HasSynced() {
		return fmt.Errorf("the pod and service account caches are not listed yet")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for name, b := range w.broken {
		inf := w.pods
		if name == "serviceaccounts" {
			inf = w.accounts
		}
		if inf.LastSyncResourceVersion() != b.rv {
			delete(w.broken, name) // listed or watched again since
			continue
		}
		if w.now().Sub(b.at) > w.staleAfter {
			return fmt.Errorf("the %s watch has failed for %s", name, w.now().Sub(b.at).Round(time.Second))
		}
	}
	return nil
}

// pod is the cached pod ns/name, or nil.
func (w *watch) pod(ns, name string) *podFact {
	obj, ok, _ := w.pods.GetStore().GetByKey(ns + "/" + name)
	if !ok {
		return nil
	}
	p, _ := obj.(*podFact)
	return p
}

// accountUID is the cached service account's UID, or "".
func (w *watch) accountUID(ns, name string) string {
	obj, ok, _ := w.accounts.GetStore().GetByKey(ns + "/" + name)
	if !ok {
		return ""
	}
	if m, ok := obj.(metav1.Object); ok {
		return string(m.GetUID())
	}
	return ""
}
