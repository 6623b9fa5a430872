// Package ca is podkey's certificate authority: a root per suite whose
// signing key is held by the HSM (intl) or wrapped by it (gm), and the
// issuance of leaf certificates from certificate requests whose keys were
// generated elsewhere and never reach the CA.
package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/pkg/suite"
)

// CA signs certificates for one suite and one key generation.
type CA struct {
	Suite      suite.Name
	Generation int
	Cert       *x509.Certificate
	DER        []byte
	signer     crypto.Signer
}

// New wraps an existing root certificate and its signer.
func New(s suite.Name, gen int, der []byte, signer crypto.Signer) (*CA, error) {
	c, err := smx509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse root certificate: %w", err)
	}
	return &CA{Suite: s, Generation: gen, Cert: c.ToX509(), DER: der, signer: signer}, nil
}

// NewRoot self-signs a root certificate for signer, valid for validity.
func NewRoot(s suite.Name, gen int, signer crypto.Signer, commonName string, validity time.Duration) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"podkey"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SignatureAlgorithm:    s.SignatureAlgorithm(),
	}
	der, err := smx509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("ca: self-sign root: %w", err)
	}
	return der, nil
}

// PEM returns the root certificate in PEM form (the CA bundle).
func (c *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER})
}

// Leaf describes the identity a leaf certificate asserts. The CSR only
// contributes its public key: names always come from podkey's view of the
// caller, never from the request.
type Leaf struct {
	CommonName string
	URIs       []*url.URL
	DNSNames   []string
	IPs        []net.IP
	TTL        time.Duration
	Server     bool // add serverAuth to clientAuth
	// KeyUsage is the key usage extension's BIT STRING (DER), critical;
	// default digitalSignature | keyAgreement.
	KeyUsage []byte
}

// ErrBadCSR is returned for a certificate request that cannot be used.
var ErrBadCSR = errors.New("invalid certificate request")

// ParseCSR parses a PEM or DER certificate request, checks its self
// signature and that its key belongs to the suite.
func ParseCSR(s suite.Name, data []byte) (crypto.PublicKey, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadCSR)
	}
	if len(data) > 16<<10 {
		return nil, fmt.Errorf("%w: larger than 16 KiB", ErrBadCSR)
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q", ErrBadCSR, b.Type)
		}
		data = b.Bytes
	}
	csr, err := smx509.ParseCertificateRequest(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	if !s.MatchesKey(csr.PublicKey) {
		want := "an ECDSA P-256"
		if s == suite.GM {
			want = "an SM2"
		}
		return nil, fmt.Errorf("%w: suite %s needs %s public key", ErrBadCSR, s, want)
	}
	return csr.PublicKey, nil
}

// Issue signs a leaf certificate for pub and returns its DER.
func (c *CA) Issue(pub crypto.PublicKey, l Leaf) ([]byte, *x509.Certificate, error) {
	if !c.Suite.MatchesKey(pub) {
		return nil, nil, fmt.Errorf("ca: key does not belong to suite %s", c.Suite)
	}
	tmpl := c.leafTemplate(l, time.Now(), serial())
	subject, err := asn1.Marshal(tmpl.Subject.ToRDNSequence())
	if err != nil {
		return nil, nil, fmt.Errorf("ca: subject: %w", err)
	}
	tbs, err := c.leafTBS(tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter, subject, pub, l)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	der, err := c.signLeaf(tbs)
	if err != nil {
		return nil, nil, err
	}
	return der, tmpl, nil
}

// leafTemplate is what a leaf issued now asserts, as an x509 template
// (what smx509.CreateCertificate would encode; leafTBS encodes it).
func (c *CA) leafTemplate(l Leaf, now time.Time, serial *big.Int) *x509.Certificate {
	notAfter := now.Add(l.TTL)
	if notAfter.After(c.Cert.NotAfter) {
		notAfter = c.Cert.NotAfter
	}
	eku := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if l.Server {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: l.CommonName, Organization: []string{"podkey"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		URIs:                  l.URIs,
		DNSNames:              l.DNSNames,
		IPAddresses:           l.IPs,
		SignatureAlgorithm:    c.Suite.SignatureAlgorithm(),
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}
