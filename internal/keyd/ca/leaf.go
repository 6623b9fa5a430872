package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/podkey/podkey/pkg/suite"
)

// Leaf certificates are encoded here rather than by smx509.CreateCertificate,
// byte for byte as it encodes them (TestLeafEncodingMatchesSmx509), to sign
// each once: the library verifies every signature it has just made, which
// for an HSM-held key is the one check of the token's output keyd would
// otherwise pay for on every certificate. keyd's node agents check each
// certificate they receive against the CA bundle before writing it
// (keydclient.CheckCertificate), so a faulty signer is still caught, on
// the nodes' cores; TLS peers check keyd's own serving and node
// certificates in every handshake.

var (
	oidSignatureECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidSignatureSM2WithSM3      = asn1.ObjectIdentifier{1, 2, 156, 10197, 1, 501}
	oidExtensionKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtensionExtKeyUsage     = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtensionBasicConstr     = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtensionAuthorityKeyID  = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtensionSAN             = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtKeyUsageServerAuth    = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidExtKeyUsageClientAuth    = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// leafKeyUsage is digitalSignature | keyAgreement as a DER BIT STRING
// (bits 0 and 4, three unused bits).
var leafKeyUsage = []byte{0x03, 0x02, 0x03, 0x88}

// Key usages of a TLCP pair (GB/T 38636): the signing certificate
// digitalSignature | nonRepudiation (bits 0, 1); the encryption
// certificate keyEncipherment | dataEncipherment | keyAgreement (bits 2,
// 3, 4; keyAgreement for the ECDHE suites).
var (
	KeyUsageTLCPSign = []byte{0x03, 0x02, 0x06, 0xc0}
	KeyUsageTLCPEnc  = []byte{0x03, 0x02, 0x03, 0x38}
)

// leafTBS encodes a leaf's TBSCertificate.
func (c *CA) leafTBS(serial *big.Int, notBefore, notAfter time.Time, subject []byte, pub crypto.PublicKey, l Leaf) ([]byte, error) {
	spki, err := smx509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(tbs *cryptobyte.Builder) {
		tbs.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(v *cryptobyte.Builder) { v.AddASN1Int64(2) })
		tbs.AddASN1BigInt(serial)
		tbs.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) { alg.AddASN1ObjectIdentifier(c.signatureOID()) })
		tbs.AddBytes(c.Cert.RawSubject)
		tbs.AddASN1(cbasn1.SEQUENCE, func(v *cryptobyte.Builder) {
			addTime(v, notBefore)
			addTime(v, notAfter)
		})
		tbs.AddBytes(subject)
		tbs.AddBytes(spki)
		tbs.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(v *cryptobyte.Builder) {
			v.AddASN1(cbasn1.SEQUENCE, func(exts *cryptobyte.Builder) {
				ext := func(id asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
					exts.AddASN1(cbasn1.SEQUENCE, func(e *cryptobyte.Builder) {
						e.AddASN1ObjectIdentifier(id)
						if critical {
							e.AddASN1Boolean(true)
						}
						e.AddASN1(cbasn1.OCTET_STRING, value)
					})
				}
				usage := leafKeyUsage
				if l.KeyUsage != nil {
					usage = l.KeyUsage
				}
				ext(oidExtensionKeyUsage, true, func(v *cryptobyte.Builder) { v.AddBytes(usage) })
				ext(oidExtensionExtKeyUsage, false, func(v *cryptobyte.Builder) {
					v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
						s.AddASN1ObjectIdentifier(oidExtKeyUsageClientAuth)
						if l.Server {
							s.AddASN1ObjectIdentifier(oidExtKeyUsageServerAuth)
						}
					})
				})
				ext(oidExtensionBasicConstr, true, func(v *cryptobyte.Builder) { v.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) })
				if len(c.Cert.SubjectKeyId) > 0 {
					ext(oidExtensionAuthorityKeyID, false, func(v *cryptobyte.Builder) {
						v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
							s.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(k *cryptobyte.Builder) { k.AddBytes(c.Cert.SubjectKeyId) })
						})
					})
				}
				if len(l.DNSNames)+len(l.IPs)+len(l.URIs) > 0 {
					ext(oidExtensionSAN, false, func(v *cryptobyte.Builder) {
						v.AddASN1(cbasn1.SEQUENCE, func(s *cryptobyte.Builder) {
							for _, n := range l.DNSNames {
								s.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(x *cryptobyte.Builder) { x.AddBytes([]byte(n)) })
							}
							for _, ip := range l.IPs {
								if ip4 := ip.To4(); ip4 != nil {
									ip = ip4
								}
								s.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(x *cryptobyte.Builder) { x.AddBytes(ip) })
							}
							for _, u := range l.URIs {
								s.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(x *cryptobyte.Builder) { x.AddBytes([]byte(u.String())) })
							}
						})
					})
				}
			})
		})
	})
	return b.Bytes()
}

// addTime adds t as X.509 encodes validity: UTCTime from 1950 to 2049,
// GeneralizedTime otherwise, to the second, in UTC.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC().Truncate(time.Second)
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
		return
	}
	b.AddASN1GeneralizedTime(t)
}

func (c *CA) signatureOID() asn1.ObjectIdentifier {
	if c.Suite == suite.GM {
		return oidSignatureSM2WithSM3
	}
	return oidSignatureECDSAWithSHA256
}

// signLeaf signs tbs once and returns the certificate's DER.
func (c *CA) signLeaf(tbs []byte) ([]byte, error) {
	var sig []byte
	var err error
	if c.Suite == suite.GM {
		sig, err = c.signer.Sign(rand.Reader, tbs, sm2.DefaultSM2SignerOpts) // SM3 with the signer's Z value
	} else {
		h := sha256.Sum256(tbs)
		sig, err = c.signer.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate: %w", err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(cert *cryptobyte.Builder) {
		cert.AddBytes(tbs)
		cert.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) { alg.AddASN1ObjectIdentifier(c.signatureOID()) })
		cert.AddASN1BitString(sig)
	})
	return b.Bytes()
}
