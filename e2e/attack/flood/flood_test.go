// Package flood attacks keyd's TLS port with streams that hold capacity:
// from callers without a client certificate, and from one authenticated
// caller that floods, while other callers go on.
package flood

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/suite"
)

// nodeCert is a client certificate podkey's CA issues a node.
func nodeCert(t *testing.T, e *keydtest.Env, node string) tls.Certificate {
	t.Helper()
	kr := e.Opts.Keyring
	authority, err := kr.CA(suite.Intl, kr.Current(keyring.CA, suite.Intl))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u := &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/podkey/node/" + node}
	der, _, err := authority.Issue(&key.PublicKey, ca.Leaf{CommonName: "podkey-node:" + node, URIs: []*url.URL{u}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func roots(e *keydtest.Env) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(e.Opts.Keyring.CABundle(suite.Intl))
	return p
}

// client is a backend's keyd client over TLS with its certificate.
func client(t *testing.T, e *keydtest.Env, cert tls.Certificate) keydv1.KeydClient {
	conn, err := grpc.NewClient(e.Opts.Listen, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: roots(e), ServerName: "localhost", MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return keydv1.NewKeydClient(conn)
}

// idleStreams opens n streams of method on new HTTP/2 connections, as
// many per connection as keyd lets, each a request's headers and never
// its message; they stay open until ctx ends. It returns how many the
// server refused at once (an answer before any message was sent).
func idleStreams(ctx context.Context, t *testing.T, e *keydtest.Env, cert *tls.Certificate, method string, n int) int {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots(e), ServerName: "localhost", NextProtos: []string{"h2"}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	var mu sync.Mutex
	answered := 0
	for opened := 0; opened < n; {
		c, err := tls.Dial("tcp", e.Opts.Listen, cfg)
		if err != nil {
			t.Fatal(err)
		}
		context.AfterFunc(ctx, func() { c.Close() })
		if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
			t.Fatal(err)
		}
		fr := http2.NewFramer(c, c)
		seen := map[uint32]bool{} // streams answered on this connection
		var wmu sync.Mutex
		wmu.Lock()
		_ = fr.WriteSettings()
		wmu.Unlock()
		go func() { // answer settings and pings, count early answers
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						wmu.Lock()
						_ = fr.WriteSettingsAck()
						wmu.Unlock()
					}
				case *http2.PingFrame:
					if !f.IsAck() {
						wmu.Lock()
						_ = fr.WritePing(true, f.Data)
						wmu.Unlock()
					}
				case *http2.HeadersFrame, *http2.RSTStreamFrame:
					if id := f.Header().StreamID; (!isHeaders(f) || f.(*http2.HeadersFrame).StreamEnded()) && !seen[id] {
						mu.Lock()
						seen[id] = true
						answered++
						mu.Unlock()
					}
				}
			}
		}()
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for i := 0; i < 200 && opened < n; i++ {
			hb.Reset()
			for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "localhost"},
				{"content-type", "application/grpc"}, {"te", "trailers"}} {
				_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			wmu.Lock()
			err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true})
			wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			opened++
		}
	}
	time.Sleep(500 * time.Millisecond) // the server's answers
	mu.Lock()
	defer mu.Unlock()
	return answered
}

func isHeaders(f http2.Frame) bool { _, ok := f.(*http2.HeadersFrame); return ok }

// verifyLoad runs Verify from each client in turn for d and returns the
// latencies and the errors.
func verifyLoad(clients []keydv1.KeydClient, id string, secret []byte, d time.Duration) ([]time.Duration, []error) {
	var mu sync.Mutex
	var lat []time.Duration
	var errs []error
	msg := []byte("GET /ledger")
	req := &keydv1.VerifyRequest{AccessKeyId: id, StringToSign: msg, Signature: accesskey.Sign(suite.Intl, secret, msg)}
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.Verify(ctx, req)
				cancel()
				mu.Lock()
				lat = append(lat, time.Since(start))
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, errs
}

func p99(lat []time.Duration) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	return lat[(len(lat)-1)*99/100]
}

