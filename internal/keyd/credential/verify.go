package credential

import (
	"context"
	"errors"
	"fmt"

	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
)

// Verification refusals, in the order they are checked.
var (
	ErrExpired      = errors.New("access key expired")
	ErrUnknownGen   = errors.New("access key generation is no longer valid")
	ErrRevoked      = errors.New("access key revoked (its pod was deleted, or its credentials revoked after this key was issued)")
	ErrBadSignature = errors.New("signature does not match")
)

// MaxStringToSign bounds the signed input keyd accepts.
const MaxStringToSign = 64 << 10

// VerifyAPIKey checks an API-key signature over stringToSign and returns
// the id it authenticates. The secret is recomputed in the HSM (or locked
// memory) and never leaves this function.
func (is *Issuer) VerifyAPIKey(ctx context.Context, keyID string, stringToSign, sig []byte) (accesskey.ID, error) {
	id, payload, tag, err := accesskey.Parse(keyID)
	if err != nil {
		return accesskey.ID{}, err
	}
	if len(stringToSign) > MaxStringToSign {
		return id, fmt.Errorf("%w: string to sign larger than %d bytes", ErrInvalid, MaxStringToSign)
	}
	if !is.opts.Now().Before(id.Expiry) {
		return id, ErrExpired
	}
	secret, err := is.kr.MAC(ctx, id.Suite, id.Generation, accesskey.SecretInput(payload))
	if errors.Is(err, keyring.ErrNoGeneration) {
		// Unknown generation: indistinguishable from a forgery to the caller
		// unless the tag would match, which it cannot without the key.
		return id, accesskey.ErrForged
	}
	if err != nil {
		return id, err
	}
	defer clear(secret)
	if err := accesskey.CheckTag(id.Suite, secret, tag); err != nil {
		return id, err
	}
	// A revocation refuses the keys issued until it; a version 1 id has no
	// issue time and counts as issued before any revocation.
	revokedAt, err := is.st.RevokedAt(ctx, id.Namespace, id.ServiceAccount, id.PodUID, is.opts.Now())
	if err != nil {
		return id, err
	}
	if !revokedAt.IsZero() && !id.IssuedAt.After(revokedAt) {
		return id, ErrRevoked
	}
	if !accesskey.CheckSignature(id.Suite, secret, stringToSign, sig) {
		return id, ErrBadSignature
	}
	return id, nil
}
