// Package kube loads the daemons' Kubernetes client configuration: a
// kubeconfig, or the in-cluster service account. It links only client-go's
// rest and clientcmd packages, never a typed client.
package kube

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config loads the kubeconfig at path, or the in-cluster configuration
// when path is empty.
func Config(path string) (*rest.Config, error) {
	if path != "" {
		return clientcmd.BuildConfigFromFlags("", path)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not in a cluster and no --kubeconfig: %w", err)
	}
	return cfg, nil
}
