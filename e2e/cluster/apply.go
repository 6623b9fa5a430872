package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Dynamic is a dynamic client with admin rights.
func (c *Cluster) Dynamic() (dynamic.Interface, error) { return dynamic.NewForConfig(c.config) }

// InstallCRD creates the CustomResourceDefinition in file and waits until
// it is established.
func (c *Cluster) InstallCRD(ctx context.Context, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	// The first object of the file (rendered manifests start with "---").
	var obj map[string]any
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for obj == nil {
		if err := dec.Decode(&obj); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	u := &unstructured.Unstructured{Object: obj}
	dyn, err := c.Dynamic()
	if err != nil {
		return err
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got, err := dyn.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("CRD %s not established", u.GetName())
}

// Apply creates every object of a multi-document YAML file (or replaces
// it when it exists), each passed through edit first when edit is set.
func (c *Cluster) Apply(ctx context.Context, file string, edit func(*unstructured.Unstructured)) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	dyn, err := c.Dynamic()
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.config)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if edit != nil {
			edit(u)
		}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", file, gvk, err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if err := c.Namespace(ctx, u.GetNamespace()); err != nil {
				return err
			}
			r = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if _, err := r.Create(ctx, u, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
			cur, gerr := r.Get(ctx, u.GetName(), metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			u.SetResourceVersion(cur.GetResourceVersion())
			_, err = r.Update(ctx, u, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("%s: %s %s: %w", file, gvk.Kind, u.GetName(), err)
			}
		} else if err != nil {
			return fmt.Errorf("%s: %s %s: %w", file, gvk.Kind, u.GetName(), err)
		}
	}
}
