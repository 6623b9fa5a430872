package reqsign

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/suite"
)

// The vectors of docs/request-signing.md.
var (
	vectorSecret = []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}
	vectorDate   = time.Date(2026, 11, 28, 18, 45, 0, 0, time.UTC)
	vectorNonce  = "bm9uY2Utbm9uY2Utbm9uY2U"
)

func vectorKeyID(s suite.Name) string {
	id := accesskey.ID{Suite: s, Generation: 1, Expiry: time.Date(2026, 11, 28, 19, 0, 0, 0, time.UTC),
		Namespace: "payments", ServiceAccount: "payments", PodUID: "7d3c1a52-0000-4c1e-9b1e-5f0c2a7d9e11", Object: "ledger-api"}
	p, _ := id.Payload()
	return accesskey.Encode(s, p, vectorSecret)
}

type vector struct {
	name          string
	suite         suite.Name
	method, url   string
	body          string
	headers       [][2]string // field lines, in order
	signed        []string    // extra signed headers
	wantSTS       string
	wantSignature string
}

var vectors = []vector{
	{name: "intl, GET with a query", suite: suite.Intl, method: "GET", url: "https://ledger.payments.svc/v1/accounts/a%20b?limit=10&after=x&after=a",
		wantSTS:       "PODKEY2-HMAC-SHA256\n20261128T184500Z\nbm9uY2Utbm9uY2Utbm9uY2U\nGET\n/v1/accounts/a%20b?limit=10&after=x&after=a\nhost:ledger.payments.svc\nx-podkey-date:20261128T184500Z\nx-podkey-nonce:bm9uY2Utbm9uY2Utbm9uY2U\nhost;x-podkey-date;x-podkey-nonce\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		wantSignature: "966cd48277853b5b1eb9ae64090b35c811dbf9f9ae3df6803d7bac86acd2c610"},
	{name: "gm, POST with a JSON body and a signed Content-Type", suite: suite.GM, method: "POST", url: "https://ledger.payments.svc/v1/transfers",
		body: `{"amount":100}`, headers: [][2]string{{"Content-Type", "application/json"}}, signed: []string{"content-type"},
		wantSTS:       "PODKEY2-HMAC-SM3\n20261128T184500Z\nbm9uY2Utbm9uY2Utbm9uY2U\nPOST\n/v1/transfers\ncontent-type:application/json\nhost:ledger.payments.svc\nx-podkey-date:20261128T184500Z\nx-podkey-nonce:bm9uY2Utbm9uY2Utbm9uY2U\ncontent-type;host;x-podkey-date;x-podkey-nonce\n2367513125e892e0d1402f1109d63c33c091090f87390075abc53f006d0959ea",
		wantSignature: "f6cb93cdfa83f321ba737709632d9caa00615328dc2ece11ce2ea1d5bde835de"},
	{name: "intl, the request-target as sent: an encoded slash, repeated and bare keys, a plus", suite: suite.Intl, method: "GET",
		url:           "https://ledger.payments.svc/v1/accounts/a%2Fb?to=alice&to=mallory&c&q=a+b",
		wantSTS:       "PODKEY2-HMAC-SHA256\n20261128T184500Z\nbm9uY2Utbm9uY2Utbm9uY2U\nGET\n/v1/accounts/a%2Fb?to=alice&to=mallory&c&q=a+b\nhost:ledger.payments.svc\nx-podkey-date:20261128T184500Z\nx-podkey-nonce:bm9uY2Utbm9uY2Utbm9uY2U\nhost;x-podkey-date;x-podkey-nonce\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		wantSignature: "789ebb7215424ab4c677cc6918bae66cea63f6e97f98b63de979d2efa93b94c3"},
	{name: "intl, a header sent on two lines, and inner whitespace kept", suite: suite.Intl, method: "PUT", url: "https://ledger.payments.svc/v1/x",
		headers: [][2]string{{"X-A", "a"}, {"X-A", "b"}, {"X-Ws", "a  b"}}, signed: []string{"x-a", "x-ws"},
		wantSTS:       "PODKEY2-HMAC-SHA256\n20261128T184500Z\nbm9uY2Utbm9uY2Utbm9uY2U\nPUT\n/v1/x\nhost:ledger.payments.svc\nx-a:a\nx-a:b\nx-podkey-date:20261128T184500Z\nx-podkey-nonce:bm9uY2Utbm9uY2Utbm9uY2U\nx-ws:a  b\nhost;x-a;x-podkey-date;x-podkey-nonce;x-ws\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		wantSignature: "46aa271930cea0035089b711074eabbf6611b25f83fdfdb02bf47d45536d5302"},
}

// vectorRequest is the vector's request, signed.
func vectorRequest(t *testing.T, v vector) *http.Request {
	r, _ := http.NewRequest(v.method, v.url, strings.NewReader(v.body))
	for _, h := range v.headers {
		r.Header.Add(h[0], h[1])
	}
	if err := signWith(r, v.suite, vectorKeyID(v.suite), vectorSecret, vectorDate, vectorNonce, v.signed...); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestVectors(t *testing.T) {
	for i, v := range vectors {
		r := vectorRequest(t, v)
		a, sts, err := Canonical(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(sts) != v.wantSTS {
			t.Errorf("vector %d string to sign:\n%q\nwant\n%q", i, sts, v.wantSTS)
		}
		if got := r.Header.Get("Authorization"); !strings.HasSuffix(got, "Signature="+v.wantSignature) {
			t.Errorf("vector %d signature: %s", i, got)
		}
		if !accesskey.CheckSignature(v.suite, vectorSecret, sts, a.Signature) {
			t.Fatalf("vector %d does not verify", i)
		}
		t.Logf("vector %d (%s):\nAuthorization: %s\nstring to sign:\n%s", i, v.name, r.Header.Get("Authorization"), sts)
	}
}

// TestPythonSignerAgrees: the reference signer in docs/examples/python, an
// independent implementation, produces every vector's string to sign and
// signature.
func TestPythonSignerAgrees(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for the reference signer's check (hack/install-deps.sh installs it)")
	}
	dir := t.TempDir()
	for i, v := range vectors {
		key := filepath.Join(dir, fmt.Sprintf("key-%d.json", i))
		data, _ := json.Marshal(map[string]string{"accessKeyId": vectorKeyID(v.suite),
			"secretKey": base64.RawURLEncoding.EncodeToString(vectorSecret), "suite": string(v.suite)})
		if err := os.WriteFile(key, data, 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"../../../docs/examples/python/podkey_sign.py", "--print", "--key", key, "--method", v.method, "--url", v.url,
			"--data", v.body, "--date", vectorDate.Format(DateFormat), "--nonce", vectorNonce}
		for _, h := range v.headers {
			args = append(args, "--header", h[0]+": "+h[1])
		}
		for _, h := range v.signed {
			args = append(args, "--sign-header", h)
		}
		out, err := exec.Command(python, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("vector %d: %v\n%s", i, err, out)
		}
		if want := v.wantSTS + "\n" + vectorRequest(t, v).Header.Get("Authorization") + "\n"; string(out) != want {
			t.Fatalf("vector %d (%s): the Python signer printed\n%s\nwant\n%s", i, v.name, out, want)
		}
	}
}

// TestDocHoldsTheVectors: docs/request-signing.md shows every vector as
// this package computes it.
func TestDocHoldsTheVectors(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/request-signing.md")
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vectors {
		if !strings.Contains(string(doc), "```\n"+v.wantSTS+"\n```") || !strings.Contains(string(doc), "Signature="+v.wantSignature) {
			t.Errorf("the doc lacks vector %d (%s)", i, v.name)
		}
	}
}
