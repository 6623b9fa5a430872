package localtoken

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func TestKeyFileAsPEMOrJWKS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	dir := t.TempDir()
	pemFile := filepath.Join(dir, "sa.pub")
	_ = os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	set, err := fileKeys(pemFile)
	if err != nil || len(set.Keys) != 1 {
		t.Fatalf("%v %v", set, err)
	}
	kid, _ := KeyID(&key.PublicKey)
	if set.Keys[0].KeyID != kid || len(kid) != 43 {
		t.Fatalf("kid %q, want %q", set.Keys[0].KeyID, kid)
	}
	b, _ := json.Marshal(set)
	jwksFile := filepath.Join(dir, "jwks.json")
	_ = os.WriteFile(jwksFile, b, 0o600)
	if again, err := fileKeys(jwksFile); err != nil || find(again, kid) == nil {
		t.Fatalf("JWK Set: %v", err)
	}
	for _, bad := range []string{"", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"} {
		f := filepath.Join(dir, "bad")
		_ = os.WriteFile(f, []byte(bad), 0o600)
		if _, err := fileKeys(f); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// An unknown kid refetches the keys once, however many callers ask at
// once, and not again within refetchEvery; a fetch that fails is an
// error the caller treats as undecided.
func TestUnknownKidRefetchIsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	fetches, fail := 0, false
	k := &keys{refetchEvery: 10 * time.Second, now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		fetch: func(context.Context) (*jose.JSONWebKeySet, error) {
			mu.Lock()
			defer mu.Unlock()
			fetches++
			if fail {
				return nil, errors.New("API server unreachable")
			}
			return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{KeyID: "known"}}}, nil
		}}
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if key, err := k.lookup(context.Background(), "unknown"); key != nil || err != nil {
				t.Errorf("%v %v", key, err)
			}
		}()
	}
	wg.Wait()
	if fetches != 1 {
		t.Fatalf("%d fetches", fetches)
	}
	if key, _ := k.lookup(context.Background(), "known"); key == nil {
		t.Fatal("known kid not found")
	}
	mu.Lock()
	now, fail = now.Add(11*time.Second), true
	mu.Unlock()
	if _, err := k.lookup(context.Background(), "unknown"); err == nil {
		t.Fatal("a failed fetch is not reported")
	}
	if fetches != 2 {
		t.Fatalf("%d fetches", fetches)
	}
}
