package credential

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"

	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
	"github.com/podkey/podkey/pkg/token/jws"
)

func (is *Issuer) apiKey(ctx context.Context, id pod.Identity, spec object.Spec, c *Issued) error {
	c.Generation = is.kr.Current(keyring.MAC, spec.Suite)
	akid := accesskey.ID{
		// The id's issue time is the clock's, not the second c.IssuedAt
		// shows: a revocation refuses exactly the keys issued until it.
		Suite: spec.Suite, Generation: c.Generation, Expiry: c.Expiry, IssuedAt: is.opts.Now().UTC(),
		Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, PodUID: id.UID, Object: spec.Name,
	}
	payload, err := akid.Payload()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	secret, err := is.kr.MAC(ctx, spec.Suite, c.Generation, accesskey.SecretInput(payload))
	if err != nil {
		return err
	}
	c.AccessKeyID = accesskey.Encode(spec.Suite, payload, secret)
	c.SecretKey = secret
	return nil
}

// SPIFFEID is the URI SAN of a workload's certificate.
func (is *Issuer) SPIFFEID(namespace, serviceAccount string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: is.opts.TrustDomain, Path: "/ns/" + namespace + "/sa/" + serviceAccount}
}

func (is *Issuer) certificate(id pod.Identity, spec object.Spec, csr []byte, c *Issued) error {
	pub, err := ca.ParseCSR(spec.Suite, csr)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	c.Generation = is.kr.Current(keyring.CA, spec.Suite)
	authority, err := is.kr.CA(spec.Suite, c.Generation)
	if err != nil {
		return err
	}
	der, tmpl, err := authority.Issue(pub, ca.Leaf{
		CommonName: "system:serviceaccount:" + id.Namespace + ":" + id.ServiceAccount,
		URIs:       []*url.URL{is.SPIFFEID(id.Namespace, id.ServiceAccount), {Scheme: "urn", Opaque: "podkey:pod:" + id.UID}},
		TTL:        spec.TTL,
	})
	if err != nil {
		return err
	}
	c.Expiry = tmpl.NotAfter.UTC()
	c.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	c.CABundlePEM = is.kr.CABundle(spec.Suite)
	return nil
}

// deriveInfo is the HKDF info: length-prefixed so no two contexts collide.
func deriveInfo(id pod.Identity, spec object.Spec) []byte {
	subject := id.UID
	if spec.Scope == object.ScopeServiceAccount {
		subject = id.ServiceAccount
	}
	b := []byte("podkey-derive-v1\x00")
	for _, s := range []string{spec.Scope, id.Namespace, subject, spec.Name} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return binary.AppendUvarint(b, uint64(spec.Length))
}

func (is *Issuer) derivedKey(ctx context.Context, id pod.Identity, spec object.Spec, c *Issued) error {
	c.Generation = is.kr.Current(keyring.Derive, spec.Suite)
	k, err := is.kr.Derive(ctx, spec.Suite, c.Generation, deriveInfo(id, spec), spec.Length)
	if err != nil {
		return err
	}
	c.Key = k
	return nil
}

func (is *Issuer) secret(ctx context.Context, id pod.Identity, spec object.Spec, c *Issued) error {
	rec, err := is.st.Secret(ctx, id.Namespace, spec.Name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: enroll it with 'podkey secret put %s/%s'", ErrNotEnrolled, id.Namespace, spec.Name)
	}
	if err != nil {
		return err
	}
	v, err := is.kr.Unwrap(ctx, rec.Wrapped, keyring.SecretAAD(id.Namespace, spec.Name))
	if err != nil {
		return err
	}
	c.Value, c.Generation = v, rec.Version
	return nil
}

// KeyID is the JWS "kid" of a token-signing key generation.
func KeyID(s suite.Name, gen int) string { return fmt.Sprintf("podkey-jwt-%s-g%d", s, gen) }

func (is *Issuer) token(id pod.Identity, spec object.Spec, c *Issued) error {
	c.Generation = is.kr.Current(keyring.JWT, spec.Suite)
	signer, err := is.kr.TokenSigner(spec.Suite, c.Generation)
	if err != nil {
		return err
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return err
	}
	claims := map[string]any{
		"iss": is.opts.Issuer,
		"sub": "system:serviceaccount:" + id.Namespace + ":" + id.ServiceAccount,
		"aud": spec.Audience,
		"iat": c.IssuedAt.Unix(),
		"nbf": c.IssuedAt.Unix(),
		"exp": c.Expiry.Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti),
		"podkey": map[string]string{
			"namespace": id.Namespace, "serviceAccount": id.ServiceAccount,
			"pod": id.Name, "podUID": id.UID, "object": spec.Name,
		},
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return err
	}
	c.Token, err = jws.Sign(spec.Suite, signer, KeyID(spec.Suite, c.Generation), body)
	return err
}

// database answers with the pod's lease of the connection the object
// names: the same login on every publish until its renewal time. An
// operator's renewal or a revocation of the pod since its password was
// set gives it a new password.
func (is *Issuer) database(ctx context.Context, id pod.Identity, spec object.Spec, c *Issued) error {
	if is.opts.Databases == nil {
		return fmt.Errorf("%w: this keyd issues no database logins", ErrInvalid)
	}
	cutoff, err := is.st.RevokedAt(ctx, id.Namespace, id.ServiceAccount, id.UID, is.opts.Now())
	if err != nil {
		return err
	}
	l, err := is.opts.Databases.Issue(ctx, id, spec.Name, spec.TTL, cutoff)
	if err != nil {
		return err
	}
	c.Login, c.IssuedAt, c.Expiry = &l, l.Since, l.Expiry
	return nil
}
