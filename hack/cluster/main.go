// Command cluster brings a local single-node Kubernetes cluster up for
// people to try podkey on: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd and a kubelet (the harness of podkey's
// end-to-end tests), with podkey's images imported into the node. It
// writes a kubeconfig and the chart values for this cluster, prints the
// helm command, and runs until interrupted (SIGINT or SIGTERM, also when
// its parent process dies), then tears everything down.
//
//	go build -o .cache/bin/cluster ./hack/cluster && .cache/bin/cluster   # as root, from the repository root
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/e2e/cluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("out", filepath.Join(".cache", "cluster"), "directory for the kubeconfig and the chart values")
	index := flag.Int("node-index", 0, "the node's index: its bridge pkbr<index> and pod subnet 10.88.<index>.0/24 (differ from any other local cluster's)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// When whatever started this process goes (make, a shell, go run),
	// tear down as on SIGTERM.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0); err != nil {
		return err
	}
	c, err := cluster.Start(".")
	if err != nil {
		return err
	}
	defer c.Stop()
	n, err := c.StartNode(ctx, "podkey-node-1", *index, ".")
	if err != nil {
		return err
	}
	if err := c.StartControllers("."); err != nil {
		return err
	}
	if err := n.ImportPodkey(ctx, "."); err != nil {
		return err
	}
	kc, err := filepath.Abs(filepath.Join(*out, "kubeconfig"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(kc), 0o700); err != nil {
		return err
	}
	if err := c.WriteKubeconfig(kc, ""); err != nil {
		return err
	}
	keydPort, err := cluster.FreePort()
	if err != nil {
		return err
	}
	metricsPort, err := cluster.FreePort()
	if err != nil {
		return err
	}
	keydAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(keydPort))
	values, err := yaml.Marshal(c.PodkeyValues(n, keydAddr, metricsPort))
	if err != nil {
		return err
	}
	vf := filepath.Join(filepath.Dir(kc), "values.yaml")
	if err := os.WriteFile(vf, values, 0o600); err != nil {
		return err
	}
	bin, err := cluster.KubeBinDir(".")
	if err != nil {
		return err
	}
	fmt.Printf(`cluster up: API server %s, node %s (kubelet root %s)
  export KUBECONFIG=%s PATH=%s:$PATH   # kubectl exec, logs and port-forward reach the node
  install podkey:  go tool helm install podkey charts/podkey -n podkey-system --create-namespace -f %s --wait
  images on the node: %s, %s, %s:%s, %s:%s (imagePullPolicy: Never)
Ctrl-C (or SIGTERM) tears it down.
`, c.URL, n.Name, n.RootDir, kc, bin, vf, cluster.BusyboxImage, cluster.PauseImage, cluster.KeydImage, cluster.ImageTag, cluster.CSIImage, cluster.ImageTag)
	<-ctx.Done()
	fmt.Println("tearing down")
	return nil
}
