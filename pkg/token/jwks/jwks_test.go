package jwks

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/sm2"

	"github.com/podkey/podkey/pkg/suite"
)

func TestKeysRoundTripAndFind(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	gm, _ := sm2.GenerateKey(rand.Reader)
	ki, err := NewKey(suite.Intl, "podkey-jwt-intl-g2", &p256.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	kg, err := NewKey(suite.GM, "podkey-jwt-gm-g1", &gm.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if kg.Crv != "SM2" || kg.Alg != "SM2SM3" || ki.Crv != "P-256" || ki.Alg != "ES256" {
		t.Fatalf("names: %+v %+v", ki, kg)
	}
	b, err := Set{Keys: []Key{ki, kg}}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	set, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for kid, want := range map[string]*ecdsa.PublicKey{"podkey-jwt-intl-g2": &p256.PublicKey, "podkey-jwt-gm-g1": &gm.PublicKey} {
		_, pub, err := set.Find(kid)
		if err != nil || !pub.Equal(want) {
			t.Fatalf("%s: %v", kid, err)
		}
	}
	if _, _, err := set.Find("podkey-jwt-intl-g9"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown kid: %v", err)
	}
	// A P-256 key cannot be published as an SM2 key, nor the reverse.
	if _, err := NewKey(suite.GM, "x", &p256.PublicKey); err == nil {
		t.Fatal("a P-256 key published as SM2")
	}
}

func TestHostileKeysRefused(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := NewKey(suite.Intl, "k", &p256.PublicKey)
	for name, mutate := range map[string]func(*Key){
		"alg none":        func(k *Key) { k.Alg = "none" },
		"HMAC":            func(k *Key) { k.Kty, k.Alg = "oct", "HS256" },
		"curve and alg":   func(k *Key) { k.Crv = "SM2" },
		"short x":         func(k *Key) { k.X = k.X[:20] },
		"off the curve":   func(k *Key) { k.Y = k.X },
		"encryption use":  func(k *Key) { k.Use = "enc" },
		"padded encoding": func(k *Key) { k.X += "=" },
	} {
		k := good
		mutate(&k)
		if _, _, err := k.Public(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, doc := range []string{``, `{}`, `{"keys": 1}`, `[]`, `{"keys": [` + strings.Repeat(`{},`, 3) + `{}]}x`} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("%q parsed", doc)
		}
	}
}

func FuzzParse(f *testing.F) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k, _ := NewKey(suite.Intl, "podkey-jwt-intl-g1", &p256.PublicKey)
	b, _ := Set{Keys: []Key{k}}.Marshal()
	f.Add(b)
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"SM2","x":"","y":"","alg":"SM2SM3","kid":"a"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse(data)
		if err != nil {
			return
		}
		for _, k := range set.Keys {
			st, pub, err := k.Public()
			if err != nil {
				continue
			}
			// What is accepted is a point on its suite's curve that
			// publishes back to the same key.
			again, err := NewKey(st, k.Kid, pub)
			if err != nil || again.X != k.X || again.Y != k.Y {
				t.Fatalf("accepted %+v, republished %+v (%v)", k, again, err)
			}
		}
	})
}
