// Package runas reads what a pod's security context lets its processes
// run as, so the owners a SecretProviderClass names for its files
// (object.Owner) stay within what the pod itself declares.
package runas

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podkey/podkey/pkg/object"
)

// Pod is what a pod runs as: the users its security contexts name
// (runAsUser of the pod and of every container) and its groups (runAsGroup,
// fsGroup, supplementalGroups). An empty list means the pod does not say.
type Pod struct {
	UID    string
	Users  []int64
	Groups []int64
}

// ErrNotFound is a pod the API server does not have.
var ErrNotFound = errors.New("pod not found")

// Of reads p's security contexts.
func Of(p *corev1.Pod) Pod {
	out := Pod{UID: string(p.UID)}
	addUser := func(id *int64) {
		if id != nil && !slices.Contains(out.Users, *id) {
			out.Users = append(out.Users, *id)
		}
	}
	addGroup := func(ids ...int64) {
		for _, id := range ids {
			if !slices.Contains(out.Groups, id) {
				out.Groups = append(out.Groups, id)
			}
		}
	}
	if sc := p.Spec.SecurityContext; sc != nil {
		addUser(sc.RunAsUser)
		if sc.RunAsGroup != nil {
			addGroup(*sc.RunAsGroup)
		}
		if sc.FSGroup != nil {
			addGroup(*sc.FSGroup)
		}
		addGroup(sc.SupplementalGroups...)
	}
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range cs {
			if sc := c.SecurityContext; sc != nil {
				addUser(sc.RunAsUser)
				if sc.RunAsGroup != nil {
					addGroup(*sc.RunAsGroup)
				}
			}
		}
	}
	return out
}

// Allows refuses an owner outside what the pod declares: a uid none of
// its containers runs as when any runAsUser is set, a gid none of its
// groups when any group is set (object.OwnerRule).
func (p Pod) Allows(o *object.Owner) error {
	if o == nil {
		return nil
	}
	if o.UID != nil && len(p.Users) > 0 && !slices.Contains(p.Users, *o.UID) {
		return fmt.Errorf("owner uid %d is not among the pod's runAsUser values %v", *o.UID, p.Users)
	}
	if o.GID != nil && len(p.Groups) > 0 && !slices.Contains(p.Groups, *o.GID) {
		return fmt.Errorf("owner gid %d is not among the pod's groups %v", *o.GID, p.Groups)
	}
	return nil
}

// API reads pods from the Kubernetes API, each call within a deadline.
type API struct {
	c       kubernetes.Interface
	timeout time.Duration
}

// NewAPI is an API on cfg.
func NewAPI(cfg *rest.Config) (*API, error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("runas: %w", err)
	}
	return &API{c: c, timeout: 5 * time.Second}, nil
}

// Pod reads the pod ns/name.
func (a *API) Pod(ctx context.Context, ns, name string) (Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	p, err := a.c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Pod{}, ErrNotFound
	}
	if err != nil {
		return Pod{}, fmt.Errorf("reading pod %s/%s: %w", ns, name, err)
	}
	return Of(p), nil
}

// Static is a fixed set of pods by namespace/name, for tests.
type Static map[string]Pod

// Pod implements the source.
func (s Static) Pod(_ context.Context, ns, name string) (Pod, error) {
	p, ok := s[ns+"/"+name]
	if !ok {
		return Pod{}, ErrNotFound
	}
	return p, nil
}
