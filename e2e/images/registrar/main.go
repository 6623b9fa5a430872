// Command registrar registers a CSI driver's socket with the kubelet's
// plugin watcher. It stands in for the node-driver-registrar sidecar,
// whose image the test machines cannot pull, when the upstream
// secrets-store driver is installed on a test node: the same flags, the
// same registration socket, podkey's registration code behind it.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/podkey/podkey/internal/node/registration"
)

func main() {
	driver := flag.String("driver-name", "secrets-store.csi.k8s.io", "CSI driver name")
	endpoint := flag.String("kubelet-registration-path", "", "the driver's CSI socket as the kubelet sees it")
	dir := flag.String("registration-dir", "/registration", "the kubelet's plugin registration directory")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := registration.New(*driver, *endpoint, log).Serve(ctx, *dir); err != nil && ctx.Err() == nil {
		log.Error("registration failed", "error", err)
		os.Exit(1)
	}
}
