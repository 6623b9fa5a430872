package e2e

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/identity/localtoken"
	"github.com/podkey/podkey/internal/keyd/identity/tokenreview"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// BenchmarkIssueIdentity compares apiKey issuance through keyd's local
// socket with no identity check (development mode), with the pod token
// reviewed by the real API server on every call (cache disabled), with
// reviews cached (the same pod asking again within the cache TTL), and
// verified locally (keyd --pod-identity local: no API-server call):
//
//	go test -run '^$' -bench IssueIdentity ./e2e
func BenchmarkIssueIdentity(b *testing.B) {
	ctx := context.Background()
	c, keydToken := identityCluster(b)
	p, tok := benchPodToken(b, c, "bench-pod")
	rev, err := tokenreview.New(c.Config(keydToken))
	if err != nil {
		b.Fatal(err)
	}
	req := &keydv1.IssueRequest{PodToken: tok, Pod: &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments",
		PodName: "bench-pod", PodUid: string(p.UID), NodeName: "node-1"}, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}
	for _, mode := range []struct {
		name     string
		verifier *identity.Verifier
	}{
		{"no-review", nil},
		{"tokenreview-cache-miss", identity.NewVerifier(rev, identity.Options{CacheTTL: -1})},
		{"tokenreview-cache-hit", identity.NewVerifier(rev, identity.Options{CacheTTL: time.Hour})},
		{"local", identity.NewVerifier(localtoken.Fallback{Local: startLocal(b, c.Config(keydToken), localtoken.Options{})}, identity.Options{CacheTTL: -1})},
	} {
		b.Run(mode.name, func(b *testing.B) {
			e := keydtest.Start(b, func(o *service.Options) {
				o.Identity, o.InsecureLocalIdentity = mode.verifier, mode.verifier == nil
			})
			if _, err := e.Keyd.Issue(ctx, req); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(4)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := e.Keyd.Issue(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "issues/s")
		})
	}
}

// BenchmarkPodIdentityCheck compares the identity check alone: a pod
// token verified by TokenReview on every call, verified locally with its
// signature checked on every call, and locally with the signature of a
// token seen before remembered (keyd's default; the claims, the pod and
// the service account are checked on every call); it reports checks per
// second and the API-server requests each check made:
//
//	go test -run '^$' -bench PodIdentityCheck ./e2e
func BenchmarkPodIdentityCheck(b *testing.B) {
	ctx := context.Background()
	c, keydToken := identityCluster(b)
	_, tok := benchPodToken(b, c, "bench-check-pod")
	var calls atomic.Int64
	cfg := c.Config(keydToken)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { calls.Add(1); return rt.RoundTrip(r) })
	}
	rev, err := tokenreview.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		r    func() identity.Reviewer
	}{
		{"tokenreview", func() identity.Reviewer { return rev }},
		{"local-verify-each", func() identity.Reviewer {
			return localtoken.Fallback{Local: startLocal(b, cfg, localtoken.Options{SignatureCache: -1})}
		}},
		{"local", func() identity.Reviewer { return localtoken.Fallback{Local: startLocal(b, cfg, localtoken.Options{})} }},
	} {
		b.Run(mode.name, func(b *testing.B) {
			v := identity.NewVerifier(mode.r(), identity.Options{CacheTTL: -1})
			if _, err := v.Pod(ctx, tok); err != nil {
				b.Fatal(err)
			}
			before := calls.Load()
			b.SetParallelism(4)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Pod(ctx, tok); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "checks/s")
			b.ReportMetric(float64(calls.Load()-before)/float64(b.N), "api-calls/check")
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
