package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podkey/podkey/internal/node/spc"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
)

// Namespace creates a namespace if it does not exist, with the
// kube-root-ca.crt ConfigMap that the controller manager (absent here)
// would publish and that service-account token volumes need.
func (c *Cluster) Namespace(ctx context.Context, name string) error {
	_, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	ca, err := os.ReadFile(filepath.Join(c.Dir, "certs", "apiserver.crt"))
	if err != nil {
		return err
	}
	_, err = c.Admin.CoreV1().ConfigMaps(name).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
		Data: map[string]string{"ca.crt": string(ca)}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// ServiceAccount creates a service account (and its namespace).
func (c *Cluster) ServiceAccount(ctx context.Context, ns, name string) error {
	if err := c.Namespace(ctx, ns); err != nil {
		return err
	}
	_, err := c.Admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// Node registers a Node object (no kubelet behind it).
func (c *Cluster) Node(ctx context.Context, name string) error {
	_, err := c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// Pod creates a pod already bound to node (it never runs without a
// kubelet; it exists for tokens to be bound to).
func (c *Cluster) Pod(ctx context.Context, ns, name, serviceAccount, node string) (*corev1.Pod, error) {
	if err := c.ServiceAccount(ctx, ns, serviceAccount); err != nil {
		return nil, err
	}
	return c.Admin.CoreV1().Pods(ns).Create(ctx, PodObject(name, serviceAccount, node), metav1.CreateOptions{})
}

// PodObject is the pod Pod creates, for callers that create many in a
// namespace whose service account exists.
func PodObject(name, serviceAccount, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName:           serviceAccount,
			NodeName:                     node,
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "pause", ImagePullPolicy: corev1.PullNever}},
		},
	}
}

// DeletePod deletes a pod at once (grace period 0).
func (c *Cluster) DeletePod(ctx context.Context, ns, name string) error {
	return c.Admin.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
}

// Token requests a service-account token for audience, bound to pod when
// pod is not nil, as the kubelet does for CSI tokenRequests.
func (c *Cluster) Token(ctx context.Context, ns, serviceAccount, audience string, pod *corev1.Pod) (string, error) {
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](3600)}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := c.Admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token request for %s/%s: %w", ns, serviceAccount, err)
	}
	return tr.Status.Token, nil
}

// KeydIdentity creates the service account keyd runs as, with exactly the
// rights it needs (create tokenreviews), and returns a token for it.
func (c *Cluster) KeydIdentity(ctx context.Context, ns, name string) (string, error) {
	if err := c.ServiceAccount(ctx, ns, name); err != nil {
		return "", err
	}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "podkey-e2e-keyd"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"pods", "serviceaccounts"}, Verbs: []string{"list", "watch"}}}}
	if _, err := c.Admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "podkey-e2e-keyd"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "podkey-e2e-keyd"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: name}}}
	if _, err := c.Admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", err
	}
	return c.Token(ctx, ns, name, "https://kubernetes.default.svc.cluster.local", nil)
}

// SecretProviderClass creates a SecretProviderClass with spec.
func (c *Cluster) SecretProviderClass(ctx context.Context, ns, name string, spec map[string]any) error {
	dyn, err := c.Dynamic()
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
		"metadata": map[string]any{"name": name, "namespace": ns}, "spec": spec,
	}}
	_, err = dyn.Resource(spc.GVR).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{})
	return err
}
