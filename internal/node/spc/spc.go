// Package spc finds the SecretProviderClass a podkey volume names and turns
// it into object specs. Classes come from the Kubernetes API through a
// shared informer, or from a directory of YAML files on nodes that run
// podkey-csi without Kubernetes (for example under another CSI host).
package spc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/podkey/podkey/pkg/object"
)

// Provider is the spec.provider value of classes podkey serves.
const Provider = "podkey"

// ObjectsParameter is the spec.parameters key holding the object list.
const ObjectsParameter = "objects"

// ErrNotFound is returned when the named class does not exist.
var ErrNotFound = errors.New("SecretProviderClass not found")

// ErrInvalid marks a class podkey cannot serve.
var ErrInvalid = errors.New("invalid SecretProviderClass")

// Source looks classes up by namespace and name.
type Source interface {
	Get(ctx context.Context, namespace, name string) (*sscsi.SecretProviderClass, error)
}

// Objects checks that a class is podkey's and parses its objects.
func Objects(c *sscsi.SecretProviderClass) ([]object.Spec, error) {
	ref := c.Namespace + "/" + c.Name
	if c.Spec.Provider != Provider {
		return nil, fmt.Errorf("%w: %s has provider %q, not %q", ErrInvalid, ref, c.Spec.Provider, Provider)
	}
	raw, ok := c.Spec.Parameters[ObjectsParameter]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no spec.parameters.objects", ErrInvalid, ref)
	}
	specs, err := object.ParseList([]byte(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, ref, err)
	}
	return specs, nil
}

// Dir reads classes from <root>/<namespace>/<name>.yaml on every lookup.
type Dir struct{ Root string }

// Get implements Source.
func (d Dir) Get(_ context.Context, namespace, name string) (*sscsi.SecretProviderClass, error) {
	if !object.ValidName(namespace) || !object.ValidName(name) {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	data, err := os.ReadFile(filepath.Join(d.Root, namespace, name+".yaml"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	if err != nil {
		return nil, err
	}
	var c sscsi.SecretProviderClass
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%w: %s/%s: %v", ErrInvalid, namespace, name, err)
	}
	if c.Namespace == "" {
		c.Namespace = namespace
	}
	if c.Namespace != namespace || c.Name != name {
		return nil, fmt.Errorf("%w: %s/%s.yaml describes %s/%s", ErrInvalid, namespace, name, c.Namespace, c.Name)
	}
	return &c, nil
}

// Static serves fixed classes, keyed "namespace/name".
type Static map[string]*sscsi.SecretProviderClass

// Get implements Source.
func (s Static) Get(_ context.Context, namespace, name string) (*sscsi.SecretProviderClass, error) {
	c, ok := s[namespace+"/"+name]
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	return c, nil
}
