package identity

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/pod"
)

// fakeReviewer stands in for the API server in this unit test; the real
// one is exercised in e2e/identity_test.go.
type fakeReviewer struct {
	reviews map[string]Review
	calls   atomic.Int64
}

func (f *fakeReviewer) Review(_ context.Context, token string, aud []string) (Review, error) {
	f.calls.Add(1)
	r, ok := f.reviews[token]
	if !ok {
		return Review{Error: "invalid bearer token, token " + token + " lookup failed"}, nil
	}
	return r, nil
}

func podReview(aud string) Review {
	return Review{Authenticated: true, Username: "system:serviceaccount:payments:payments", Audiences: []string{aud},
		Extra: map[string][]string{ExtraPodName: {"p"}, ExtraPodUID: {"u"}, ExtraNodeName: {"n1"}}}
}

func TestPodAndNode(t *testing.T) {
	node := Review{Authenticated: true, Username: "system:serviceaccount:podkey:podkey-csi", Audiences: []string{"podkey-node"},
		Extra: map[string][]string{ExtraNodeName: {"n1"}, ExtraPodUID: {"ds"}, ExtraPodName: {"csi-x"}}}
	unbound := podReview("podkey")
	unbound.Extra = nil
	f := &fakeReviewer{reviews: map[string]Review{
		"good": podReview("podkey"), "other-aud": podReview("vault"), "unbound": unbound, "node": node,
		"user": {Authenticated: true, Username: "alice", Audiences: []string{"podkey"}},
	}}
	v := NewVerifier(f, Options{NodeServiceAccount: "podkey/podkey-csi"})
	ctx := context.Background()
	p, err := v.Pod(ctx, "good")
	if err != nil || p != (pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "p", UID: "u", Node: "n1"}) {
		t.Fatalf("%+v %v", p, err)
	}
	for _, tok := range []string{"other-aud", "unbound", "user", "forged-secret-token", ""} {
		_, err := v.Pod(ctx, tok)
		if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("%s: %v", tok, err)
		}
		if tok != "" && strings.Contains(err.Error(), tok) {
			t.Fatalf("error echoes the token: %v", err)
		}
	}
	if n, err := v.Node(ctx, "node"); err != nil || n != "n1" {
		t.Fatalf("node %q %v", n, err)
	}
	if _, err := v.Node(ctx, "good"); err == nil {
		t.Fatal("pod token accepted as node token")
	}
	nv := NewVerifier(&fakeReviewer{reviews: map[string]Review{"node": {Authenticated: true, Username: "system:serviceaccount:other:sa",
		Audiences: []string{"podkey-node"}, Extra: map[string][]string{ExtraNodeName: {"n1"}}}}}, Options{NodeServiceAccount: "podkey/podkey-csi"})
	if _, err := nv.Node(ctx, "node"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("wrong service account: %v", err)
	}
}

func TestCacheKeyedByHashAndExpires(t *testing.T) {
	f := &fakeReviewer{reviews: map[string]Review{"good": podReview("podkey")}}
	now := time.Now()
	v := NewVerifier(f, Options{CacheTTL: 5 * time.Second, Now: func() time.Time { return now }})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := v.Pod(ctx, "good"); err != nil {
			t.Fatal(err)
		}
	}
	if f.calls.Load() != 1 {
		t.Fatalf("%d reviews for three checks within the TTL", f.calls.Load())
	}
	now = now.Add(6 * time.Second)
	_, _ = v.Pod(ctx, "good")
	if f.calls.Load() != 2 {
		t.Fatal("cache outlived its TTL")
	}
	for k := range v.cache {
		if strings.Contains(string(k[:]), "good") {
			t.Fatal("cache key holds the token")
		}
	}
	_, _ = v.Pod(ctx, "bad")
	_, _ = v.Pod(ctx, "bad")
	if f.calls.Load() != 4 {
		t.Fatal("a failed review was cached")
	}
}

// The observer hears how each check was decided, a cache hit included,
// and PodToken reports the token's jti.
func TestObserverAndTokenID(t *testing.T) {
	r := podReview("podkey")
	r.Method = "local"
	r.Extra[ExtraCredentialID] = []string{"JTI=3f1c"}
	v := NewVerifier(&fakeReviewer{reviews: map[string]Review{"good": r}}, Options{CacheTTL: time.Minute})
	seen := map[string]int{}
	v.SetObserver(func(m string) { seen[m]++ })
	for range 2 {
		_, jti, err := v.PodToken(context.Background(), "good")
		if err != nil || jti != "3f1c" {
			t.Fatalf("%q %v", jti, err)
		}
	}
	if seen["local"] != 1 || seen["cache"] != 1 {
		t.Fatalf("observed %v", seen)
	}
}
