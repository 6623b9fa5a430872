// Package jwks publishes and reads the public keys of podkey's token
// signing keys as a JSON Web Key Set (RFC 7517), so that a token's
// receiver verifies it without asking keyd.
//
// Each live generation of each suite's token key is one JWK, its "kid" the
// one in the tokens it signs (podkey-jwt-<suite>-g<N>). An intl key is an
// EC key on P-256 used with ES256 (RFC 7518). A gm key is an SM2 key,
// written the same way with "crv": "SM2" (the curve of GB/T 32918.5; x
// and y are its affine coordinates, 32 bytes each, base64url) and "alg":
// "SM2SM3": JOSE registers no SM curve or algorithm, and these names are
// the ones common in Chinese deployments.
package jwks

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"

	"github.com/emmansun/gmsm/sm2"

	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jws"
)

// WellKnownPath is where keyd serves the set over HTTPS (--jwks-listen).
const WellKnownPath = "/.well-known/jwks.json"

// Curve and algorithm names.
const (
	CrvP256 = "P-256"
	CrvSM2  = "SM2"
)

// Key is one JWK of a token-signing key.
type Key struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	Kid string `json:"kid"`
}

// Set is a JWK Set.
type Set struct {
	Keys []Key `json:"keys"`
}

var b64 = base64.RawURLEncoding

// NewKey describes the public key of a suite's token-signing key.
func NewKey(s suite.Name, kid string, pub *ecdsa.PublicKey) (Key, error) {
	crv, alg := CrvP256, jws.AlgES256
	if s == suite.GM {
		crv, alg = CrvSM2, jws.AlgSM2SM3
	}
	if pub.Curve != curve(crv) {
		return Key{}, fmt.Errorf("jwks: %s key %s is not on %s", s, kid, crv)
	}
	x, y := make([]byte, 32), make([]byte, 32)
	pub.X.FillBytes(x)
	pub.Y.FillBytes(y)
	return Key{Kty: "EC", Crv: crv, X: b64.EncodeToString(x), Y: b64.EncodeToString(y), Alg: alg, Use: "sig", Kid: kid}, nil
}

func curve(crv string) elliptic.Curve {
	switch crv {
	case CrvP256:
		return elliptic.P256()
	case CrvSM2:
		return sm2.P256()
	}
	return nil
}

// Public returns the key's suite and public key, refusing anything but a
// podkey signing key: an EC key on P-256 for ES256 or on SM2 for SM2SM3,
// whose point lies on its curve.
func (k Key) Public() (suite.Name, *ecdsa.PublicKey, error) {
	var s suite.Name
	switch {
	case k.Kty == "EC" && k.Crv == CrvP256 && k.Alg == jws.AlgES256:
		s = suite.Intl
	case k.Kty == "EC" && k.Crv == CrvSM2 && k.Alg == jws.AlgSM2SM3:
		s = suite.GM
	default:
		return "", nil, fmt.Errorf("jwks: key %q: unsupported kty/crv/alg %q/%q/%q", k.Kid, k.Kty, k.Crv, k.Alg)
	}
	if k.Use != "" && k.Use != "sig" {
		return "", nil, fmt.Errorf("jwks: key %q is not for signatures", k.Kid)
	}
	x, errX := b64.Strict().DecodeString(k.X)
	y, errY := b64.Strict().DecodeString(k.Y)
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		return "", nil, fmt.Errorf("jwks: key %q: coordinates are not 32 bytes of base64url", k.Kid)
	}
	c := curve(k.Crv)
	pub := &ecdsa.PublicKey{Curve: c, X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
	if !c.IsOnCurve(pub.X, pub.Y) {
		return "", nil, fmt.Errorf("jwks: key %q: the point is not on %s", k.Kid, k.Crv)
	}
	return s, pub, nil
}

// ErrUnknownKey is returned by Find for a kid the set does not hold.
var ErrUnknownKey = errors.New("jwks: no key with this kid")

// Find returns the key a token's kid names.
func (s Set) Find(kid string) (suite.Name, *ecdsa.PublicKey, error) {
	for _, k := range s.Keys {
		if k.Kid == kid {
			return k.Public()
		}
	}
	return "", nil, fmt.Errorf("%w: %q", ErrUnknownKey, kid)
}

// Parse reads a JWK Set (at most 1 MiB of it is reasonable; the caller
// bounds what it reads).
func Parse(data []byte) (Set, error) {
	var s Set
	if err := json.Unmarshal(data, &s); err != nil {
		return Set{}, fmt.Errorf("jwks: %w", err)
	}
	if s.Keys == nil {
		return Set{}, errors.New(`jwks: no "keys" member`)
	}
	return s, nil
}

// Marshal writes the set as JSON.
func (s Set) Marshal() ([]byte, error) { return json.MarshalIndent(s, "", "  ") }
