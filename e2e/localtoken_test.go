package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/identity/localtoken"
)

// startLocal starts a local verifier on cfg and waits until its caches
// are listed (it answers something other than ErrUndecided).
func startLocal(t testing.TB, cfg *rest.Config, o localtoken.Options) *localtoken.Verifier {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	lv, err := localtoken.New(ctx, cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if lv.Ready() == nil {
			return lv
		}
		if time.Now().After(deadline) {
			t.Fatal("the local verifier's caches did not list within 30s")
		}
	}
}

// TestLocalTokenVerification checks tokens the real API server issued,
// with no TokenReview: what a valid bound token proves, and each reason a
// token is refused.
func TestLocalTokenVerification(t *testing.T) {
	ctx := context.Background()
	c, keydToken := identityCluster(t)
	cfg := c.Config(keydToken) // keyd's own least-privileged identity
	lv := startLocal(t, cfg, localtoken.Options{})
	v := identity.NewVerifier(localtoken.Fallback{Local: lv}, identity.Options{CacheTTL: -1})
	ns := "local-tokens"
	token := func(name, sa, aud string) (string, string) {
		t.Helper()
		p, err := c.Pod(ctx, ns, name, sa, "node-1")
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.Token(ctx, ns, sa, aud, p)
		if err != nil {
			t.Fatal(err)
		}
		return tok, string(p.UID)
	}
	// refusedWithin waits (at most 2s: a watch event) until tok is refused
	// for why.
	refusedWithin := func(tok, why string) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			_, err := v.Pod(ctx, tok)
			if err != nil && errors.Is(err, identity.ErrUnauthenticated) && strings.Contains(err.Error(), why) {
				if strings.Contains(err.Error(), tok) {
					t.Fatal("the refusal quotes the token")
				}
				return time.Since(start)
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("not refused for %q within 2s: %v", why, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	good, uid := token("app-1", "app", "podkey")
	id, err := v.Pod(ctx, good)
	if err != nil || id.UID != uid || id.Node != "node-1" || id.Namespace != ns || id.ServiceAccount != "app" || id.Name != "app-1" {
		t.Fatalf("a valid bound token: %+v %v", id, err)
	}
	r, err := lv.Review(ctx, good, []string{"podkey"})
	if err != nil || !strings.HasPrefix(strings.Join(r.Extra[identity.ExtraCredentialID], ""), "JTI=") {
		t.Fatalf("the token's jti is not reported: %+v %v", r, err)
	}

	t.Run("wrong audience", func(t *testing.T) {
		tok, _ := token("app-aud", "app", "vault")
		refusedWithin(tok, "audience")
	})
	t.Run("wrong issuer", func(t *testing.T) {
		other := startLocal(t, cfg, localtoken.Options{Issuers: []string{"https://issuer.elsewhere.example"}})
		r, err := other.Review(ctx, good, []string{"podkey"})
		if err != nil || r.Authenticated || !strings.Contains(r.Error, "issuer") {
			t.Fatalf("%+v %v", r, err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		later := startLocal(t, cfg, localtoken.Options{Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
		r, err := later.Review(ctx, good, []string{"podkey"})
		if err != nil || r.Authenticated || !strings.Contains(r.Error, "expired") {
			t.Fatalf("%+v %v", r, err)
		}
	})
	t.Run("unknown key: one refetch however many ask", func(t *testing.T) {
		key, _ := rsa.GenerateKey(rand.Reader, 2048)
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "made-up"))
		if err != nil {
			t.Fatal(err)
		}
		var claims map[string]any // the good token's claims, signed by another key
		payload, _ := jose.ParseSigned(good, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
		_ = json.Unmarshal(payload.UnsafePayloadWithoutVerification(), &claims)
		forged, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		before := lv.KeyFetches()
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := v.Pod(ctx, forged); err == nil || !strings.Contains(err.Error(), "key the issuer does not publish") {
					t.Errorf("a token signed by an unknown key: %v", err)
				}
			}()
		}
		wg.Wait()
		if n := lv.KeyFetches() - before; n > 1 {
			t.Fatalf("%d key fetches for one unknown kid", n)
		}
	})
	t.Run("pod recreated under the same name", func(t *testing.T) {
		tok, oldUID := token("app-re", "app", "podkey")
		// What keyd's database reaper asks: is the pod gone?
		if lv.PodGone(ns, "app-re", oldUID) {
			t.Fatal("a live pod is reported gone")
		}
		if err := c.DeletePod(ctx, ns, "app-re"); err != nil {
			t.Fatal(err)
		}
		refusedWithin(tok, "no longer exists")
		if !lv.PodGone(ns, "app-re", oldUID) {
			t.Fatal("a deleted pod is not reported gone")
		}
		_, newUID := token("app-re", "app", "podkey")
		if newUID == "" {
			t.Fatal("no pod")
		}
		time.Sleep(200 * time.Millisecond) // the new pod reaches the cache
		refusedWithin(tok, "no longer exists")
		if !lv.PodGone(ns, "app-re", oldUID) || lv.PodGone(ns, "app-re", newUID) {
			t.Fatal("a name reused by a new pod: the old one must be gone, the new one not")
		}
	})
	t.Run("service account deleted", func(t *testing.T) {
		tok, _ := token("gone-1", "gone", "podkey")
		if err := c.Admin.CoreV1().ServiceAccounts(ns).Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		refusedWithin(tok, "service account")
	})
	t.Run("a deleted pod's token is refused within 2s", func(t *testing.T) {
		tok, _ := token("app-del", "app", "podkey")
		if _, err := v.Pod(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if err := c.DeletePod(ctx, ns, "app-del"); err != nil {
			t.Fatal(err)
		}
		took := refusedWithin(tok, "no longer exists")
		t.Logf("a deleted pod's token was refused %v after the deletion returned", took)
	})
	if local, undecided := lv.Counts(); local == 0 || undecided != 0 {
		t.Fatalf("reviews: %d local, %d undecided", local, undecided)
	}
}
