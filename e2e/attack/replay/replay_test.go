// Package replay attacks signed requests: a captured request sent again,
// under another spelling of its access key id, or to several keyd
// replicas at once, must be accepted once.
package replay

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/suite"
)

// apiKey issues an API key of suite s for a pod through keyd's Issue.
func apiKey(t *testing.T, k keydv1.KeydClient, s suite.Name, uid string) (string, []byte) {
	t.Helper()
	resp, err := k.Issue(context.Background(), &keydv1.IssueRequest{
		Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"},
		Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey", Suite: string(s), Ttl: "1h"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ak := resp.Credentials[0].GetApiKey()
	return ak.AccessKeyId, ak.SecretKey
}

// backend is the real middleware in front of keyd, counting what it serves.
func backend(t *testing.T, k keydv1.KeydClient, served *atomic.Int64) *httptest.Server {
	srv := httptest.NewServer(apikey.Middleware(k, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served.Add(1)
	})))
	t.Cleanup(srv.Close)
	return srv
}

// signed is a request to url signed with the key, and its Authorization
// header.
func signed(t *testing.T, url string, s suite.Name, id string, secret []byte) *http.Request {
	t.Helper()
	r, _ := http.NewRequest(http.MethodPost, url+"/v1/transfers?x=1", strings.NewReader(`{"amount":1}`))
	r.Header.Set("Content-Type", "application/json")
	if err := reqsign.Sign(r, s, id, secret, time.Now()); err != nil {
		t.Fatal(err)
	}
	return r
}

// resend sends a copy of r, its Authorization header's key id replaced.
func resend(t *testing.T, r *http.Request, id, newID string) int {
	t.Helper()
	c := r.Clone(context.Background())
	c.Body = http.NoBody
	if r.GetBody != nil {
		c.Body, _ = r.GetBody()
	}
	c.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), id, newID, 1))
	resp, err := http.DefaultClient.Do(c)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// respellings are the other spellings Go's lenient base64url decoder
// takes for the id: the unused low bits of its last character set.
func respellings(id string) []string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	body := id[len(accesskey.Prefix):]
	last := strings.IndexByte(alphabet, body[len(body)-1])
	unused := map[int]int{2: 4, 3: 2}[len(body)%4]
	var out []string
	for low := 1; low < 1<<unused; low++ {
		out = append(out, id[:len(id)-1]+string(alphabet[last|low]))
	}
	return out
}

// A captured request is served once, whatever spelling of its access key
// id the replay uses: ids decode strictly, and the nonce is keyed on what
// the signature authenticated.
func TestReplayUnderAnotherSpellingIsRefused(t *testing.T) {
	e := keydtest.Start(t, nil)
	for _, s := range suite.All {
		t.Run(string(s), func(t *testing.T) {
			var served atomic.Int64
			srv := backend(t, e.Keyd, &served)
			// Ids whose length leaves unused bits in the last character.
			var id string
			var secret []byte
			for i := 0; ; i++ {
				id, secret = apiKey(t, e.Keyd, s, "uid-"+string(rune('a'+i)))
				if len(id[len(accesskey.Prefix):])%4 >= 2 {
					break
				}
			}
			r := signed(t, srv.URL, s, id, secret)
			if code := resend(t, r, id, id); code != http.StatusOK {
				t.Fatalf("the genuine request: HTTP %d", code)
			}
			variants := respellings(id)
			if len(variants) < 3 {
				t.Fatalf("only %d respellings of %q", len(variants), id)
			}
			for _, v := range variants {
				if _, err := base64.RawURLEncoding.DecodeString(v[len(accesskey.Prefix):]); err != nil {
					t.Fatalf("%q is no spelling the lenient decoder takes: %v", v, err)
				}
				if code := resend(t, r, id, v); code == http.StatusOK {
					t.Errorf("replay under spelling %q was served", v)
				}
			}
			if n := served.Load(); n != 1 {
				t.Fatalf("one captured request served %d times", n)
			}
		})
	}
	// Straight to keyd, line breaks inside the id are not another spelling either.
	id, secret := apiKey(t, e.Keyd, suite.Intl, "uid-lines")
	msg := []byte("GET /ledger")
	for _, v := range []string{id[:10] + "\n" + id[10:], id[:10] + "\r\n" + id[10:], id + "\n"} {
		_, err := e.Keyd.Verify(context.Background(), &keydv1.VerifyRequest{AccessKeyId: v, StringToSign: msg, Signature: accesskey.Sign(suite.Intl, secret, msg)})
		if status.Code(err) == codes.OK {
			t.Errorf("id %q with a line break verified", v)
		}
	}
}

// The same signed request sent to every replica at once is accepted by
// exactly one: the nonce claim is one atomic statement in the shared
// database, and its loser refuses.
func TestParallelReplayAcrossReplicasAcceptsOnce(t *testing.T) {
	pg := pgtest.Start(t)
	conn := pg.NewDatabase(t)
	a := keydtest.StartOn(t, conn, nil)
	replicas := []*keydtest.Env{a, a.Replica(""), a.Replica("")}
	var served atomic.Int64
	var backends []*httptest.Server
	for _, r := range replicas {
		backends = append(backends, backend(t, r.Keyd, &served))
	}
	id, secret := apiKey(t, a.Keyd, suite.Intl, "uid-parallel")
	const rounds, perReplica = 30, 2
	for round := range rounds {
		before := served.Load()
		r := signed(t, backends[0].URL, suite.Intl, id, secret)
		var wg sync.WaitGroup
		for _, b := range backends {
			for range perReplica {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Another replica's backend, the signed Host kept.
					c := r.Clone(context.Background())
					c.Host = r.URL.Host
					c.URL.Host = strings.TrimPrefix(b.URL, "http://")
					c.Body, _ = r.GetBody()
					if resp, err := http.DefaultClient.Do(c); err == nil {
						resp.Body.Close()
					}
				}()
			}
		}
		wg.Wait()
		if n := served.Load() - before; n != 1 {
			t.Fatalf("round %d: one request sent %d times to %d replicas was served %d times", round, perReplica*len(replicas), len(replicas), n)
		}
	}
}
