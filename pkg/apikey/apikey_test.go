package apikey_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mount "k8s.io/mount-utils"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/client"
	"github.com/podkey/podkey/pkg/suite"
)

// world is a real keyd, a node driver that publishes a real (fake-mounted)
// volume for a workload, the workload's client library on it, and a
// backend behind the middleware.
type world struct {
	keyd    *keydtest.Env
	driver  *csidriver.Driver
	target  string
	req     *csi.NodePublishVolumeRequest
	vol     *client.Volume
	backend *httptest.Server
	mu      sync.Mutex
	clock   time.Time
}

func (w *world) now() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.clock
}

func newWorld(t testing.TB, s suite.Name) *world {
	w := &world{clock: time.Now()}
	w.keyd = keydtest.Start(t, func(o *service.Options) { o.Now = w.now })
	c := &sscsi.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "payments"}}
	c.Spec.Provider = "podkey"
	c.Spec.Parameters = map[string]string{"objects": fmt.Sprintf("- {name: ledger-api, kind: apiKey, suite: %s, ttl: 1m}\n", s)}
	var err error
	w.target = filepath.Join(t.TempDir(), "creds")
	w.driver, err = csidriver.New(csidriver.Options{NodeID: "n1", StateDir: t.TempDir(), PodsDir: filepath.Dir(w.target), Issuer: w.keyd.Keyd, Revoker: w.keyd.Keyd,
		Classes: spc.Static{"payments/payments": c}, Volumes: volume.NewMounter(mount.NewFakeMounter(nil)), Now: w.now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w.req = &csi.NodePublishVolumeRequest{VolumeId: "v-a", TargetPath: w.target, Readonly: true,
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}},
		VolumeContext: map[string]string{"secretProviderClass": "payments", "csi.storage.k8s.io/ephemeral": "true",
			"csi.storage.k8s.io/pod.name": "a", "csi.storage.k8s.io/pod.namespace": "payments", "csi.storage.k8s.io/pod.uid": "uid-a",
			"csi.storage.k8s.io/serviceAccount.name": "payments", "csi.storage.k8s.io/serviceAccount.tokens": `{"podkey":{"token":"t"}}`}}
	if _, err := w.driver.NodePublishVolume(context.Background(), w.req); err != nil {
		t.Fatal(err)
	}
	if w.vol, err = client.Open(w.target); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.vol.Close)
	w.backend = httptest.NewServer(apikey.Middleware(w.keyd.Keyd, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		c, _ := apikey.CallerFrom(r.Context())
		_ = json.NewEncoder(rw).Encode(c)
	})))
	t.Cleanup(w.backend.Close)
	return w
}

func decode(t testing.TB, resp *http.Response) (apikey.Caller, apikey.Refusal) {
	defer resp.Body.Close()
	var c apikey.Caller
	var r apikey.Refusal
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		_ = json.Unmarshal(b, &c)
	} else {
		_ = json.Unmarshal(b, &r)
	}
	return c, r
}

