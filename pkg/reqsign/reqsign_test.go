package reqsign

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/accesskey"
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
		"", "Bearer x", "PODKEY1-HMAC-MD5 Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + sig,
		"PODKEY1-HMAC-SHA256 Credential=AKIA, SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + sig,
		"PODKEY1-HMAC-SHA256 Credential=" + id + ", SignedHeaders=host, Signature=" + sig,
		"PODKEY1-HMAC-SHA256 Credential=" + id + ", SignedHeaders=x-podkey-nonce;host;x-podkey-date, Signature=" + sig,
		"PODKEY1-HMAC-SHA256 Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=zz",
		"PODKEY1-HMAC-SHA256 Credential=" + id + ", Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce, Signature=" + sig,
		"PODKEY1-HMAC-SHA256 Credential=" + id + ", SignedHeaders=host;x-podkey-date;x-podkey-nonce",
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
	f.Add("PODKEY1-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=00")
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
	auth := "PODKEY1-HMAC-SHA256 Credential=" + vectorKeyID(suite.Intl) + ", SignedHeaders=" + strings.Join(defaultSigned, ";") + ", Signature=" + strings.Repeat("00", 32)
	f.Fuzz(func(t *testing.T, method, path, query, host, date, nonce string, body []byte) {
		r, err := http.NewRequest("GET", "https://example/", nil)
		if err != nil {
			return
		}
		r.Method, r.URL.Path, r.URL.RawQuery, r.Host = method, path, query, host
		r.Header.Set(HeaderDate, date)
		r.Header.Set(HeaderNonce, nonce)
		a := StringToSign(Algorithm(suite.Intl), suite.Intl, r, defaultSigned, body)
		b := StringToSign(Algorithm(suite.Intl), suite.Intl, r, defaultSigned, body)
		if string(a) != string(b) {
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
