// Package reqsign is podkey's HTTP request signing scheme, version 2
// (docs/request-signing.md): a request signed with a pod's API key,
// HMAC-SHA256 under suite intl and HMAC-SM3 under suite gm, carried in the
// Authorization header with the access key id. The string to sign holds
// the request as it is on the wire: the method and request-target exactly
// as sent, every line of each signed header, the body's hash. Nothing is
// decoded, reordered or merged, so two requests a backend could tell apart
// never share a signature. It starts with the request's time and a nonce,
// so the verifier can refuse stale and replayed requests. Version 1, whose
// canonical form merged requests a backend treats differently, is retired.
package reqsign

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/suite"
)

// Header names and limits.
const (
	HeaderDate  = "X-Podkey-Date"
	HeaderNonce = "X-Podkey-Nonce"
	// DateFormat is the X-Podkey-Date format (UTC, seconds).
	DateFormat = "20060102T150405Z"
	// MaxBody bounds the body a signer or verifier hashes.
	MaxBody = 16 << 20
	// Window is how far a request's date may be from the verifier's clock.
	Window = 5 * time.Minute
)

// Version prefixes the scheme's algorithm names and strings to sign.
const Version = "PODKEY2"

// RetiredVersion is the prefix of version 1, which is no longer accepted.
const RetiredVersion = "PODKEY1"

// Algorithm names the scheme and suite in the Authorization header.
func Algorithm(s suite.Name) string {
	if s == suite.GM {
		return Version + "-HMAC-SM3"
	}
	return Version + "-HMAC-SHA256"
}

// SuiteOf maps an algorithm name back to its suite.
func SuiteOf(alg string) (suite.Name, error) {
	switch alg {
	case Version + "-HMAC-SHA256":
		return suite.Intl, nil
	case Version + "-HMAC-SM3":
		return suite.GM, nil
	}
	if strings.HasPrefix(alg, RetiredVersion+"-") {
		return "", ErrRetired
	}
	return "", fmt.Errorf("%w: unknown algorithm %q", ErrMalformed, alg)
}

// ErrMalformed marks a request whose signature fields cannot be read.
var ErrMalformed = errors.New("malformed signed request")

// ErrRetired marks a request signed with version 1 of the scheme, whose
// canonical form let requests a backend treats differently share one
// signature (a%2Fb and a/b, reordered or unparsable query pairs, merged
// header lines).
var ErrRetired = errors.New("request signing version 1 (PODKEY1) is retired: sign with " + Version)

// defaultSigned are always signed, in this order of names.
var defaultSigned = []string{"host", "x-podkey-date", "x-podkey-nonce"}

// Auth is a parsed Authorization header.
type Auth struct {
	Algorithm     string
	Suite         suite.Name
	AccessKeyID   string
	SignedHeaders []string
	Signature     []byte
}

// requestTarget is the request-target exactly as on the wire: what a
// server received, or what a client will send for r.URL.
func requestTarget(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// headerLines are the signed header's lines: host is the request's Host;
// any other header gives one line per field line received, in order, its
// value trimmed of the optional whitespace around it and nothing else. A
// signed header that is absent cannot be told from an empty one otherwise,
// and is refused.
func headerLines(r *http.Request, name string) ([]string, error) {
	if name == "host" {
		if r.Host != "" {
			return []string{r.Host}, nil
		}
		return []string{r.URL.Host}, nil
	}
	vs := r.Header.Values(name)
	if len(vs) == 0 {
		return nil, fmt.Errorf("%w: signed header %q is absent", ErrMalformed, name)
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strings.Trim(v, " \t")
	}
	return out, nil
}

// StringToSign is the request as signed:
//
//	<algorithm>\n<date>\n<nonce>\n<method as sent>\n<request-target as sent>\n
//	<name>:<value>\n ... (each line of each signed header, names sorted)
//	<signed header names joined by ';'>\n<hex hash of the body>
func StringToSign(alg string, s suite.Name, r *http.Request, signed []string, body []byte) ([]byte, error) {
	var b bytes.Buffer
	// Nothing on the wire holds a line break; one here (a request built in
	// process) would shift the lines.
	line := func(v string) error {
		if strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("%w: a signed field holds a line break", ErrMalformed)
		}
		b.WriteString(v + "\n")
		return nil
	}
	b.WriteString(alg + "\n")
	b.WriteString(r.Header.Get(HeaderDate) + "\n")
	b.WriteString(r.Header.Get(HeaderNonce) + "\n")
	if err := line(r.Method); err != nil {
		return nil, err
	}
	if err := line(requestTarget(r)); err != nil {
		return nil, err
	}
	for _, h := range signed {
		lines, err := headerLines(r, h)
		if err != nil {
			return nil, err
		}
		for _, v := range lines {
			if err := line(h + ":" + v); err != nil {
				return nil, err
			}
		}
	}
	b.WriteString(strings.Join(signed, ";") + "\n")
	h := s.Hash()()
	h.Write(body)
	b.WriteString(hex.EncodeToString(h.Sum(nil)))
	return b.Bytes(), nil
}

