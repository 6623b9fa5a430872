package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/identity/tokenreview"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// BenchmarkIssueIdentity compares apiKey issuance through keyd's local
// socket with no identity check (development mode), with the pod token
// reviewed by the real API server on every call (cache disabled), and with
// reviews cached (the same pod asking again within the cache TTL):
//
//	go test -run '^$' -bench IssueIdentity ./e2e
func BenchmarkIssueIdentity(b *testing.B) {
	ctx := context.Background()
	c := sharedCluster(b)
	if err := c.Node(ctx, "node-1"); err != nil {
		b.Fatal(err)
	}
	p, err := c.Pod(ctx, "payments", "bench-pod", "payments", "node-1")
	if err != nil {
		b.Fatal(err)
	}
	tok, err := c.Token(ctx, "payments", "payments", "podkey", p)
	if err != nil {
		b.Fatal(err)
	}
	keydToken, err := c.KeydIdentity(ctx, "podkey", "podkey-keyd")
	if err != nil {
		b.Fatal(err)
	}
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
