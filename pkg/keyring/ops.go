package keyring

import (
	"context"
	"crypto"
	"fmt"

	"github.com/podkey/podkey/pkg/ca"
	"github.com/podkey/podkey/pkg/hsm"
	"github.com/podkey/podkey/pkg/suite"
)

// MAC computes the suite's HMAC under generation gen of the access-key MAC
// key: inside the HSM for intl (and for gm where the token has HMAC-SM3),
// otherwise HMAC-SM3 in locked memory.
func (kr *Keyring) MAC(ctx context.Context, s suite.Name, gen int, data []byte) ([]byte, error) {
	return kr.hmac(ctx, MAC, s, gen, data)
}

func (kr *Keyring) hmac(ctx context.Context, p Purpose, s suite.Name, gen int, data []byte) ([]byte, error) {
	k, err := kr.get(p, s, gen)
	if err != nil {
		return nil, err
	}
	switch {
	case k.native && s == suite.GM:
		return kr.tok.Sign(ctx, kr.tok.Mechanisms().SM3HMAC, hsm.SecretKey, k.label, data)
	case k.native:
		return kr.tok.HMACSHA256(ctx, k.label, data)
	default:
		return s.MAC(k.sym.Bytes(), data), nil
	}
}

// Derive expands length bytes for info under generation gen of the
// derivation master (HKDF-Expand with the suite's HMAC as PRF).
func (kr *Keyring) Derive(ctx context.Context, s suite.Name, gen int, info []byte, length int) ([]byte, error) {
	return suite.Expand(func(data []byte) ([]byte, error) {
		return kr.hmac(ctx, Derive, s, gen, data)
	}, info, length)
}

// CA returns generation gen of the suite's certificate authority.
func (kr *Keyring) CA(s suite.Name, gen int) (*ca.CA, error) {
	k, err := kr.get(CA, s, gen)
	if err != nil {
		return nil, err
	}
	return k.ca, nil
}

// CABundle is every loaded CA certificate of the suite, PEM, newest first,
// so relying parties trust certificates of every live generation.
func (kr *Keyring) CABundle(s suite.Name) []byte {
	var out []byte
	gens := kr.Generations(CA, s)
	for i := len(gens) - 1; i >= 0; i-- {
		if c, err := kr.CA(s, gens[i]); err == nil {
			out = append(out, c.PEM()...)
		}
	}
	return out
}

// TokenSigner returns generation gen of the suite's token-signing key.
func (kr *Keyring) TokenSigner(s suite.Name, gen int) (crypto.Signer, error) {
	k, err := kr.get(JWT, s, gen)
	if err != nil {
		return nil, err
	}
	return k.signer, nil
}

// Wrap encrypts a value under the HSM key-encryption key's current
// generation, bound to aad.
func (kr *Keyring) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	return kr.wrap(ctx, plaintext, aad)
}

// Unwrap reverses Wrap, under whichever generation wrapped the value; a
// blob moved to another aad fails.
func (kr *Keyring) Unwrap(ctx context.Context, blob, aad []byte) ([]byte, error) {
	pt, err := unwrapAny(ctx, kr.tok, blob, aad)
	if err != nil {
		return nil, fmt.Errorf("keyring: unwrap: %w", err)
	}
	return pt, nil
}

// AuditMAC computes HMAC-SHA256 under the audit chain key in the HSM.
func (kr *Keyring) AuditMAC(ctx context.Context, data []byte) ([]byte, error) {
	return kr.tok.HMACSHA256(ctx, AuditLabel, data)
}

// TokenAuditMAC is AuditMAC on a token opened without a keyring, for
// checking an audit chain offline.
func TokenAuditMAC(tok *hsm.Token) func(ctx context.Context, data []byte) ([]byte, error) {
	return func(ctx context.Context, data []byte) ([]byte, error) { return tok.HMACSHA256(ctx, AuditLabel, data) }
}