// DateAndNonce reads them back from a string to sign (lines 2 and 3).
func DateAndNonce(sts []byte) (time.Time, string, error) {
	lines := bytes.SplitN(sts, []byte("\n"), 4)
	if len(lines) < 4 {
		return time.Time{}, "", fmt.Errorf("%w: string to sign too short", ErrMalformed)
	}
	// time.Parse also takes fractional seconds the layout does not name;
	// only the exact form is a date here.
	t, err := time.Parse(DateFormat, string(lines[1]))
	if err != nil || t.Format(DateFormat) != string(lines[1]) {
		return time.Time{}, "", fmt.Errorf("%w: %s is not %s", ErrMalformed, HeaderDate, DateFormat)
	}
	nonce := string(lines[2])
	if len(nonce) < 16 || len(nonce) > 64 || strings.Trim(nonce, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		return time.Time{}, "", fmt.Errorf("%w: nonce must be 16 to 64 base64url characters", ErrMalformed)
	}
	return t, nonce, nil
}

func normalizeSigned(extra []string) []string {
	set := map[string]bool{}
	for _, h := range append(append([]string{}, defaultSigned...), extra...) {
		set[strings.ToLower(strings.TrimSpace(h))] = true
	}
	var out []string
	for h := range set {
		if h != "" && h != "authorization" {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

// Sign adds the date, nonce and Authorization headers to r, signing it
// with the API key (id and secret of suite s). extraHeaders are signed too.
// The body is read and replaced so it can still be sent.
func Sign(r *http.Request, s suite.Name, keyID string, secret []byte, now time.Time, extraHeaders ...string) error {
	nonce := make([]byte, 18)
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return err
	}
	return signWith(r, s, keyID, secret, now, base64.RawURLEncoding.EncodeToString(nonce), extraHeaders...)
}

// signWith is Sign with a given nonce, for the test vectors.
func signWith(r *http.Request, s suite.Name, keyID string, secret []byte, now time.Time, nonce string, extraHeaders ...string) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	r.Header.Set(HeaderDate, now.UTC().Format(DateFormat))
	r.Header.Set(HeaderNonce, nonce)
	signed := normalizeSigned(extraHeaders)
	alg := Algorithm(s)
	sts, err := StringToSign(alg, s, r, signed, body)
	if err != nil {
		return err
	}
	sig := accesskey.Sign(s, secret, sts)
	r.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s, SignedHeaders=%s, Signature=%s",
		alg, keyID, strings.Join(signed, ";"), hex.EncodeToString(sig)))
	return nil
}

func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	r.Body.Close()
	if err != nil {
		return nil, err
	}
	if len(body) > MaxBody {
		return nil, fmt.Errorf("request body larger than %d bytes", MaxBody)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return body, nil
}

// ParseAuthorization reads an Authorization header of this scheme.
func ParseAuthorization(h string) (Auth, error) {
	var a Auth
	if len(h) > 2048 {
		return a, fmt.Errorf("%w: Authorization header too long", ErrMalformed)
	}
	alg, rest, ok := strings.Cut(h, " ")
	if !ok {
		return a, fmt.Errorf("%w: no credentials in the Authorization header", ErrMalformed)
	}
	var err error
	if a.Suite, err = SuiteOf(alg); err != nil {
		return a, err
	}
	a.Algorithm = alg
	seen := map[string]bool{}
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || seen[k] {
			return a, fmt.Errorf("%w: bad or repeated field %q", ErrMalformed, k)
		}
		seen[k] = true
		switch k {
		case "Credential":
			if _, _, _, err := accesskey.Parse(v); err != nil {
				return a, fmt.Errorf("%w: credential is not an access key id", ErrMalformed)
			}
			a.AccessKeyID = v
		case "SignedHeaders":
			a.SignedHeaders = strings.Split(v, ";")
			if strings.Join(normalizeSigned(a.SignedHeaders), ";") != v {
				return a, fmt.Errorf("%w: SignedHeaders must be lower case, sorted, and include host, x-podkey-date and x-podkey-nonce", ErrMalformed)
			}
		case "Signature":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != 32 {
				return a, fmt.Errorf("%w: signature must be 64 hex characters", ErrMalformed)
			}
			a.Signature = sig
		default:
			return a, fmt.Errorf("%w: unknown field %q", ErrMalformed, k)
		}
	}
	if a.AccessKeyID == "" || a.SignedHeaders == nil || a.Signature == nil {
		return a, fmt.Errorf("%w: Credential, SignedHeaders and Signature are required", ErrMalformed)
	}
	return a, nil
}

// Canonical parses r's Authorization header and returns it with the string
// to sign, reading (and restoring) the body.
func Canonical(r *http.Request) (Auth, []byte, error) {
	a, err := ParseAuthorization(r.Header.Get("Authorization"))
	if err != nil {
		return a, nil, err
	}
	body, err := readBody(r)
	if err != nil {
		return a, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	sts, err := StringToSign(a.Algorithm, a.Suite, r, a.SignedHeaders, body)
	if err != nil {
		return a, nil, err
	}
	date, nonce, err := DateAndNonce(sts)
	if err != nil {
		return a, nil, err
	}
	// A header value with a line break would shift the lines keyd reads
	// the date and nonce from; net/http refuses such values on the wire,
	// and a request built in-process is held to the same.
	if date.Format(DateFormat) != r.Header.Get(HeaderDate) || nonce != r.Header.Get(HeaderNonce) {
		return a, nil, fmt.Errorf("%w: %s or %s is not a single line", ErrMalformed, HeaderDate, HeaderNonce)
	}
	return a, sts, nil
}