func TestSignedRequestsEndToEnd(t *testing.T) {
	for _, s := range suite.All {
		t.Run(string(s), func(t *testing.T) {
			w := newWorld(t, s)
			hc := &http.Client{Transport: w.vol.Transport("ledger-api", nil)}
			resp, err := hc.Post(w.backend.URL+"/v1/transfers?x=1", "application/json", strings.NewReader(`{"amount":1}`))
			if err != nil {
				t.Fatal(err)
			}
			c, ref := decode(t, resp)
			if resp.StatusCode != 200 || c.PodUID != "uid-a" || c.Namespace != "payments" || c.Suite != string(s) {
				t.Fatalf("%d %+v %+v", resp.StatusCode, c, ref)
			}

			// A replayed request, a tampered one and an unsigned one.
			k, _ := w.vol.APIKey("ledger-api")
			r, _ := http.NewRequest("GET", w.backend.URL+"/v1/accounts", nil)
			_ = reqsign.Sign(r, k.Suite, k.ID, k.Secret, time.Now())
			for i, want := range []struct {
				code   int
				reason string
			}{{200, ""}, {401, apikey.ReasonReplayed}} {
				resp, _ := http.DefaultClient.Do(r.Clone(context.Background()))
				if _, ref := decode(t, resp); resp.StatusCode != want.code || ref.Error != want.reason {
					t.Fatalf("send %d: %d %+v", i, resp.StatusCode, ref)
				}
			}
			tampered, _ := http.NewRequest("GET", w.backend.URL+"/v1/accounts?admin=true", nil)
			_ = reqsign.Sign(tampered, k.Suite, k.ID, k.Secret, time.Now())
			tampered.URL.RawQuery = "admin=false"
			resp, _ = http.DefaultClient.Do(tampered)
			if _, ref := decode(t, resp); resp.StatusCode != 401 || ref.Error != apikey.ReasonBad {
				t.Fatalf("tampered: %d %+v", resp.StatusCode, ref)
			}
			resp, _ = http.Get(w.backend.URL + "/")
			if _, ref := decode(t, resp); resp.StatusCode != 401 || ref.Error != apikey.ReasonMissing {
				t.Fatalf("unsigned: %d %+v", resp.StatusCode, ref)
			}

			// Rotation mid-stream: no request fails.
			var fails, oks atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					resp, err := hc.Get(w.backend.URL + "/v1/ping")
					if err != nil || resp.StatusCode != 200 {
						fails.Add(1)
					} else {
						oks.Add(1)
					}
					if resp != nil {
						resp.Body.Close()
					}
				}
			}()
			before := k.ID
			for i := 0; i < 3; i++ {
				w.mu.Lock()
				w.clock = w.clock.Add(41 * time.Second)
				w.mu.Unlock()
				if _, err := w.driver.NodePublishVolume(context.Background(), w.req); err != nil {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			close(stop)
			wg.Wait()
			after, _ := w.vol.APIKey("ledger-api")
			if after.ID == before || fails.Load() != 0 || oks.Load() == 0 {
				t.Fatalf("rotation: renewed=%v, %d failed and %d succeeded", after.ID != before, fails.Load(), oks.Load())
			}

			// The pod goes away: its key is refused as revoked.
			if _, err := w.driver.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "v-a", TargetPath: w.target}); err != nil {
				t.Fatal(err)
			}
			r, _ = http.NewRequest("GET", w.backend.URL+"/v1/accounts", nil)
			_ = reqsign.Sign(r, after.Suite, after.ID, after.Secret, w.now())
			resp, _ = http.DefaultClient.Do(r)
			if _, ref := decode(t, resp); resp.StatusCode != 403 || ref.Error != apikey.ReasonRevoked {
				t.Fatalf("revoked: %d %+v", resp.StatusCode, ref)
			}
		})
	}
}

func TestExpiredKeyCopiedOutIsRefused(t *testing.T) {
	w := newWorld(t, suite.Intl)
	k, _ := w.vol.APIKey("ledger-api")
	w.mu.Lock()
	w.clock = w.clock.Add(2 * time.Minute) // past the 1m key's expiry
	w.mu.Unlock()
	r, _ := http.NewRequest("GET", w.backend.URL+"/v1/accounts", nil)
	_ = reqsign.Sign(r, k.Suite, k.ID, k.Secret, w.now())
	resp, _ := http.DefaultClient.Do(r)
	if _, ref := decode(t, resp); resp.StatusCode != 401 || ref.Error != apikey.ReasonExpired {
		t.Fatalf("expired: %d %+v", resp.StatusCode, ref)
	}
}

