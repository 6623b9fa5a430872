// Package localtoken verifies the API server's bound service-account
// tokens inside keyd, with no call to the API server per token: the
// signature against the issuer's published keys, the issuer, audience,
// times and lifetime, and the pod binding against informer caches of pods
// and service accounts (the pod exists with the token's UID, is not being
// deleted, runs on the token's node under the token's service account,
// which exists with the token's UID). It is an identity.Reviewer, so the
// rest of keyd's identity checks (node, service account, binding) are the
// same as with TokenReview. When the caches cannot be trusted (not yet
// listed, a watch failing past a bound) it answers ErrUndecided, and
// Fallback asks TokenReview instead.
//
// What it does not see: a token revoked without its pod being deleted
// (the API server has no such revocation for bound tokens today, but
// TokenReview would see one); what it sees later than TokenReview: a pod
// deleted while its watch event is in flight (milliseconds), or while the
// watch is down (at most StaleAfter).
package localtoken

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podkey/podkey/internal/keyd/identity"
)

// ErrUndecided marks a token the caches cannot decide on now.
var ErrUndecided = errors.New("local token verification cannot decide")

// Options configure a Verifier. Every field says its default.
type Options struct {
	// Issuers are the accepted iss values (several while the cluster
	// rotates its issuer). Default: the one the API server's OIDC
	// discovery document names.
	Issuers []string
	// KeyFile holds the issuer's public keys (a JWK Set, or PEM as the
	// API server's --service-account-key-file) for clusters that do not
	// serve /openid/v1/jwks. Default: fetch them from the API server.
	KeyFile string
	// Leeway tolerates clock differences on exp, nbf and iat. Default 30s.
	Leeway time.Duration
	// MaxLifetime refuses tokens valid for longer (exp - iat), such as the
	// year-long "extended" tokens of older clusters. Default 24h.
	MaxLifetime time.Duration
	// StaleAfter is how long a failing watch is trusted. Default 30s.
	StaleAfter time.Duration
	// RefetchEvery bounds how often an unknown kid refetches the keys.
	// Default 10s.
	RefetchEvery time.Duration
	// SignatureCache bounds how many verified tokens (by SHA-256, with
	// their claims, until they expire) skip the signature check when
	// presented again; every other check is made on every call. Default
	// 10000; negative disables.
	SignatureCache int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Verifier is the local identity.Reviewer.
type Verifier struct {
	opts  Options
	keys  *keys
	watch *watch

	local, undecided atomic.Int64
	lastLog          atomic.Int64 // unix nanoseconds of the last undecided log

	mu   sync.Mutex
	sigs map[[32]byte]*claims
}

// New starts the caches (they list in the background; until then Review
// answers ErrUndecided) and fetches the keys; it stops when ctx ends.
// cfg's identity needs list and watch on pods and serviceaccounts.
func New(ctx context.Context, cfg *rest.Config, o Options) (*Verifier, error) {
	if o.Leeway == 0 {
		o.Leeway = 30 * time.Second
	}
	if o.MaxLifetime == 0 {
		o.MaxLifetime = 24 * time.Hour
	}
	if o.StaleAfter == 0 {
		o.StaleAfter = 30 * time.Second
	}
	if o.RefetchEvery == 0 {
		o.RefetchEvery = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SignatureCache == 0 {
		o.SignatureCache = 10000
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	api := newAPIServer(cs)
	v := &Verifier{opts: o, sigs: map[[32]byte]*claims{}, keys: &keys{fetch: api.jwks, refetchEvery: o.RefetchEvery, now: o.Now}}
	if o.KeyFile != "" {
		if len(o.Issuers) == 0 {
			return nil, errors.New("localtoken: a key file needs the issuers named")
		}
		v.keys.fetch = func(context.Context) (*jose.JSONWebKeySet, error) { return fileKeys(o.KeyFile) }
	}
	if len(v.opts.Issuers) == 0 {
		iss, err := api.issuer(ctx)
		if err != nil {
			return nil, fmt.Errorf("localtoken: %w (or name the issuer)", err)
		}
		v.opts.Issuers = []string{iss}
	}
	if err := v.keys.refresh(ctx); err != nil {
		return nil, fmt.Errorf("localtoken: %w", err)
	}
	if v.watch, err = startWatch(ctx, cs, cfg, o.StaleAfter, o.Now); err != nil {
		return nil, fmt.Errorf("localtoken: %w", err)
	}
	return v, nil
}

// Ready says why the caches cannot decide now, or nil once they can.
func (v *Verifier) Ready() error { return v.watch.fresh() }

// PodGone reports whether the pod ns/name with uid no longer exists:
// the caches are fresh and hold no such pod, or one of another UID (the
// name reused). false whenever the caches cannot tell.
func (v *Verifier) PodGone(ns, name, uid string) bool {
	if v.watch.fresh() != nil {
		return false
	}
	p := v.watch.pod(ns, name)
	return p == nil || p.uid != uid
}

// Issuers are the accepted issuers.
func (v *Verifier) Issuers() []string { return v.opts.Issuers }

// Counts are the reviews decided locally and those left undecided.
func (v *Verifier) Counts() (local, undecided int64) { return v.local.Load(), v.undecided.Load() }

// KeyFetches counts fetches of the issuer's keys.
func (v *Verifier) KeyFetches() int {
	v.keys.mu.RLock()
	defer v.keys.mu.RUnlock()
	return v.keys.fetches
}

// claims are a bound token's claims.
type claims struct {
	jwt.Claims
	Kubernetes struct {
		Namespace      string `json:"namespace"`
		ServiceAccount struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"serviceaccount"`
		Pod *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
		Node *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"node"`
		WarnAfter *jwt.NumericDate `json:"warnafter"`
	} `json:"kubernetes.io"`
}

var algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256}

// refuse is a review that did not authenticate, with the reason.
func refuse(format string, a ...any) (identity.Review, error) {
	return identity.Review{Error: fmt.Sprintf(format, a...), Method: method}, nil
}

// method is the Review.Method of a local decision.
const method = "local"

// Review implements identity.Reviewer.
func (v *Verifier) Review(ctx context.Context, token string, audiences []string) (identity.Review, error) {
	r, err := v.review(ctx, token, audiences)
	if errors.Is(err, ErrUndecided) {
		v.undecided.Add(1)
	} else if err == nil {
		v.local.Add(1)
	}
	return r, err
}

// verified returns the token's claims once its signature verifies, from
// the cache when it verified before.
func (v *Verifier) verified(ctx context.Context, token string) (*claims, identity.Review, error) {
	sum := sha256.Sum256([]byte(token))
	v.mu.Lock()
	c := v.sigs[sum]
	v.mu.Unlock()
	if c != nil {
		return c, identity.Review{}, nil
	}
	t, err := jwt.ParseSigned(token, algorithms)
	if err != nil || len(t.Headers) != 1 {
		r, err := refuse("not a signed JWT of an accepted algorithm")
		return nil, r, err
	}
	key, err := v.keys.lookup(ctx, t.Headers[0].KeyID)
	if err != nil {
		return nil, identity.Review{}, fmt.Errorf("%w: %v", ErrUndecided, err)
	}
	if key == nil {
		r, err := refuse("signed by a key the issuer does not publish (kid %q)", t.Headers[0].KeyID)
		return nil, r, err
	}
	c = &claims{}
	if err := t.Claims(key.Key, c); err != nil {
		r, err := refuse("invalid signature")
		return nil, r, err
	}
	if v.opts.SignatureCache > 0 {
		now := v.opts.Now()
		v.mu.Lock()
		if len(v.sigs) >= v.opts.SignatureCache {
			for k, old := range v.sigs { // expired ones, else any half
				if old.Expiry == nil || now.After(old.Expiry.Time()) || len(v.sigs) >= v.opts.SignatureCache/2 {
					delete(v.sigs, k)
				}
			}
		}
		v.sigs[sum] = c
		v.mu.Unlock()
	}
	return c, identity.Review{}, nil
}

func (v *Verifier) review(ctx context.Context, token string, audiences []string) (identity.Review, error) {
	c, r, err := v.verified(ctx, token)
	if c == nil {
		return r, err
	}
	if !slices.Contains(v.opts.Issuers, c.Issuer) {
		return refuse("issuer %q is not accepted", c.Issuer)
	}
	now := v.opts.Now()
	if err := c.ValidateWithLeeway(jwt.Expected{Time: now, AnyAudience: audiences}, v.opts.Leeway); err != nil {
		return refuse("%v", strings.TrimPrefix(err.Error(), "go-jose/go-jose/jwt: "))
	}
	if c.Expiry == nil || c.IssuedAt == nil {
		return refuse("the token has no exp or iat")
	}
	if life := c.Expiry.Time().Sub(c.IssuedAt.Time()); life > v.opts.MaxLifetime || c.Kubernetes.WarnAfter != nil {
		return refuse("the token is valid for %s, longer than the %s accepted (request short-lived tokens)", life.Round(time.Second), v.opts.MaxLifetime)
	}
	k := c.Kubernetes
	if k.Namespace == "" || k.ServiceAccount.Name == "" {
		return refuse("not a service account token")
	}
	r = identity.Review{Authenticated: true, Username: "system:serviceaccount:" + k.Namespace + ":" + k.ServiceAccount.Name,
		Audiences: intersect(c.Audience, audiences), Extra: map[string][]string{}, Method: method}
	if c.ID != "" {
		r.Extra[identity.ExtraCredentialID] = []string{"JTI=" + c.ID}
	}
	if err := v.watch.fresh(); err != nil {
		return identity.Review{}, fmt.Errorf("%w: %v", ErrUndecided, err)
	}
	if uid := v.watch.accountUID(k.Namespace, k.ServiceAccount.Name); uid == "" || uid != k.ServiceAccount.UID {
		return refuse("service account %s/%s no longer exists", k.Namespace, k.ServiceAccount.Name)
	}
	if k.Pod == nil {
		return r, nil
	}
	p := v.watch.pod(k.Namespace, k.Pod.Name)
	switch {
	case p == nil || p.uid != k.Pod.UID:
		return refuse("pod %s/%s (uid %s) no longer exists", k.Namespace, k.Pod.Name, k.Pod.UID)
	case p.deleting:
		return refuse("pod %s/%s is being deleted", k.Namespace, k.Pod.Name)
	case p.account.Value() != k.ServiceAccount.Name:
		return refuse("pod %s/%s runs as another service account", k.Namespace, k.Pod.Name)
	case k.Node != nil && p.node.Value() != k.Node.Name:
		return refuse("pod %s/%s runs on another node", k.Namespace, k.Pod.Name)
	}
	r.Extra[identity.ExtraPodName] = []string{k.Pod.Name}
	r.Extra[identity.ExtraPodUID] = []string{k.Pod.UID}
	if k.Node != nil {
		r.Extra[identity.ExtraNodeName] = []string{k.Node.Name}
	}
	return r, nil
}

func intersect(a, b []string) []string {
	var out []string
	for _, s := range a {
		if slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

// Fallback reviews locally and, when the local caches cannot decide, with
// TokenReview; Remote nil makes it strict (local only: undecided is
// unavailable).
type Fallback struct {
	Local  *Verifier
	Remote identity.Reviewer
	// Log, when set, hears why the caches cannot decide, at most every
	// 30 s.
	Log *slog.Logger
}

// Review implements identity.Reviewer.
func (f Fallback) Review(ctx context.Context, token string, audiences []string) (identity.Review, error) {
	r, err := f.Local.Review(ctx, token, audiences)
	if errors.Is(err, ErrUndecided) {
		f.Local.logUndecided(f.Log, err, f.Remote != nil)
		if f.Remote != nil {
			return f.Remote.Review(ctx, token, audiences)
		}
	}
	return r, err
}

// logUndecided logs err at most every 30 s.
func (v *Verifier) logUndecided(log *slog.Logger, err error, fallback bool) {
	now := v.opts.Now().UnixNano()
	last := v.lastLog.Load()
	if log == nil || now-last < int64(30*time.Second) || !v.lastLog.CompareAndSwap(last, now) {
		return
	}
	log.Warn("local token verification cannot decide", "reason", err.Error(), "fallbackToTokenReview", fallback)
}
