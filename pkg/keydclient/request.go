package keydclient

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"

	"github.com/emmansun/gmsm/smx509"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
)

// ObjectRequest is the wire form of one normalized object, without a CSR.
func ObjectRequest(sp object.Spec) *keydv1.ObjectRequest {
	return &keydv1.ObjectRequest{Name: sp.Name, Kind: string(sp.Kind), Suite: string(sp.Suite), Ttl: sp.TTL.String(),
		Scope: sp.Scope, Length: int32(sp.Length), Audience: sp.Audience}
}

// IssueRequest builds the one Issue request for a pod's objects, as a node
// makes it: for every certificate object a key pair of the object's suite
// is generated here and only its CSR is sent. keys holds those private
// keys by object name; they never leave the caller.
func IssueRequest(p pod.Identity, token string, specs []object.Spec) (req *keydv1.IssueRequest, keys map[string]crypto.Signer, err error) {
	req = &keydv1.IssueRequest{Pod: keydv1.NewPodIdentity(p), PodToken: token}
	keys = map[string]crypto.Signer{}
	for _, sp := range specs {
		o := ObjectRequest(sp)
		if sp.Kind == object.Certificate {
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
