// Package identity proves who is asking keyd: pods by their bound
// service-account tokens, node agents by theirs, both checked with the
// Kubernetes TokenReview API. Reviews may be cached for seconds, keyed by
// a hash of the token, never by the token itself; tokens are never logged
// or put in an error.
package identity

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podkey/podkey/pkg/pod"
)

// Extra keys the API server puts in a review of a pod-bound token.
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	// ExtraCredentialID is "JTI=<the token's jti>".
	ExtraCredentialID = "authentication.kubernetes.io/credential-id"
)

// Review is the outcome of a TokenReview.
type Review struct {
	Authenticated bool
	Username      string
	Audiences     []string
	Extra         map[string][]string
	Error         string // the API server's reason when not authenticated
	// Method is how it was decided: "tokenreview", "local", or "cache"
	// (a review cached by the Verifier).
	Method string
}

// Reviewer reviews tokens (the Kubernetes API in production).
type Reviewer interface {
	Review(ctx context.Context, token string, audiences []string) (Review, error)
}

// ErrUnauthenticated marks a token that does not prove an identity.
var ErrUnauthenticated = errors.New("token not accepted")

// ErrForbidden marks a valid token for an identity that may not do this.
var ErrForbidden = errors.New("identity not allowed")

// ErrUnavailable marks a review that could not be made.
var ErrUnavailable = errors.New("token review unavailable")

