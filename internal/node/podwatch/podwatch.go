// Package podwatch follows the pods of one node by their metadata only (a
// field-selected metadata informer: no spec, no status, nothing a pod
// carries), reporting deletions and the full set of live pods, for a node
// agent that must act when a pod goes away but is not told so.
package podwatch

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

var pods = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// Handlers receive the watch's events.
type Handlers struct {
	// Synced gets the UIDs of every pod on the node once the watch has
	// listed them: pods not among them were deleted while nobody watched.
	Synced func(live map[string]bool)
	// Deleted gets the UID of each pod deleted from the node.
	Deleted func(uid string)
}

// Run watches node's pods until ctx ends. It returns an error when the
// first list does not complete within syncTimeout.
func Run(ctx context.Context, cfg *rest.Config, node string, resync, syncTimeout time.Duration, h Handlers) error {
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("podwatch: %w", err)
	}
	f := metadatainformer.NewFilteredSharedInformerFactory(client, resync, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	})
	inf := f.ForResource(pods).Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if m, ok := obj.(metav1.Object); ok {
				h.Deleted(string(m.GetUID()))
			}
		},
	}); err != nil {
		return fmt.Errorf("podwatch: %w", err)
	}
	f.Start(ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), inf.HasSynced) {
		return fmt.Errorf("podwatch: the pods of node %s were not listed within %v", node, syncTimeout)
	}
	live := map[string]bool{}
	for _, obj := range inf.GetStore().List() {
		if m, ok := obj.(metav1.Object); ok {
			live[string(m.GetUID())] = true
		}
	}
	h.Synced(live)
	<-ctx.Done()
	f.Shutdown()
	return nil
}
