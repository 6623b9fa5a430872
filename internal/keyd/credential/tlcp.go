package credential

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
	"github.com/podkey/podkey/pkg/suite"
)

// keyd is the key management centre (KMC) of TLCP pairs: the node makes
// the signing key and sends its CSR; keyd makes the encryption key pair,
// has the CA sign both certificates, escrows the encryption private key
// (wrapped under the HSM KEK, before anything is returned), and delivers
// it enveloped to the signing key in a GM/T 0092 CSR response.
//
// Escrows are kept as enrolled secrets of the reserved namespace
// EscrowNamespace (no Kubernetes namespace can be named so, and
// enrollment refuses it), named by the encryption certificate's serial:
// they are stored, backed up, migrated and re-wrapped on a KEK rotation
// with the other secrets. The wrapped value binds the key to its pod.

// EscrowNamespace holds TLCP encryption key escrows.
const EscrowNamespace = "podkey:escrow"

// Escrowed is an escrowed encryption key and whose it is: the plaintext
// that is wrapped.
type Escrowed struct {
	Serial         string    `json:"serial"` // the encryption certificate's, hex
	Namespace      string    `json:"namespace"`
	ServiceAccount string    `json:"serviceAccount"`
	Pod            string    `json:"pod"`
	PodUID         string    `json:"podUID"`
	NotAfter       time.Time `json:"notAfter"` // the certificate's
	Key            []byte    `json:"key"`      // PKCS#8 DER
}

func (is *Issuer) tlcp(ctx context.Context, id pod.Identity, spec object.Spec, csr []byte, c *Issued) error {
	pub, err := ca.ParseCSR(suite.GM, csr)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	c.Generation = is.kr.Current(keyring.CA, suite.GM)
	authority, err := is.kr.CA(suite.GM, c.Generation)
	if err != nil {
		return err
	}
	leaf := func(usage []byte) ca.Leaf {
		return ca.Leaf{
			CommonName: "system:serviceaccount:" + id.Namespace + ":" + id.ServiceAccount,
			URIs:       []*url.URL{is.SPIFFEID(id.Namespace, id.ServiceAccount), {Scheme: "urn", Opaque: "podkey:pod:" + id.UID}},
			TTL:        spec.TTL, Server: true, KeyUsage: usage,
		}
	}
	signDER, signTmpl, err := authority.Issue(pub, leaf(ca.KeyUsageTLCPSign))
	if err != nil {
		return err
	}
	encKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	defer encKey.D.SetInt64(0)
	encDER, encTmpl, err := authority.Issue(&encKey.PublicKey, leaf(ca.KeyUsageTLCPEnc))
	if err != nil {
		return err
	}
	signCert, err := smx509.ParseCertificate(signDER)
	if err != nil {
		return err
	}
	encCert, err := smx509.ParseCertificate(encDER)
	if err != nil {
		return err
	}
	if err := is.escrow(ctx, id, encKey, encTmpl.SerialNumber.Bytes(), encTmpl.NotAfter); err != nil {
		return fmt.Errorf("escrow: %w", err)
	}
	resp, err := smx509.MarshalCSRResponse([]*smx509.Certificate{signCert}, encKey, []*smx509.Certificate{encCert})
	if err != nil {
		return err
	}
	c.CSRResponse, c.CABundlePEM = resp, is.kr.CABundle(suite.GM)
	c.EscrowSerial = hex.EncodeToString(encTmpl.SerialNumber.Bytes())
	c.Expiry = signTmpl.NotAfter.UTC()
	if encTmpl.NotAfter.Before(c.Expiry) {
		c.Expiry = encTmpl.NotAfter.UTC()
	}
	return nil
}

// escrow stores key wrapped under the KEK, durably, before it is handed out.
func (is *Issuer) escrow(ctx context.Context, id pod.Identity, key *sm2.PrivateKey, serial []byte, notAfter time.Time) error {
	der, err := smx509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	defer clear(der)
	e := Escrowed{Serial: hex.EncodeToString(serial), Namespace: id.Namespace, ServiceAccount: id.ServiceAccount,
		Pod: id.Name, PodUID: id.UID, NotAfter: notAfter.UTC(), Key: der}
	plain, err := json.Marshal(e)
	if err != nil {
		return err
	}
	defer clear(plain)
	wrapped, err := is.kr.Wrap(ctx, plain, keyring.SecretAAD(EscrowNamespace, e.Serial))
	if err != nil {
		return err
	}
	return is.st.PutSecret(ctx, store.Secret{Namespace: EscrowNamespace, Name: e.Serial, Wrapped: wrapped,
		Size: len(der), Created: is.opts.Now().UTC(), Version: 1})
}

// Recover returns the escrowed encryption key of the certificate with
// serial (hex). keyd calls it only for an approved request.
func (is *Issuer) Recover(ctx context.Context, serial string) (Escrowed, error) {
	rec, err := is.st.Secret(ctx, EscrowNamespace, serial)
	if err != nil {
		return Escrowed{}, err
	}
	plain, err := is.kr.Unwrap(ctx, rec.Wrapped, keyring.SecretAAD(EscrowNamespace, serial))
	if err != nil {
		return Escrowed{}, err
	}
	defer clear(plain)
	var e Escrowed
	if err := json.Unmarshal(plain, &e); err != nil || e.Serial != serial {
		return Escrowed{}, fmt.Errorf("escrow %s is unreadable", serial)
	}
	return e, nil
}
