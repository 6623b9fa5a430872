package reqsign

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/suite"
)

func signed(t *testing.T) *http.Request {
	r, _ := http.NewRequest("PUT", "https://svc/x?b=2&a=1", strings.NewReader("payload"))
	if err := Sign(r, suite.Intl, vectorKeyID(suite.Intl), vectorSecret, time.Now()); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTamperingChangesTheStringToSign(t *testing.T) {
	for name, mutate := range map[string]func(r *http.Request){
		"method": func(r *http.Request) { r.Method = "POST" },
		"path":   func(r *http.Request) { r.URL.Path = "/y" },
		"query":  func(r *http.Request) { r.URL.RawQuery = "a=1&b=3" },
		"host":   func(r *http.Request) { r.Host = "other" },
		"date":   func(r *http.Request) { r.Header.Set(HeaderDate, "20300101T000000Z") },
		"body":   func(r *http.Request) { r.Body = http.NoBody; r.Body = nopBody("payloaD") },
	} {
		r := signed(t)
		a, sts, err := Canonical(r)
		if err != nil {
			t.Fatal(err)
		}
		if !accesskey.CheckSignature(a.Suite, vectorSecret, sts, a.Signature) {
			t.Fatal("untampered request does not verify")
		}
		r = signed(t)
		mutate(r)
		a, sts, err = Canonical(r)
		if err == nil && accesskey.CheckSignature(a.Suite, vectorSecret, sts, a.Signature) {
			t.Fatalf("tampered %s still verifies", name)
		}
	}
}

func TestParseAuthorizationRejects(t *testing.T) {
	id := vectorKeyID(suite.Intl)
	sig := strings.Repeat("ab", 32)
	for _, h := range []string{
		"", "Bearer x", "PODKEY2-HMAC-MD5 Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + sig,
		"PODKEY2-HMAC-SHA256 Credential=AKIA, SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + sig,
		"PODKEY2-HMAC-SHA256 Credential=" + id + ", SignedHeaders=host, Signature=" + sig,
		"PODKEY2-HMAC-SHA256 Credential=" + id + ", SignedHeaders=x-podkey-nonce;host;x-podkey-date, Signature=" + sig,
		"PODKEY2-HMAC-SHA256 Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=zz",
		"PODKEY2-HMAC-SHA256 Credential=" + id + ", Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + sig,
		"PODKEY2-HMAC-SHA256 Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce",
	} {
		if _, err := ParseAuthorization(h); !errors.Is(err, ErrMalformed) {
			t.Errorf("accepted %q: %v", h, err)
		}
	}
}

func FuzzParseAuthorization(f *testing.F) {
	r, _ := http.NewRequest("GET", "https://svc/", nil)
	_ = signWith(r, suite.GM, vectorKeyID(suite.GM), vectorSecret, vectorDate, vectorNonce)
	f.Add(r.Header.Get("Authorization"))
	f.Add("PODKEY2-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=00")
	f.Fuzz(func(t *testing.T, h string) {
		a, err := ParseAuthorization(h)
		if err != nil {
			return
		}
		if a.AccessKeyID == "" || len(a.Signature) != 32 || strings.Join(normalizeSigned(a.SignedHeaders), ";") != strings.Join(a.SignedHeaders, ";") {
			t.Fatalf("accepted an incomplete header: %+v", a)
		}
	})
}

// FuzzStringToSign: the canonical form is a function of the request, and
// a request Canonical accepts carried exactly the date and nonce keyd will
// read back from its string to sign.
func FuzzStringToSign(f *testing.F) {
	f.Add("GET", "/a/b%20c", "x=1&y=%2F", "svc:8443", "20261128T184500Z", "bm9uY2Utbm9uY2Utbm9uY2U", []byte("body"))
	f.Add("GET", "/", "", "svc", "20261128T184500.5Z", "bm9uY2Utbm9uY2Utbm9uY2U", []byte{})
	f.Add("GET", "/", "", "svc", "20261128T184500Z\nAAAAAAAAAAAAAAAAAAAA", "bm9uY2Utbm9uY2Utbm9uY2U", []byte{})
	auth := "PODKEY2-HMAC-SHA256 Credential=" + vectorKeyID(suite.Intl) + ", SignedHeaders=" + strings.Join(defaultSigned, ";") + ", Signature=" + strings.Repeat("00", 32)
	f.Fuzz(func(t *testing.T, method, path, query, host, date, nonce string, body []byte) {
		r, err := http.NewRequest("GET", "https://example/", nil)
		if err != nil {
			return
		}
		r.Method, r.URL.Path, r.URL.RawQuery, r.Host = method, path, query, host
		r.Header.Set(HeaderDate, date)
		r.Header.Set(HeaderNonce, nonce)
		a, errA := StringToSign(Algorithm(suite.Intl), suite.Intl, r, defaultSigned, body)
		b, errB := StringToSign(Algorithm(suite.Intl), suite.Intl, r, defaultSigned, body)
		if string(a) != string(b) || (errA == nil) != (errB == nil) {
			t.Fatal("canonical form is not deterministic")
		}
		r.Header.Set("Authorization", auth)
		r.Body = nopBody(string(body))
		_, sts, err := Canonical(r)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("refusal is not ErrMalformed: %v", err)
			}
			return
		}
		d, n, err := DateAndNonce(sts)
		if err != nil || d.Format(DateFormat) != date || n != nonce {
			t.Fatalf("accepted, but date/nonce read back differ: %v %q %v", d, n, err)
		}
	})
}

