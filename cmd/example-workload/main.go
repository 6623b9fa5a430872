// Command example-workload is a small podkey workload: it calls a backend
// every interval with requests signed by its pod's API key (following
// rotation through pkg/client) and prints one line per call.
//
//	example-workload --volume /var/run/podkey --key ledger-api --url http://127.0.0.1:8080/v1/ping
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podkey/podkey/pkg/client"
)

func main() {
	dir := flag.String("volume", "/var/run/podkey", "the podkey volume")
	key := flag.String("key", "ledger-api", "the apiKey object to sign with")
	url := flag.String("url", "", "the backend URL to call")
	every := flag.Duration("interval", 200*time.Millisecond, "time between calls")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	vol, err := client.Open(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	defer vol.Close()
	hc := &http.Client{Transport: vol.Transport(*key, nil), Timeout: 5 * time.Second}
	lastKey := ""
	for n := 1; ; n++ {
		if k, err := vol.APIKey(*key); err == nil {
			id := k.ID[len(k.ID)-12:] // a public id's tail, to see rotation
			clear(k.Secret)
			if id != lastKey {
				fmt.Printf("KEY %s\n", id)
				lastKey = id
			}
		}
		resp, err := hc.Get(*url)
		switch {
		case err != nil:
			fmt.Printf("FAIL %d error %v\n", n, err)
		case resp.StatusCode != http.StatusOK:
			b, _ := io.ReadAll(resp.Body)
			fmt.Printf("FAIL %d %d %s\n", n, resp.StatusCode, strings.TrimSpace(string(b)))
		default:
			b, _ := io.ReadAll(resp.Body)
			fmt.Printf("OK %d %s\n", n, strings.TrimSpace(string(b)))
		}
		if resp != nil {
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(*every):
		}
	}
}
