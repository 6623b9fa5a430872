package spc

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
)

// GVR is the SecretProviderClass resource. podkey reads it and never
// installs or changes its CRD, so it works beside the upstream driver's
// chart, which owns the CRD there.
var GVR = sscsi.SchemeGroupVersion.WithResource("secretproviderclasses")

// Informer serves classes from a shared informer's cache.
type Informer struct {
	inf cache.SharedIndexInformer
}

// NewInformer starts watching every namespace's classes and waits (up to
// syncTimeout) for the first list.
func NewInformer(ctx context.Context, cfg *rest.Config, resync, syncTimeout time.Duration) (*Informer, error) {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	// A plain shared informer over the dynamic client: the dynamic informer
	// factory links every typed client and informer of client-go, which
	// cost podkey-csi several MiB of resident memory for nothing it uses.
	res := client.Resource(GVR)
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, o)
		},
	}, &unstructured.Unstructured{}, resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	go inf.Run(ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("spc: SecretProviderClass informer did not sync within %s (is the CRD installed and list/watch allowed?)", syncTimeout)
	}
	return &Informer{inf: inf}, nil
}

// Get implements Source.
func (i *Informer) Get(_ context.Context, namespace, name string) (*sscsi.SecretProviderClass, error) {
	obj, exists, err := i.inf.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("spc: unexpected cache object %T", obj)
	}
	var c sscsi.SecretProviderClass
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &c); err != nil {
		return nil, fmt.Errorf("%w: %s/%s: %v", ErrInvalid, namespace, name, err)
	}
	return &c, nil
}
