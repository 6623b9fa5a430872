package e2e

import (
	"context"
	"fmt"
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
