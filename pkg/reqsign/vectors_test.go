package reqsign

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/accesskey"
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
	suite         suite.Name
	method, url   string
	body          string
	extra         map[string]string
	wantSTS       string
	wantSignature string
}

var vectors = []vector{
	{suite: suite.Intl, method: "GET", url: "https://ledger.payments.svc/v1/accounts/a%20b?limit=10&after=x&after=a",
		wantSTS:       "PODKEY1-HMAC-SHA256\n20261128T184500Z\nbm9uY2Utbm9uY2Utbm9uY2U\nGET\n/v1/accounts/a%20b\nafter=a&after=x&limit=10\nhost:ledger.payments.svc\nx-podkey-date:20261128T184500Z\nx-podkey-nonce:bm9uY2Utbm9uY2Utbm9uY2U\nhost;x-podkey-date;x-podkey-nonce\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		wantSignature: "a166396001cf3ac6f59d9ce5c856c1452d68e1f6d2cb1a881f33c74e85b779bd"},
	{suite: suite.GM, method: "POST", url: "https://ledger.payments.svc/v1/transfers", body: `{"amount":100}`,
		extra:         map[string]string{"Content-Type": "application/json"},
		wantSTS:       "PODKEY1-HMAC-SM3\n20261128T184500Z\nbm9uY2Utbm9uY2Utbm9uY2U\nPOST\n/v1/transfers\n\ncontent-type:application/json\nhost:ledger.payments.svc\nx-podkey-date:20261128T184500Z\nx-podkey-nonce:bm9uY2Utbm9uY2Utbm9uY2U\ncontent-type;host;x-podkey-date;x-podkey-nonce\n2367513125e892e0d1402f1109d63c33c091090f87390075abc53f006d0959ea",
		wantSignature: "16ff3825593d37268a102e2791ef1cb99b17797e12865cffb3d756e849cf25bb"},
}

func TestVectors(t *testing.T) {
	for i, v := range vectors {
		r, _ := http.NewRequest(v.method, v.url, strings.NewReader(v.body))
		var extra []string
		for k, val := range v.extra {
			r.Header.Set(k, val)
			extra = append(extra, k)
		}
		if err := signWith(r, v.suite, vectorKeyID(v.suite), vectorSecret, vectorDate, vectorNonce, extra...); err != nil {
			t.Fatal(err)
		}
		a, sts, err := Canonical(r)
		if err != nil {
			t.Fatal(err)
		}
		if v.wantSTS != "" && string(sts) != v.wantSTS {
			t.Fatalf("vector %d string to sign:\n%q\nwant\n%q", i, sts, v.wantSTS)
		}
		if got := strings.TrimPrefix(r.Header.Get("Authorization"), ""); !strings.HasSuffix(got, "Signature="+v.wantSignature) {
			t.Fatalf("vector %d signature: %s", i, got)
		}
		if !accesskey.CheckSignature(v.suite, vectorSecret, sts, a.Signature) {
			t.Fatalf("vector %d does not verify", i)
		}
		t.Logf("vector %d (%s):\nAuthorization: %s\nstring to sign:\n%s", i, v.suite, r.Header.Get("Authorization"), sts)
	}
}
