package keyring

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"sync"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/hsm"
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
	if errors.Is(err, ErrNoGeneration) && kr.refreshSoon(ctx) == nil {
		k, err = kr.get(p, s, gen)
	}
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

// The audit key has generations too: podkey/audit is generation 1,
// podkey/audit/g<N> generation N. Every generation stays on the token: the
// records it authenticated are verified with it for the log's life.
func auditLabel(gen int) string { return genLabel(AuditLabel, gen) }

// auditGeneration is the newest audit key generation on the token (0: none).
func auditGeneration(ctx context.Context, tok *hsm.Token) (int, error) {
	gens, err := labelGenerations(ctx, tok, AuditLabel)
	if err != nil || len(gens) == 0 {
		return 0, err
	}
	return gens[len(gens)-1], nil
}

// auditSM3Label marks an audit key generation made for HMAC-SM3: a
// public data object beside the key, written before it, so a generation
// is HMAC-SM3 from its first MAC or never.
func auditSM3Label(gen int) string { return auditLabel(gen) + "/hmac-sm3" }

// generateAuditKey creates generation gen of the audit key: an HMAC-SM3
// key when the mechanism table has HMAC-SM3 (the chain of a module with
// SM mechanisms is authenticated with SM3), HMAC-SHA256 otherwise.
func generateAuditKey(ctx context.Context, tok *hsm.Token, gen int) error {
	label := auditLabel(gen)
	if ok, err := tok.Exists(ctx, hsm.SecretKey, label); err != nil || ok {
		if ok {
			err = fmt.Errorf("keyring: %s: %w", label, hsm.ErrObjectExists)
		}
		return err
	}
	if nativeSM3(tok) {
		err := tok.PutData(ctx, auditSM3Label(gen), []byte(audit.AlgSM3), false)
		if err != nil && !errors.Is(err, hsm.ErrObjectExists) {
			return err
		}
	}
	return tok.GenerateHMACKey(ctx, label)
}

// auditKeys are the token's audit key generations (audit.Keys).
type auditKeys struct {
	tok     *hsm.Token
	current func() int
	sm3     *sync.Map // generation -> bool, read once from the token
}

func newAuditKeys(tok *hsm.Token, current func() int) auditKeys {
	return auditKeys{tok: tok, current: current, sm3: &sync.Map{}}
}

// SM3 reports whether generation gen is an HMAC-SM3 key (audit.SM3Keys).
func (k auditKeys) SM3(ctx context.Context, gen int) (bool, error) {
	if v, ok := k.sm3.Load(gen); ok {
		return v.(bool), nil
	}
	ok, err := k.tok.Exists(ctx, hsm.Data, auditSM3Label(gen))
	if err != nil {
		return false, err
	}
	if ok && k.tok.Mechanisms().SM3HMAC == 0 {
		return false, fmt.Errorf("keyring: audit key generation %d is HMAC-SM3 and the mechanism table has no sm3Hmac", gen)
	}
	k.sm3.Store(gen, ok)
	return ok, nil
}

func (k auditKeys) MAC(ctx context.Context, gen int, data []byte) ([]byte, error) {
	sm3, err := k.SM3(ctx, gen)
	if err != nil {
		return nil, err
	}
	if sm3 {
		return k.tok.Sign(ctx, k.tok.Mechanisms().SM3HMAC, hsm.SecretKey, auditLabel(gen), data)
	}
	return k.tok.HMACSHA256(ctx, auditLabel(gen), data)
}

func (k auditKeys) Current() int { return k.current() }

// AuditKeys are the audit key's generations for keyd's log: new batch
// keys come from the newest this keyring created or loaded.
func (kr *Keyring) AuditKeys() audit.Keys {
	return newAuditKeys(kr.tok, func() int {
		kr.mu.RLock()
		defer kr.mu.RUnlock()
		return kr.audit
	})
}

// RotateAudit creates the next generation of the audit key; the log's next
// batch key comes from it. Older generations stay, to verify what they
// authenticated.
func (kr *Keyring) RotateAudit(ctx context.Context) (int, error) {
	gen, err := auditGeneration(ctx, kr.tok)
	if err != nil {
		return 0, err
	}
	gen++
	if err := generateAuditKey(ctx, kr.tok, gen); err != nil {
		return 0, err
	}
	kr.mu.Lock()
	kr.audit = gen
	kr.mu.Unlock()
	return gen, nil
}

// TokenAuditKeys are the audit key's generations on a token opened without
// a keyring, for checking an audit chain offline.
func TokenAuditKeys(tok *hsm.Token) audit.Keys {
	return newAuditKeys(tok, func() int {
		g, err := auditGeneration(context.Background(), tok)
		if err != nil || g == 0 {
			return 1
		}
		return g
	})
}

// Random returns n bytes from the HSM's random number generator.
func (kr *Keyring) Random(ctx context.Context, n int) ([]byte, error) {
	return kr.tok.Random(ctx, n)
}