// BenchmarkVerify compares signed-request verification through keyd with
// many concurrent backends against a plain HMAC of the same string in this
// process:
//
//	go test -run '^$' -bench Verify ./pkg/apikey
func BenchmarkVerify(b *testing.B) {
	w := newWorld(b, suite.Intl)
	k, _ := w.vol.APIKey("ledger-api")
	b.Run("keyd-verify", func(b *testing.B) {
		var lat []time.Duration
		var mu sync.Mutex
		b.SetParallelism(8)
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			var local []time.Duration
			for pb.Next() {
				r, _ := http.NewRequest("GET", "https://ledger/v1/accounts", nil)
				_ = reqsign.Sign(r, k.Suite, k.ID, k.Secret, w.now())
				a, sts, _ := reqsign.Canonical(r)
				t0 := time.Now()
				if _, err := w.keyd.Keyd.Verify(context.Background(), &keydv1.VerifyRequest{AccessKeyId: a.AccessKeyID, StringToSign: sts, Signature: a.Signature}); err != nil {
					b.Error(err)
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "verifies/s")
		if len(lat) > 0 {
			sortDurations(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		}
	})
	b.Run("plain-hmac", func(b *testing.B) {
		sts := []byte(strings.Repeat("x", 300))
		start := time.Now()
		for i := 0; i < b.N; i++ {
			_ = suite.Intl.MAC(k.Secret, sts)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "hmacs/s")
	})
}

func sortDurations(d []time.Duration) { sort.Slice(d, func(i, j int) bool { return d[i] < d[j] }) }

// sendRaw writes raw to the backend over one connection and returns the
// response's status and refusal reason.
func sendRaw(t *testing.T, backend *httptest.Server, raw string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", backend.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, ref := decode(t, resp)
	return resp.StatusCode, ref.Error
}

// TestCollidingPairsAgainstALiveBackend: for each pair of requests that
// version 1 of the scheme signed alike, A signed with a pod's key is
// served, and B sent with A's signature is refused.
func TestCollidingPairsAgainstALiveBackend(t *testing.T) {
	w := newWorld(t, suite.Intl)
	k, _ := w.vol.APIKey("ledger-api")
	for _, p := range []struct {
		name         string
		method, a, b string
		hdrA, hdrB   string // header lines, as sent
		signed       []string
	}{
		{"an encoded slash", "GET", "/v1/accounts/a%2Fb", "/v1/accounts/a/b", "", "", nil},
		{"encoded dot segments", "GET", "/a/%2e%2e/b", "/a/../b", "", "", nil},
		{"repeated keys reordered", "GET", "/pay?to=alice&to=mallory", "/pay?to=mallory&to=alice", "", "", nil},
		{"a bare key and an empty value", "GET", "/x?c", "/x?c=", "", "", nil},
		{"a plus and an encoded space", "GET", "/x?q=a+b", "/x?q=a%20b", "", "", nil},
		{"a pair after a semicolon", "GET", "/pay?amount=1", "/pay?amount=1&x=1;amount=1000000", "", "", nil},
		{"a pair with a bad escape", "GET", "/x?a=1", "/x?a=1&admin=%zz", "", "", nil},
		{"one header on two lines or one", "GET", "/x", "/x", "X-A: a\r\nX-A: b\r\n", "X-A: a,b\r\n", []string{"X-A"}},
		{"a signed header empty or absent", "GET", "/x", "/x", "X-A: \r\n", "", []string{"X-A"}},
		{"whitespace inside a header value", "GET", "/x", "/x", "X-A: a  b\r\n", "X-A: a b\r\n", []string{"X-A"}},
	} {
		sign := func() *http.Request {
			r, _ := http.NewRequest(p.method, w.backend.URL+p.a, nil)
			for _, line := range strings.Split(strings.TrimSuffix(p.hdrA, "\r\n"), "\r\n") {
				if name, value, ok := strings.Cut(line, ":"); ok {
					r.Header.Add(name, strings.TrimSpace(value))
				}
			}
			if err := reqsign.Sign(r, k.Suite, k.ID, k.Secret, time.Now(), p.signed...); err != nil {
				t.Fatal(err)
			}
			return r
		}
		signing := func(r *http.Request) string {
			return fmt.Sprintf("Host: %s\r\n%s: %s\r\n%s: %s\r\nAuthorization: %s\r\n", r.Host, reqsign.HeaderDate, r.Header.Get(reqsign.HeaderDate),
				reqsign.HeaderNonce, r.Header.Get(reqsign.HeaderNonce), r.Header.Get("Authorization"))
		}
		a := sign()
		if code, reason := sendRaw(t, w.backend, p.method+" "+p.a+" HTTP/1.1\r\n"+p.hdrA+signing(a)+"Connection: close\r\n\r\n"); code != 200 {
			t.Fatalf("%s: A: %d %s", p.name, code, reason)
		}
		a = sign() // a fresh nonce, so a refusal of B is for what differs
		code, reason := sendRaw(t, w.backend, p.method+" "+p.b+" HTTP/1.1\r\n"+p.hdrB+signing(a)+"Connection: close\r\n\r\n")
		if code != 401 || (reason != apikey.ReasonBad && reason != apikey.ReasonMalformed) {
			t.Errorf("%s: B with A's signature: %d %s", p.name, code, reason)
		}
	}
	// The method's case: a signature for GET does not serve get.
	r, _ := http.NewRequest("GET", w.backend.URL+"/x", nil)
	_ = reqsign.Sign(r, k.Suite, k.ID, k.Secret, time.Now())
	r.Method = "get"
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, ref := decode(t, resp); resp.StatusCode != 401 || ref.Error != apikey.ReasonBad {
		t.Fatalf("get with GET's signature: %d %+v", resp.StatusCode, ref)
	}
}

// TestPythonSignerAgainstLiveKeyd: requests signed by the reference
// signer in docs/examples/python, for a key of each suite, are verified
// through keyd and served; a version 1 signature is refused as retired.
func TestPythonSignerAgainstLiveKeyd(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for the reference signer (hack/install-deps.sh installs it)")
	}
	for _, s := range suite.All {
		t.Run(string(s), func(t *testing.T) {
			w := newWorld(t, s)
			out, err := exec.Command(python, "../../docs/examples/python/podkey_sign.py", "--key", filepath.Join(w.target, "ledger-api"),
				"--method", "POST", "--url", w.backend.URL+"/v1/transfers?to=alice&to=bob",
				"--header", "Content-Type: application/json", "--sign-header", "content-type", "--data", `{"amount":1}`).CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), "200 ") || !strings.Contains(string(out), `"PodUID":"uid-a"`) ||
				!strings.Contains(string(out), `"Suite":"`+string(s)+`"`) {
				t.Fatalf("%v\n%s", err, out)
			}
			// Non-ASCII header values, signed as the UTF-8 bytes sent, and a URL
			// with user information, which is no part of Host.
			userURL := strings.Replace(w.backend.URL, "http://", "http://user:pw@", 1)
			out, err = exec.Command(python, "../../docs/examples/python/podkey_sign.py", "--key", filepath.Join(w.target, "ledger-api"),
				"--url", userURL+"/v1/notes", "--header", "X-Note: café €5 中文", "--header", "X-Note: ß", "--sign-header", "x-note").CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), "200 ") {
				t.Fatalf("non-ASCII header values from Python: %v\n%s", err, out)
			}
			k, _ := w.vol.APIKey("ledger-api")
			gr, _ := http.NewRequest("GET", w.backend.URL+"/v1/notes", nil)
			gr.Header.Add("X-Note", "café €5 中文")
			if err := reqsign.Sign(gr, k.Suite, k.ID, k.Secret, time.Now(), "X-Note"); err != nil {
				t.Fatal(err)
			}
			if resp, err := http.DefaultClient.Do(gr); err != nil || resp.StatusCode != 200 {
				t.Fatalf("non-ASCII header values from Go: %v %v", resp, err)
			}
			r, _ := http.NewRequest("GET", w.backend.URL+"/v1/accounts", nil)
			_ = reqsign.Sign(r, k.Suite, k.ID, k.Secret, time.Now())
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), reqsign.Version+"-", reqsign.RetiredVersion+"-", 1))
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			if _, ref := decode(t, resp); resp.StatusCode != 401 || ref.Error != apikey.ReasonRetired {
				t.Fatalf("version 1: %d %+v", resp.StatusCode, ref)
			}
		})
	}
}
