// Package credential mints the credentials of every kind for one pod's
// identity, from the root keys in package keyring: API keys, certificates,
// derived keys, tokens and enrolled secrets. It holds no state of its own
// beyond the keyring and the store of enrolled secrets.
package credential

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/podkey/podkey/internal/keyd/dbcred"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
)

// Issued is one minted credential. Exactly the fields of its kind are set;
// the secret fields must be zeroed by whoever drops them.
type Issued struct {
	Name       string
	Kind       object.Kind
	Suite      suite.Name
	Generation int
	IssuedAt   time.Time
	Expiry     time.Time
	RenewAt    time.Time

	AccessKeyID string // apiKey
	SecretKey   []byte // apiKey
	CertPEM     []byte // certificate: leaf (chain)
	CABundlePEM []byte // certificate: roots of the suite, every live generation
	Key         []byte // derivedKey
	Token       string // token (JWT)
	Value       []byte // secret
	// tlcp: the GM/T 0092 CSR response (both certificates, the encryption
	// key enveloped to the node's signing key) and the escrow's serial.
	CSRResponse  []byte
	EscrowSerial string
	// database: the pod's own login (Login.Password is secret).
	Login *dbcred.Login
}

// Zero overwrites the secret fields.
func (c *Issued) Zero() {
	clear(c.SecretKey)
	clear(c.Key)
	clear(c.Value)
	if c.Login != nil {
		clear(c.Login.Password)
	}
	c.Token = ""
}

// ErrInvalid marks a request the caller must fix (bad CSR, oversized value).
var ErrInvalid = errors.New("invalid request")

// ErrNotEnrolled is returned for a secret object that was never enrolled.
var ErrNotEnrolled = errors.New("secret not enrolled")

// RenewFraction is the part of a credential's life after which it should
// be renewed (object.RenewFraction).
const RenewFraction = object.RenewFraction

// Options configure an Issuer. Every field says its default.
type Options struct {
	// TrustDomain names certificate URIs spiffe://<TrustDomain>/ns/../sa/..
	// Default "cluster.local".
	TrustDomain string
	// Issuer is the JWT "iss". Default "podkey".
	Issuer string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Databases issues database objects. Default: none (they are refused).
	Databases *dbcred.Manager
}

// Issuer mints credentials.
type Issuer struct {
	kr   *keyring.Keyring
	st   store.Store
	opts Options
}

// NewIssuer builds an Issuer over a keyring and the store of enrolled secrets.
func NewIssuer(kr *keyring.Keyring, st store.Store, opts Options) *Issuer {
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.Issuer == "" {
		opts.Issuer = "podkey"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Issuer{kr: kr, st: st, opts: opts}
}

// Now is the issuer's clock.
func (is *Issuer) Now() time.Time { return is.opts.Now() }

// Issue mints one object for id. spec must have been normalized; csr is the
// certificate request for certificate objects.
func (is *Issuer) Issue(ctx context.Context, id pod.Identity, spec object.Spec, csr []byte) (Issued, error) {
	now := is.opts.Now().UTC().Truncate(time.Second)
	c := Issued{
		Name: spec.Name, Kind: spec.Kind, Suite: spec.Suite, IssuedAt: now,
		Expiry: now.Add(spec.TTL),
	}
	var err error
	switch spec.Kind {
	case object.APIKey:
		err = is.apiKey(ctx, id, spec, &c)
	case object.Certificate:
		err = is.certificate(id, spec, csr, &c)
	case object.TLCP:
		err = is.tlcp(ctx, id, spec, csr, &c)
	case object.DerivedKey:
		err = is.derivedKey(ctx, id, spec, &c)
	case object.Token:
		err = is.token(id, spec, &c)
	case object.Secret:
		err = is.secret(ctx, id, spec, &c)
	case object.Database:
		err = is.database(ctx, id, spec, &c)
	default:
		err = fmt.Errorf("%w: unknown kind %q", ErrInvalid, spec.Kind)
	}
	if err != nil {
		c.Zero()
		return Issued{}, fmt.Errorf("object %q: %w", spec.Name, err)
	}
	c.RenewAt = c.IssuedAt.Add(time.Duration(float64(c.Expiry.Sub(c.IssuedAt)) * RenewFraction))
	return c, nil
}
