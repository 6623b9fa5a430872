package keydclient

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/smx509"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
)

// IssueRequest builds the one Issue request for a pod's objects, as a node
// makes it: for every certificate object a key pair of the object's suite
// is generated here and only its CSR is sent. keys holds those private
// keys by object name; they never leave the caller.
func IssueRequest(p pod.Identity, token string, specs []object.Spec) (req *keydv1.IssueRequest, keys map[string]crypto.Signer, err error) {
	req = &keydv1.IssueRequest{Pod: keydv1.NewPodIdentity(p), PodToken: token}
	keys = map[string]crypto.Signer{}
	for _, sp := range specs {
		o := keydv1.NewObjectRequest(sp)
		if sp.Kind.NeedsCSR() {
			key, csr, err := newCSR(sp)
			if err != nil {
				return nil, nil, err
			}
			o.Csr, keys[sp.Name] = csr, key
		}
		req.Objects = append(req.Objects, o)
	}
	return req, keys, nil
}

// newCSR generates a key pair of the certificate object's suite and a
// certificate request (DER) signed with it.
func newCSR(sp object.Spec) (crypto.Signer, []byte, error) {
	key, err := sp.Suite.GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %s: %w", sp.Name, err)
	}
	csr, err := smx509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request for %s: %w", sp.Name, err)
	}
	return key, csr, nil
}

// CheckCertificate checks a certificate keyd issued for key before it is
// used: it is for key's public key, and its signature verifies under one
// of the CA bundle's certificates. keyd signs each certificate once and
// leaves this check of its signer's output to the receiver.
func CheckCertificate(certPEM, caBundlePEM []byte, key crypto.Signer) error {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return errors.New("keyd returned no PEM certificate")
	}
	cert, err := smx509.ParseCertificate(b.Bytes)
	if err != nil {
		return fmt.Errorf("keyd returned a certificate that does not parse: %w", err)
	}
	if pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return errors.New("keyd returned a certificate for another key than the one requested")
	}
	var errs []error
	for rest := caBundlePEM; ; {
		var ca *pem.Block
		if ca, rest = pem.Decode(rest); ca == nil {
			break
		}
		root, err := smx509.ParseCertificate(ca.Bytes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := cert.CheckSignatureFrom(root); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
	}
	return fmt.Errorf("keyd returned a certificate that no CA of its bundle signed: %w", errors.Join(errs...))
}
