// Command cluster brings a local single-node Kubernetes cluster up for
// people to try podkey on: etcd, kube-apiserver, containerd and a kubelet
// (the harness of podkey's end-to-end tests), plus the SecretProviderClass
// CRD. It writes a kubeconfig and runs until interrupted, then tears
// everything down.
//
//	go run ./hack/cluster            # as root, from the repository root
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/podkey/podkey/e2e/cluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := cluster.Start(".")
	if err != nil {
		return err
	}
	defer c.Stop()
	n, err := c.StartNode(ctx, "podkey-node-1", 0, ".")
	if err != nil {
		return err
	}
	if err := c.InstallCRD(ctx, "manifests/crds/secretproviderclasses.yaml"); err != nil {
		return err
	}
	kc, err := filepath.Abs(filepath.Join(".cache", "cluster", "kubeconfig"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(kc), 0o700); err != nil {
		return err
	}
	if err := c.WriteKubeconfig(kc, ""); err != nil {
		return err
	}
	fmt.Printf(`cluster up: API server %s, node %s (kubelet root %s)
  export KUBECONFIG=%s
  images available on the node: %s, %s (imagePullPolicy: Never)
  podkey-csi for this node: --node-name %s --endpoint %s/plugins/csi.podkey.io/csi.sock --registration-dir %s/plugins_registry
Ctrl-C tears it down.
`, c.URL, n.Name, n.RootDir, kc, cluster.BusyboxImage, cluster.PauseImage, n.Name, n.RootDir, n.RootDir)
	<-ctx.Done()
	fmt.Println("tearing down")
	return nil
}
