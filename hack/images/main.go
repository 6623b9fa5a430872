// Command images builds podkey's container images without a container
// engine (these machines have none), with the same content as the
// Dockerfile's keyd and csi targets, as docker archives that
// `ctr images import` or `docker load` read.
//
//	go run ./hack/images -o bin/images -tag 0.1.0
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/podkey/podkey/e2e/cluster"
)

func main() {
	out := flag.String("o", "bin/images", "output directory")
	repo := flag.String("repository", "ghcr.io/podkey", "image repository prefix")
	tag := flag.String("tag", "dev", "image tag, also the version the binaries report")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	keyd, csi, err := cluster.PodkeyImages(*out, ".", *repo+"/podkey-keyd:"+*tag, *repo+"/podkey-csi:"+*tag, *tag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	fmt.Println(keyd)
	fmt.Println(csi)
}
