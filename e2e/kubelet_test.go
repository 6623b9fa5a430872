package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podkey/podkey/e2e/cluster"
)

// waitPodPhase polls a pod until it reaches phase.
func waitPodPhase(ctx context.Context, c *cluster.Cluster, ns, name string, phase corev1.PodPhase, timeout time.Duration) (*corev1.Pod, error) {
	deadline := time.Now().Add(timeout)
	var last *corev1.Pod
	for time.Now().Before(deadline) {
		p, err := c.Admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = p
			if p.Status.Phase == phase {
				return p, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if last != nil {
		return last, fmt.Errorf("pod %s/%s is %s, not %s, after %s: %+v", ns, name, last.Status.Phase, phase, timeout, last.Status.ContainerStatuses)
	}
	return nil, fmt.Errorf("pod %s/%s not found", ns, name)
}

func TestKubeletRunsAPod(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	c := sharedCluster(t)
	n, err := c.StartNode(ctx, "kube-node-1", 0, "..")
	if err != nil {
		t.Fatal(err)
	}
	_ = n
	if err := c.ServiceAccount(ctx, "smoke", "default"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Admin.CoreV1().Pods("smoke").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hello"},
		Spec: corev1.PodSpec{NodeName: "kube-node-1", RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "c", Image: cluster.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "echo hello"}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waitPodPhase(ctx, c, "smoke", "hello", corev1.PodSucceeded, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}