// Neither streams from callers without a client certificate nor one
// authenticated caller's flood of idle streams and calls take the
// capacity other callers need: their Verify calls all succeed, with a
// bounded p99, against an unloaded run of the same calls.
func TestFloodsDoNotStarveOtherCallers(t *testing.T) {
	e := keydtest.Start(t, func(o *service.Options) { o.MaxInflight, o.MaxQueued = 8, 56 })
	resp, err := e.Keyd.Issue(context.Background(), &keydv1.IssueRequest{
		Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p", PodUid: "uid-flood", NodeName: "node-1"},
		Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey", Suite: "intl", Ttl: "1h"}}})
	if err != nil {
		t.Fatal(err)
	}
	ak := resp.Credentials[0].GetApiKey()
	var backends []keydv1.KeydClient
	for i := range 3 {
		backends = append(backends, client(t, e, nodeCert(t, e, fmt.Sprintf("backend-%d", i))))
	}
	base, errs := verifyLoad(backends, ak.AccessKeyId, ak.SecretKey, time.Second)
	if len(errs) > 0 {
		t.Fatalf("unloaded: %v", errs[0])
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	// 600 streams without a client certificate: each refused at once.
	if refused := idleStreams(ctx, t, e, nil, keydv1.Keyd_Verify_FullMethodName, 600); refused < 600 {
		t.Fatalf("of 600 unauthenticated streams %d were refused at once", refused)
	}
	// One authenticated caller: idle streams up to its share, and busy calls.
	flooder := nodeCert(t, e, "flooder")
	idleStreams(ctx, t, e, &flooder, keydv1.Keyd_Verify_FullMethodName, 400)
	fc := client(t, e, flooder)
	go func() {
		for ctx.Err() == nil {
			var wg sync.WaitGroup
			for range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = fc.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyId, StringToSign: []byte("x"), Signature: []byte("y")})
				}()
			}
			wg.Wait()
		}
	}()
	loaded, errs := verifyLoad(backends, ak.AccessKeyId, ak.SecretKey, 3*time.Second)
	if len(errs) > 0 {
		t.Fatalf("%d of %d calls of other callers failed under the floods, first: %v", len(errs), len(loaded), errs[0])
	}
	t.Logf("other callers' Verify p99: %s unloaded, %s under both floods (%.1fx); %d and %d calls",
		p99(base), p99(loaded), float64(p99(loaded))/float64(max(p99(base), time.Microsecond)), len(base), len(loaded))
	if p99(loaded) > 3*time.Second {
		t.Fatalf("p99 under the floods %s", p99(loaded))
	}
}

// What callers without a client certificate can make durable is bounded:
// a burst of refused calls they may make (a pod's Revoke with a bad token)
// adds a record or two to the audit log, not one each; calls they may not
// make add none.
func TestUnauthenticatedRefusalsAreNotEachAudited(t *testing.T) {
	e := keydtest.Start(t, nil)
	ctx := context.Background()
	records := func() uint64 {
		r, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
		if err != nil || !r.Intact {
			t.Fatalf("audit: %v %v", r, err)
		}
		return r.Records
	}
	before := records()
	conn, err := grpc.NewClient(e.Opts.Listen, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots(e), ServerName: "localhost", MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := keydv1.NewKeydClient(conn)
	for i := range 300 {
		pod := &keydv1.PodIdentity{Namespace: strings.Repeat("n", 60), ServiceAccount: "sa", PodName: fmt.Sprint("p", i), PodUid: fmt.Sprint("u", i), NodeName: "node-1"}
		if _, err := k.Revoke(ctx, &keydv1.RevokeRequest{Pod: pod, PodToken: strings.Repeat("x", 4000)}); err == nil {
			t.Fatal("a revocation with a bad token was taken")
		}
		if _, err := k.Issue(ctx, &keydv1.IssueRequest{Pod: pod}); err == nil {
			t.Fatal("an issue without a certificate was taken")
		}
	}
	if grew := records() - before; grew > 2 {
		t.Fatalf("600 refused calls without a certificate added %d audit records", grew)
	}
}
