package localtoken

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// keys are the issuer's public keys by kid: the API server's JWK Set
// (/openid/v1/jwks, the document its OIDC discovery names), or a file.
// An unknown kid triggers one refetch at a time, and at most one per
// refetchEvery: a flood of tokens with made-up kids costs the API server
// nothing more. Lookups of known kids never wait for a fetch.
type keys struct {
	fetch        func(ctx context.Context) (*jose.JSONWebKeySet, error)
	refetchEvery time.Duration
	now          func() time.Time

	fetchMu sync.Mutex   // one fetch at a time; lookups of an unknown kid wait for it
	mu      sync.RWMutex // guards what follows
	set     *jose.JSONWebKeySet
	fetched time.Time
	fetches int
}

// lookup returns the key kid names, refetching the set once if it is
// unknown and the last fetch is old enough.
func (k *keys) lookup(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	if key := k.known(kid); key != nil {
		return key, nil
	}
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	if key := k.known(kid); key != nil { // fetched while this caller waited
		return key, nil
	}
	k.mu.RLock()
	recent := k.fetches > 0 && k.now().Sub(k.fetched) < k.refetchEvery
	k.mu.RUnlock()
	if recent {
		return nil, nil
	}
	if err := k.refresh(ctx); err != nil {
		return nil, err
	}
	return k.known(kid), nil
}

func (k *keys) known(kid string) *jose.JSONWebKey {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return find(k.set, kid)
}

// refresh fetches the set; the caller holds fetchMu (or is alone).
func (k *keys) refresh(ctx context.Context) error {
	k.mu.Lock()
	k.fetched = k.now()
	k.fetches++
	k.mu.Unlock()
	set, err := k.fetch(ctx)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.set = set
	k.mu.Unlock()
	return nil
}

func find(set *jose.JSONWebKeySet, kid string) *jose.JSONWebKey {
	if set == nil {
		return nil
	}
	for i := range set.Keys {
		if set.Keys[i].KeyID == kid && set.Keys[i].Use != "enc" {
			return &set.Keys[i]
		}
	}
	return nil
}

// apiServer fetches the issuer's keys and discovery document through the
// API server (keyd's own credentials; the API server lets every service
// account read them by default, system:service-account-issuer-discovery).
type apiServer struct {
	client  rest.Interface
	timeout time.Duration
}

func newAPIServer(cs kubernetes.Interface) *apiServer {
	return &apiServer{client: cs.Discovery().RESTClient(), timeout: 5 * time.Second}
}

func (a *apiServer) get(ctx context.Context, path string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	b, err := a.client.Get().AbsPath(path).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("reading %s from the API server: %w", path, err)
	}
	if err := json.Unmarshal(b, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// issuer is the issuer the API server's discovery document names.
func (a *apiServer) issuer(ctx context.Context) (string, error) {
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := a.get(ctx, "/.well-known/openid-configuration", &doc); err != nil {
		return "", err
	}
	if doc.Issuer == "" {
		return "", errors.New("the API server's discovery document names no issuer")
	}
	return doc.Issuer, nil
}

func (a *apiServer) jwks(ctx context.Context) (*jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	if err := a.get(ctx, "/openid/v1/jwks", &set); err != nil {
		return nil, err
	}
	return &set, nil
}

// fileKeys reads a JWK Set, or PEM public keys as the API server's
// --service-account-key-file takes them, with kids computed as the API
// server computes them (base64url of the SHA-256 of the key's DER).
func fileKeys(path string) (*jose.JSONWebKeySet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set jose.JSONWebKeySet
	if json.Unmarshal(b, &set) == nil && len(set.Keys) > 0 {
		return &set, nil
	}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		var pub crypto.PublicKey
		switch blk.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(blk.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(blk.Bytes); err == nil {
				pub = c.PublicKey
			}
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		kid, err := KeyID(pub)
		if err != nil {
			return nil, err
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: pub, KeyID: kid, Use: "sig"})
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("%s: no JWK Set and no PEM public key", path)
	}
	return &set, nil
}

// KeyID is the kid the API server gives a signing key.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}
