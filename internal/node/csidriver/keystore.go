package csidriver

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/pavlo-v-chernykh/keystore-go/v4"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/podfiles"
)

// keystoreFiles renders an intl certificate's keystore formats: PKCS#12
// (PBES2 with AES-256-CBC and PBKDF2-SHA256, SHA-256 MAC: go-pkcs12's
// Modern2023), a Java KeyStore with the key entry and the CA chain as
// trusted entries, a PKCS#12 trust store of the CA bundle, and their
// password, random per pod and issue. keyDER is the key's PKCS#8.
func keystoreFiles(sp object.Spec, key crypto.Signer, keyDER, certPEM, caPEM []byte, now time.Time) (map[string][]byte, error) {
	out := map[string][]byte{}
	if !sp.Format.Keystore() {
		return out, nil
	}
	leaf, err := parsePEMCerts(certPEM)
	if err != nil || len(leaf) != 1 {
		return nil, fmt.Errorf("object %s: certificate for a keystore: %v", sp.Name, err)
	}
	cas, err := parsePEMCerts(caPEM)
	if err != nil || len(cas) == 0 {
		return nil, fmt.Errorf("object %s: CA bundle for a keystore: %v", sp.Name, err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	password := base64.RawURLEncoding.EncodeToString(raw)
	clear(raw)
	if sp.Format.Has(object.FormatPKCS12) {
		p12, err := pkcs12.Modern2023.Encode(key, leaf[0], cas, password)
		if err != nil {
			return nil, fmt.Errorf("object %s: PKCS#12: %w", sp.Name, err)
		}
		out[sp.File+podfiles.PKCS12Suffix] = p12
	}
	if sp.Format.Has(object.FormatJKS) {
		jks, err := javaKeyStore(keyDER, leaf[0], cas, []byte(password), now)
		if err != nil {
			return nil, fmt.Errorf("object %s: JKS: %w", sp.Name, err)
		}
		out[sp.File+podfiles.JKSSuffix] = jks
	}
	if sp.Format.Has(object.FormatTrustStore) {
		ts, err := pkcs12.Modern2023.EncodeTrustStore(cas, password)
		if err != nil {
			return nil, fmt.Errorf("object %s: trust store: %w", sp.Name, err)
		}
		out[sp.File+podfiles.TrustStoreSuffix] = ts
	}
	out[sp.File+podfiles.PasswordSuffix] = []byte(password)
	return out, nil
}

// javaKeyStore is a JKS with the key entry "podkey" (the certificate and
// its CA chain) and each CA as trusted entry "ca-N".
func javaKeyStore(keyDER []byte, leaf *x509.Certificate, cas []*x509.Certificate, password []byte, now time.Time) ([]byte, error) {
	ks := keystore.New(keystore.WithOrderedAliases())
	chain := []keystore.Certificate{{Type: "X509", Content: leaf.Raw}}
	for _, c := range cas {
		chain = append(chain, keystore.Certificate{Type: "X509", Content: c.Raw})
	}
	if err := ks.SetPrivateKeyEntry("podkey", keystore.PrivateKeyEntry{CreationTime: now, PrivateKey: keyDER, CertificateChain: chain}, password); err != nil {
		return nil, err
	}
	for i, c := range cas {
		if err := ks.SetTrustedCertificateEntry(fmt.Sprintf("ca-%d", i), keystore.TrustedCertificateEntry{CreationTime: now,
			Certificate: keystore.Certificate{Type: "X509", Content: c.Raw}}); err != nil {
			return nil, err
		}
	}
	var b bytesBuffer
	if err := ks.Store(&b, password); err != nil {
		return nil, err
	}
	return b.data, nil
}

// bytesBuffer collects what a writer writes, without bytes.Buffer's
// spare capacity holding copies of key material after growth.
type bytesBuffer struct{ data []byte }

func (b *bytesBuffer) Write(p []byte) (int, error) {
	grown := make([]byte, len(b.data)+len(p))
	copy(grown, b.data)
	copy(grown[len(b.data):], p)
	clear(b.data)
	b.data = grown
	return len(p), nil
}

func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}
