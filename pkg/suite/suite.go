// Package suite names podkey's two cryptographic suites and implements the
// software half of each: hashing, HMAC, HKDF-style expansion, authenticated
// encryption and signing keys.
//
//	gm:   SM2 signatures and certificates, SM3, HMAC-SM3, SM4-GCM
//	intl: ECDSA P-256, SHA-256, HMAC-SHA256, AES-256-GCM
//
// Root keys live in the HSM (package keyring); this package works on the
// bytes and keys keyring hands it.
package suite

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"hash"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/sm4"
	"github.com/emmansun/gmsm/smx509"
)

// Name is a suite name as written in SecretProviderClass objects and the API.
type Name string

const (
	GM   Name = "gm"
	Intl Name = "intl"
)

// All lists the suites in a stable order.
var All = []Name{GM, Intl}

// Parse checks a suite name. The empty string selects Intl.
func Parse(s string) (Name, error) {
	switch Name(s) {
	case GM:
		return GM, nil
	case Intl, "":
		return Intl, nil
	}
	return "", fmt.Errorf("unknown suite %q (want gm or intl)", s)
}

// Hash returns the suite's hash constructor.
func (n Name) Hash() func() hash.Hash {
	if n == GM {
		return sm3.New
	}
	return sha256.New
}

// MAC computes HMAC-SM3 or HMAC-SHA256 in software.
func (n Name) MAC(key, data []byte) []byte {
	m := hmac.New(n.Hash(), key)
	m.Write(data)
	return m.Sum(nil)
}

// AEADKeySize is the key size of the suite's AEAD: 16 for SM4, 32 for AES-256.
func (n Name) AEADKeySize() int {
	if n == GM {
		return 16
	}
	return 32
}

// NewAEAD returns SM4-GCM or AES-256-GCM.
func (n Name) NewAEAD(key []byte) (cipher.AEAD, error) {
	var (
		b   cipher.Block
		err error
	)
	if n == GM {
		b, err = sm4.NewCipher(key)
	} else {
		if len(key) != 32 {
			return nil, fmt.Errorf("AES-256-GCM needs a 32-byte key, got %d", len(key))
		}
		b, err = aes.NewCipher(key)
	}
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// GenerateKey creates a signing key pair in memory: SM2 or ECDSA P-256.
func (n Name) GenerateKey() (crypto.Signer, error) {
	if n == GM {
		return sm2.GenerateKey(rand.Reader)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// Expand derives length bytes from a pseudorandom key with HKDF-Expand
// (RFC 5869) over the suite's hash; prf computes HMAC under that key, so the
// key itself may stay inside an HSM.
func Expand(prf func(data []byte) ([]byte, error), info []byte, length int) ([]byte, error) {
	if length <= 0 || length > 255*32 {
		return nil, fmt.Errorf("derived key length %d out of range", length)
	}
	var out, prev []byte
	for i := byte(1); len(out) < length; i++ {
		msg := make([]byte, 0, len(prev)+len(info)+1)
		msg = append(append(append(msg, prev...), info...), i)
		t, err := prf(msg)
		if err != nil {
			return nil, err
		}
		out = append(out, t...)
		prev = t
	}
	return out[:length], nil
}

// MatchesKey reports whether a public key belongs to the suite: SM2 keys
// for gm, P-256 ECDSA keys for intl.
func (n Name) MatchesKey(pub crypto.PublicKey) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return false
	}
	if n == GM {
		return k.Curve == sm2.P256()
	}
	return k.Curve == elliptic.P256()
}

// SignatureAlgorithm is the X.509 signature algorithm of the suite.
func (n Name) SignatureAlgorithm() x509.SignatureAlgorithm {
	if n == GM {
		return x509.SignatureAlgorithm(smx509.SM2WithSM3)
	}
	return x509.ECDSAWithSHA256
}
