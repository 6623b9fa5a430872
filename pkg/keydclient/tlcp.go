package keydclient

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// TLCPPair is an opened TLCP pair, PEM: what the node writes.
type TLCPPair struct {
	SignCertPEM, EncCertPEM, EncKeyPEM []byte
}

// Zero overwrites the encryption key.
func (p *TLCPPair) Zero() { clear(p.EncKeyPEM) }

// OpenTLCP opens keyd's GM/T 0092 CSR response with the signing key the
// node generated: the encryption key comes out of its envelope, and both
// certificates are checked before anything is written (each signed by a
// CA of the bundle, the signing one for signKey, the encryption one for
// the enveloped key, and each with its TLCP key usage).
func OpenTLCP(resp, caBundlePEM []byte, signKey crypto.Signer) (TLCPPair, error) {
	sk, ok := signKey.(*sm2.PrivateKey)
	if !ok {
		return TLCPPair{}, errors.New("tlcp: the signing key is not an SM2 key")
	}
	r, err := smx509.ParseCSRResponse(sk, resp)
	if err != nil {
		return TLCPPair{}, fmt.Errorf("tlcp: keyd's CSR response: %w", err)
	}
	if r.EncryptPrivateKey == nil || len(r.EncryptCerts) != 1 || len(r.SignCerts) != 1 {
		return TLCPPair{}, errors.New("tlcp: keyd's CSR response lacks the encryption key or a certificate")
	}
	defer r.EncryptPrivateKey.D.SetInt64(0)
	certPEM := func(c *smx509.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	p := TLCPPair{SignCertPEM: certPEM(r.SignCerts[0]), EncCertPEM: certPEM(r.EncryptCerts[0])}
	if err := CheckCertificate(p.SignCertPEM, caBundlePEM, signKey); err != nil {
		return TLCPPair{}, fmt.Errorf("tlcp: signing certificate: %w", err)
	}
	if err := CheckCertificate(p.EncCertPEM, caBundlePEM, r.EncryptPrivateKey); err != nil {
		return TLCPPair{}, fmt.Errorf("tlcp: encryption certificate: %w", err)
	}
	if u := r.SignCerts[0].KeyUsage; u&x509.KeyUsageDigitalSignature == 0 || u&(x509.KeyUsageKeyEncipherment|x509.KeyUsageDataEncipherment) != 0 {
		return TLCPPair{}, errors.New("tlcp: the signing certificate's key usage is not a signing one")
	}
	if u := r.EncryptCerts[0].KeyUsage; u&x509.KeyUsageKeyEncipherment == 0 || u&x509.KeyUsageDigitalSignature != 0 {
		return TLCPPair{}, errors.New("tlcp: the encryption certificate's key usage is not an encryption one")
	}
	der, err := smx509.MarshalPKCS8PrivateKey(r.EncryptPrivateKey)
	if err != nil {
		return TLCPPair{}, err
	}
	p.EncKeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	return p, nil
}
