// Command example-backend is a small backend that accepts only requests
// signed with podkey API keys, verifying each through keyd over mTLS with
// its own podkey certificate, and answers with the caller's identity.
//
//	example-backend --listen 127.0.0.1:8080 --volume /var/run/podkey --cert mtls --keyd-addr keyd:7443
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey"
	"github.com/podkey/podkey/pkg/client"
	"github.com/podkey/podkey/pkg/keydclient"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	dir := flag.String("volume", "/var/run/podkey", "the backend's own podkey volume")
	cert := flag.String("cert", "mtls", "its certificate object (suite intl), used as keyd client certificate")
	keydAddr := flag.String("keyd-addr", "", "keyd's TLS address host:port; several, comma-separated, or dns:///name:port for replicas")
	serverName := flag.String("keyd-server-name", "", "name in keyd's serving certificate (default: host of --keyd-addr)")
	flag.Parse()
	if err := run(*listen, *dir, *cert, *keydAddr, *serverName); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(listen, dir, cert, keydAddr, serverName string) error {
	vol, err := client.Open(dir)
	if err != nil {
		return err
	}
	defer vol.Close()
	tlsConf, err := vol.ClientTLS(cert)
	if err != nil {
		return err
	}
	tlsConf.ServerName = serverName
	conn, err := keydclient.NewClient(keydAddr, tlsConf) // one address, several (replicas), or dns:///

	if err != nil {
		return err
	}
	defer conn.Close()
	h := apikey.Middleware(keydv1.NewKeydClient(conn), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := apikey.CallerFrom(r.Context())
		_ = json.NewEncoder(w).Encode(map[string]string{"caller": c.Namespace + "/" + c.ServiceAccount, "pod": c.PodUID})
	}))
	srv := &http.Server{Addr: listen, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	fmt.Println("serving on", listen)
	return srv.ListenAndServe()
}