// Options configure a Verifier. Every field says its default.
type Options struct {
	// PodAudience is the audience of pod tokens. Default "podkey".
	PodAudience string
	// NodeAudience is the audience of node agents' tokens. Default "podkey-node".
	NodeAudience string
	// NodeServiceAccount is the node agent's "namespace/name". Required for
	// node identity.
	NodeServiceAccount string
	// CacheTTL bounds how long a successful review is reused. Default 10s;
	// negative disables the cache.
	CacheTTL time.Duration
	// CacheSize bounds the cache. Default 10000.
	CacheSize int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Verifier checks pod and node tokens.
type Verifier struct {
	r    Reviewer
	opts Options

	mu    sync.Mutex
	cache map[[32]byte]cached

	observe atomic.Pointer[func(method string)]
}

// SetObserver has observe called with each review's Method (keyd's
// podkey_keyd_token_checks_total).
func (v *Verifier) SetObserver(observe func(method string)) { v.observe.Store(&observe) }

func (v *Verifier) observed(method string) {
	if f := v.observe.Load(); f != nil && method != "" {
		(*f)(method)
	}
}

type cached struct {
	review  Review
	expires time.Time
}

// NewVerifier builds a Verifier over a Reviewer.
func NewVerifier(r Reviewer, o Options) *Verifier {
	if o.PodAudience == "" {
		o.PodAudience = "podkey"
	}
	if o.NodeAudience == "" {
		o.NodeAudience = "podkey-node"
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = 10 * time.Second
	}
	if o.CacheSize == 0 {
		o.CacheSize = 10000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Verifier{r: r, opts: o, cache: map[[32]byte]cached{}}
}

// review asks the Reviewer, or the cache for a recent success.
func (v *Verifier) review(ctx context.Context, token, audience string) (Review, error) {
	if token == "" {
		return Review{}, fmt.Errorf("%w: no token", ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(audience + "\x00" + token))
	now := v.opts.Now()
	if v.opts.CacheTTL > 0 {
		v.mu.Lock()
		c, ok := v.cache[key]
		v.mu.Unlock()
		if ok && now.Before(c.expires) {
			v.observed("cache")
			return c.review, nil
		}
	}
	r, err := v.r.Review(ctx, token, []string{audience})
	if err != nil {
		return Review{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	v.observed(r.Method)
	if !r.Authenticated {
		reason := "the API server did not authenticate it"
		if r.Error != "" {
			reason = sanitize(r.Error, token)
		}
		return Review{}, fmt.Errorf("%w: %s", ErrUnauthenticated, reason)
	}
	if !slices.Contains(r.Audiences, audience) {
		return Review{}, fmt.Errorf("%w: not issued for audience %q", ErrUnauthenticated, audience)
	}
	if v.opts.CacheTTL > 0 {
		v.mu.Lock()
		if len(v.cache) >= v.opts.CacheSize {
			for k, c := range v.cache { // drop expired entries, else one
				if !now.Before(c.expires) || len(v.cache) >= v.opts.CacheSize {
					delete(v.cache, k)
				}
				if len(v.cache) < v.opts.CacheSize/2 {
					break
				}
			}
		}
		v.cache[key] = cached{review: r, expires: now.Add(v.opts.CacheTTL)}
		v.mu.Unlock()
	}
	return r, nil
}

// sanitize keeps an API server message but never the token, should the
// message ever quote it.
func sanitize(msg, token string) string {
	if token != "" {
		msg = strings.ReplaceAll(msg, token, "[token]")
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return msg
}

func serviceAccount(username string) (string, string, bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok := strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != ""
}

func one(extra map[string][]string, key string) string {
	if v := extra[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// Pod proves a pod's identity from its token (audience PodAudience). The
// token must be bound to a pod that is scheduled on a node.
func (v *Verifier) Pod(ctx context.Context, token string) (pod.Identity, error) {
	p, _, err := v.PodToken(ctx, token)
	return p, err
}

// PodToken is Pod, also returning the token's ID (its jti) when the review
// reports one, for the audit record.
func (v *Verifier) PodToken(ctx context.Context, token string) (pod.Identity, string, error) {
	p, r, err := v.pod(ctx, token)
	if err != nil {
		return p, "", err
	}
	jti, _ := strings.CutPrefix(one(r.Extra, ExtraCredentialID), "JTI=")
	if len(jti) > 128 {
		jti = ""
	}
	return p, jti, nil
}

func (v *Verifier) pod(ctx context.Context, token string) (pod.Identity, Review, error) {
	r, err := v.review(ctx, token, v.opts.PodAudience)
	if err != nil {
		return pod.Identity{}, r, fmt.Errorf("pod token: %w", err)
	}
	ns, sa, ok := serviceAccount(r.Username)
	if !ok {
		return pod.Identity{}, r, fmt.Errorf("pod token: %w: it is not a service account token", ErrUnauthenticated)
	}
	p := pod.Identity{Namespace: ns, ServiceAccount: sa, Name: one(r.Extra, ExtraPodName), UID: one(r.Extra, ExtraPodUID), Node: one(r.Extra, ExtraNodeName)}
	if p.UID == "" || p.Name == "" {
		return pod.Identity{}, r, fmt.Errorf("pod token: %w: it is not bound to a pod (request it for the pod, as the kubelet does with CSI tokenRequests)", ErrUnauthenticated)
	}
	if p.Node == "" {
		return pod.Identity{}, r, fmt.Errorf("pod token: %w: it names no node (the pod is not scheduled)", ErrUnauthenticated)
	}
	return p, r, nil
}

// Node proves a node agent's identity from its token (audience
// NodeAudience): the token must belong to NodeServiceAccount and be bound
// to a pod on a node, whose name is returned.
func (v *Verifier) Node(ctx context.Context, token string) (string, error) {
	if v.opts.NodeServiceAccount == "" {
		return "", fmt.Errorf("node token: %w: keyd has no node agent service account configured", ErrForbidden)
	}
	r, err := v.review(ctx, token, v.opts.NodeAudience)
	if err != nil {
		return "", fmt.Errorf("node token: %w", err)
	}
	ns, sa, ok := serviceAccount(r.Username)
	if !ok || ns+"/"+sa != v.opts.NodeServiceAccount {
		return "", fmt.Errorf("node token: %w: service account %q is not the node agent's (%s)", ErrForbidden, r.Username, v.opts.NodeServiceAccount)
	}
	node := one(r.Extra, ExtraNodeName)
	if node == "" {
		return "", fmt.Errorf("node token: %w: it is not bound to a pod on a node", ErrUnauthenticated)
	}
	return node, nil
}
