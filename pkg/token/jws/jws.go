// Package jws signs and verifies podkey's tokens as compact JWS (RFC
// 7515): ES256 for suite intl, SM2SM3 for suite gm. It is small on
// purpose: token receivers import it through pkg/token/tokenverify.
package jws

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/emmansun/gmsm/sm2"

	"github.com/podkey/podkey/pkg/suite"
)

// JWT algorithms: ES256 (RFC 7518) for intl; "SM2SM3" for gm, an SM2
// signature (GB/T 32918, default user id) over the JWS signing input with
// SM3, encoded like ES256 as r||s, 32 bytes each. JOSE registers no SM
// algorithm; the name follows common practice in Chinese deployments.
const (
	AlgES256  = "ES256"
	AlgSM2SM3 = "SM2SM3"
)

// Alg is the JWS algorithm of a suite.
func Alg(s suite.Name) string {
	if s == suite.GM {
		return AlgSM2SM3
	}
	return AlgES256
}

var b64 = base64.RawURLEncoding

// Sign signs claims (JSON) as a compact JWS.
func Sign(s suite.Name, signer crypto.Signer, kid string, claims []byte) (string, error) {
	header, _ := json.Marshal(map[string]string{"alg": Alg(s), "typ": "JWT", "kid": kid})
	return signInput(s, signer, b64.EncodeToString(header)+"."+b64.EncodeToString(claims))
}

// signInput signs a JWS signing input (header.claims, encoded) and
// returns the compact JWS.
func signInput(s suite.Name, signer crypto.Signer, input string) (string, error) {
	var (
		der []byte
		err error
	)
	if s == suite.GM {
		der, err = signer.Sign(rand.Reader, []byte(input), sm2.DefaultSM2SignerOpts)
	} else {
		d := sha256.Sum256([]byte(input))
		der, err = signer.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &rs); err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	sig := make([]byte, 64)
	rs.R.FillBytes(sig[:32])
	rs.S.FillBytes(sig[32:])
	return input + "." + b64.EncodeToString(sig), nil
}

// Verify checks a compact JWS against a public key and returns its
// claims. It checks only the signature and algorithm; callers check claims.
func Verify(s suite.Name, pub *ecdsa.PublicKey, token string) ([]byte, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("token: not a compact JWS")
	}
	hdr, err := DecodeSegment(parts[0])
	if err != nil {
		return nil, errors.New("token: bad header encoding")
	}
	if err := CheckHeader(hdr, Alg(s)); err != nil {
		return nil, err
	}
	sig, err := DecodeSegment(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, errors.New("token: bad signature encoding")
	}
	r, sv := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	der, _ := asn1.Marshal(struct{ R, S *big.Int }{r, sv})
	input := []byte(parts[0] + "." + parts[1])
	ok := false
	if s == suite.GM {
		ok = sm2.VerifyASN1WithSM2(pub, nil, input, der)
	} else {
		d := sha256.Sum256(input)
		ok = ecdsa.VerifyASN1(pub, d[:], der)
	}
	if !ok {
		return nil, errors.New("token: signature does not verify")
	}
	return DecodeSegment(parts[1])
}

// DecodeSegment decodes one segment of a compact JWS: unpadded base64url
// in its one canonical spelling. Go's decoder also takes a last character
// whose unused low bits are set, and skips line breaks; both would give
// one token many spellings, so both are refused.
func DecodeSegment(seg string) ([]byte, error) {
	raw, err := b64.Strict().DecodeString(seg)
	if err != nil {
		return nil, err
	}
	if b64.EncodeToString(raw) != seg {
		return nil, errors.New("not canonical base64url")
	}
	return raw, nil
}

// CheckHeader checks a JWS header: the algorithm is alg, and it asks for
// no extension (RFC 7515 §4.1.11: a receiver must refuse a "crit" it does
// not understand, and podkey understands none).
func CheckHeader(hdr []byte, alg string) error {
	var h struct {
		Alg  string
		Crit json.RawMessage
	}
	if json.Unmarshal(hdr, &h) != nil || h.Alg != alg {
		return errors.New("token: unexpected algorithm")
	}
	if h.Crit != nil {
		return errors.New("token: critical header extensions are not supported")
	}
	return nil
}
