// Package tokenverify verifies podkey's JWTs (objects of kind token) in a
// Go service that receives them: the signature by the key its "kid" names
// in podkey's JWK Set (ES256 or SM2SM3, see pkg/token/jwks), then the issuer,
// the audience, expiry and not-before. It needs no secret and no call to
// keyd per token: the key set is fetched from keyd's HTTPS endpoint (or
// given) and cached.
//
//	v := &tokenverify.Verifier{
//		Keys:     &tokenverify.Remote{URL: "https://podkey-keyd.podkey:8443/.well-known/jwks.json", Client: client},
//		Audience: "ledger",
//	}
//	claims, err := v.Verify(ctx, bearer)
//
// Revocation: a token lives at most its object's ttl (short by design);
// pod deletion revokes the pod's API keys and certificates' renewals in
// keyd, not tokens already handed out, so receivers that must refuse a
// deleted pod's token before it expires should keep ttls short.
package tokenverify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podkey/podkey/pkg/token/jwks"
	"github.com/podkey/podkey/pkg/token/jws"
)

// KeySource gives the JWK Set to verify with. refresh asks for a fresh
// copy (a token named a kid the cached set lacks, e.g. after a rotation).
type KeySource interface {
	Keys(ctx context.Context, refresh bool) (jwks.Set, error)
}

// Static is a fixed key set.
type Static struct{ Set jwks.Set }

// Keys returns the set.
func (s Static) Keys(context.Context, bool) (jwks.Set, error) { return s.Set, nil }

// Remote fetches the set from a URL (keyd's --jwks-listen) and caches it
// for TTL (default 5 minutes). A refresh is fetched at most every
// MinRefresh (default 10 s), so tokens with unknown kids cannot make the
// verifier hammer keyd.
type Remote struct {
	URL        string
	Client     *http.Client // its TLS configuration trusts `podkey ca bundle`
	TTL        time.Duration
	MinRefresh time.Duration

	mu      sync.Mutex
	set     jwks.Set
	fetched time.Time
}

// maxSetBytes bounds what is read of a key set.
const maxSetBytes = 1 << 20

// Keys returns the cached set, fetching it when stale or asked to refresh.
func (r *Remote) Keys(ctx context.Context, refresh bool) (jwks.Set, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ttl, minRefresh := r.TTL, r.MinRefresh
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	if minRefresh <= 0 {
		minRefresh = 10 * time.Second
	}
	age := time.Since(r.fetched)
	if !r.fetched.IsZero() && age < ttl && (!refresh || age < minRefresh) {
		return r.set, nil
	}
	set, err := r.fetch(ctx)
	if err != nil {
		if !r.fetched.IsZero() {
			return r.set, nil // keep verifying with what was fetched before
		}
		return jwks.Set{}, err
	}
	r.set, r.fetched = set, time.Now()
	return set, nil
}

func (r *Remote) fetch(ctx context.Context) (jwks.Set, error) {
	c := r.Client
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, nil)
	if err != nil {
		return jwks.Set{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return jwks.Set{}, fmt.Errorf("tokenverify: fetching keys: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return jwks.Set{}, fmt.Errorf("tokenverify: fetching keys: %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSetBytes))
	if err != nil {
		return jwks.Set{}, fmt.Errorf("tokenverify: fetching keys: %w", err)
	}
	return jwks.Parse(b)
}

// Claims are a podkey token's claims.
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  audience `json:"aud"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf"`
	Expiry    int64    `json:"exp"`
	ID        string   `json:"jti"`
	Podkey    struct {
		Namespace      string `json:"namespace"`
		ServiceAccount string `json:"serviceAccount"`
		Pod            string `json:"pod"`
		PodUID         string `json:"podUID"`
		Object         string `json:"object"`
	} `json:"podkey"`
}

// audience is "aud": one string or an array of them (RFC 7519 4.1.3).
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New(`"aud" is neither a string nor an array of strings`)
	}
	*a = many
	return nil
}

// Verifier verifies tokens. Keys and Audience are required.
type Verifier struct {
	Keys KeySource
	// Issuer the token must name. Default "podkey" (keyd's default).
	Issuer string
	// Audience the token must list: this service's name.
	Audience string
	// Leeway for clock skew on exp and nbf. Default 30 s.
	Leeway time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Errors that name why a token was refused; wrapped with detail.
var (
	ErrMalformed = errors.New("tokenverify: malformed token")
	ErrSignature = errors.New("tokenverify: signature does not verify")
	ErrClaims    = errors.New("tokenverify: claims refused")
)

// Verify checks a compact JWS and returns its claims.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if v.Keys == nil || v.Audience == "" {
		return nil, errors.New("tokenverify: Verifier needs Keys and Audience")
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 || len(token) > 16<<10 {
		return nil, fmt.Errorf("%w: not a compact JWS", ErrMalformed)
	}
	hdr, err := jws.DecodeSegment(parts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: header encoding", ErrMalformed)
	}
	var h struct{ Alg, Kid string }
	if json.Unmarshal(hdr, &h) != nil || h.Kid == "" {
		return nil, fmt.Errorf("%w: header without kid", ErrMalformed)
	}
	set, err := v.Keys.Keys(ctx, false)
	if err != nil {
		return nil, err
	}
	st, pub, err := set.Find(h.Kid)
	if errors.Is(err, jwks.ErrUnknownKey) {
		if set, err = v.Keys.Keys(ctx, true); err != nil {
			return nil, err
		}
		st, pub, err = set.Find(h.Kid)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	body, err := jws.Verify(st, pub, token)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	var c Claims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	if err := v.check(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (v *Verifier) check(c *Claims) error {
	iss, leeway, now := v.Issuer, v.Leeway, time.Now()
	if iss == "" {
		iss = "podkey"
	}
	if leeway == 0 {
		leeway = 30 * time.Second
	}
	if v.Now != nil {
		now = v.Now()
	}
	switch {
	case c.Issuer != iss:
		return fmt.Errorf("%w: issuer %q, not %q", ErrClaims, c.Issuer, iss)
	case !slices.Contains(c.Audience, v.Audience):
		return fmt.Errorf("%w: audience %q not among %q", ErrClaims, v.Audience, []string(c.Audience))
	case c.Expiry == 0 || now.After(time.Unix(c.Expiry, 0).Add(leeway)):
		return fmt.Errorf("%w: expired at %s", ErrClaims, time.Unix(c.Expiry, 0).UTC().Format(time.RFC3339))
	case now.Add(leeway).Before(time.Unix(c.NotBefore, 0)):
		return fmt.Errorf("%w: not valid before %s", ErrClaims, time.Unix(c.NotBefore, 0).UTC().Format(time.RFC3339))
	}
	return nil
}