type body struct{ *strings.Reader }

func (body) Close() error { return nil }

func nopBody(s string) body { return body{strings.NewReader(s)} }

// collidingPairs are requests that a backend can tell apart and that
// version 1 gave one string to sign (checked against a live backend in
// pkg/apikey). Each pair is (A, B) as raw HTTP/1.1 text, without the
// signing headers; signed is the extra signed headers.
var collidingPairs = []struct {
	name   string
	a, b   string
	signed []string
}{
	{"an encoded slash", "GET /v1/accounts/a%2Fb HTTP/1.1\r\n", "GET /v1/accounts/a/b HTTP/1.1\r\n", nil},
	{"encoded dot segments", "GET /a/%2e%2e/b HTTP/1.1\r\n", "GET /a/../b HTTP/1.1\r\n", nil},
	{"repeated keys reordered", "GET /pay?to=alice&to=mallory HTTP/1.1\r\n", "GET /pay?to=mallory&to=alice HTTP/1.1\r\n", nil},
	{"a bare key and an empty value", "GET /x?c HTTP/1.1\r\n", "GET /x?c= HTTP/1.1\r\n", nil},
	{"a plus and an encoded space", "GET /x?q=a+b HTTP/1.1\r\n", "GET /x?q=a%20b HTTP/1.1\r\n", nil},
	{"a pair after a semicolon", "GET /pay?amount=1 HTTP/1.1\r\n", "GET /pay?amount=1&x=1;amount=1000000 HTTP/1.1\r\n", nil},
	{"a pair with a bad escape", "GET /x?a=1 HTTP/1.1\r\n", "GET /x?a=1&admin=%zz HTTP/1.1\r\n", nil},
	{"the method's case", "GET /x HTTP/1.1\r\n", "get /x HTTP/1.1\r\n", nil},
	{"one header on two lines or one", "GET /x HTTP/1.1\r\nX-A: a\r\nX-A: b\r\n", "GET /x HTTP/1.1\r\nX-A: a,b\r\n", []string{"x-a"}},
	{"a signed header empty or absent", "GET /x HTTP/1.1\r\nX-A: \r\n", "GET /x HTTP/1.1\r\n", []string{"x-a"}},
	{"whitespace inside a header value", "GET /x HTTP/1.1\r\nX-A: a  b\r\n", "GET /x HTTP/1.1\r\nX-A: a b\r\n", []string{"x-a"}},
}

// serverRequest parses raw as a server does, with the signing headers of
// a request signed at vectorDate.
func serverRequest(t *testing.T, raw string, signed []string) *http.Request {
	t.Helper()
	auth := Algorithm(suite.Intl) + " Credential=" + vectorKeyID(suite.Intl) + ", SignedHeaders=" + strings.Join(normalizeSigned(signed), ";") +
		", Signature=" + strings.Repeat("00", 32)
	raw += "Host: ledger\r\n" + HeaderDate + ": " + vectorDate.Format(DateFormat) + "\r\n" + HeaderNonce + ": " + vectorNonce +
		"\r\nAuthorization: " + auth + "\r\n\r\n"
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	return r
}

// TestCollidingPairsDiffer: requests a backend tells apart never share a
// string to sign; a request that leaves out a signed header is refused.
func TestCollidingPairsDiffer(t *testing.T) {
	for _, p := range collidingPairs {
		_, a, errA := Canonical(serverRequest(t, p.a, p.signed))
		if errA != nil {
			t.Fatalf("%s: A refused: %v", p.name, errA)
		}
		_, b, errB := Canonical(serverRequest(t, p.b, p.signed))
		if errB == nil && bytes.Equal(a, b) {
			t.Errorf("%s: one string to sign for both:\n%s", p.name, a)
		}
	}
}

// TestRetiredVersionRefused: a version 1 Authorization header is refused
// as retired, not read.
func TestRetiredVersionRefused(t *testing.T) {
	h := "PODKEY1-HMAC-SHA256 Credential=" + vectorKeyID(suite.Intl) + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + strings.Repeat("00", 32)
	if _, err := ParseAuthorization(h); !errors.Is(err, ErrRetired) {
		t.Fatalf("got %v", err)
	}
}
