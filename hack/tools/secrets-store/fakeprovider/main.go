// Command fakeprovider serves the upstream secrets-store driver's own fake
// provider (sigs.k8s.io/secrets-store-csi-driver/provider/fake) on a unix
// socket, returning one fixed file: the baseline podkey's provider is
// measured against (pod start through the driver with no secret service
// behind it). Not podkey code; test tooling only.
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"sigs.k8s.io/secrets-store-csi-driver/provider/fake"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"
)

func main() {
	socket := flag.String("socket", "/var/run/secrets-store-csi-providers/fake.sock", "socket to serve the provider API on")
	flag.Parse()
	_ = os.Remove(*socket)
	s, err := fake.NewMocKCSIProviderServer(*socket)
	if err != nil {
		log.Fatal(err)
	}
	s.SetObjects(map[string]string{"fake-secret": "v1"})
	s.SetFiles([]*v1alpha1.File{{Path: "fake-secret", Mode: 0o440, Contents: []byte("not a secret: the fake provider's fixed file\n")}})
	if err := s.Start(); err != nil {
		log.Fatal(err)
	}
	log.Printf("fake provider serving on %s", *socket)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	s.Stop()
}
