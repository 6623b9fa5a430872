package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/podkey/podkey/internal/node/spc"
)

// TestSecretProviderClassInformer reads classes from the real API server,
// with the CRD from manifests/crds, and follows an update.
func TestSecretProviderClassInformer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := sharedCluster(t)
	if err := c.InstallCRD(ctx, "../manifests/crds/secretproviderclasses.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := c.Namespace(ctx, "informer"); err != nil {
		t.Fatal(err)
	}
	dyn, err := c.Dynamic()
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
		"metadata": map[string]any{"name": "payments", "namespace": "informer"},
		"spec": map[string]any{"provider": "podkey", "parameters": map[string]any{
			"objects": "- {name: ledger-api, kind: apiKey}\n"}},
	}}
	if _, err := dyn.Resource(spc.GVR).Namespace("informer").Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	inf, err := spc.NewInformer(ctx, c.Config(""), time.Minute, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got, err := inf.Get(ctx, "informer", "payments")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := spc.Objects(got)
	if err != nil || len(specs) != 1 || specs[0].Name != "ledger-api" {
		t.Fatalf("%+v %v", specs, err)
	}
	if _, err := inf.Get(ctx, "informer", "absent"); !errors.Is(err, spc.ErrNotFound) {
		t.Fatalf("absent class: %v", err)
	}
	_ = unstructured.SetNestedField(obj.Object, "- {name: ledger-api, kind: apiKey}\n- {name: t, kind: token}\n", "spec", "parameters", "objects")
	cur, _ := dyn.Resource(spc.GVR).Namespace("informer").Get(ctx, "payments", metav1.GetOptions{})
	obj.SetResourceVersion(cur.GetResourceVersion())
	if _, err := dyn.Resource(spc.GVR).Namespace("informer").Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		got, _ := inf.Get(ctx, "informer", "payments")
		if specs, _ := spc.Objects(got); len(specs) == 2 {
			break
		}
		if i > 200 {
			t.Fatal("informer did not follow the update")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
