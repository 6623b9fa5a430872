package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/pkg/suite"
)

func testCA(t *testing.T, s suite.Name) *CA {
	t.Helper()
	var signer crypto.Signer
	var err error
	if s == suite.GM {
		signer, err = sm2.GenerateKey(rand.Reader)
	} else {
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	der, err := NewRoot(s, 1, signer, "podkey test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(s, 1, der, signer)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestLeafEncodingMatchesSmx509: the TBSCertificate podkey encodes is,
// byte for byte, the one smx509.CreateCertificate encodes from the same
// template, for both suites and every kind of name; the certificate
// parses and verifies under the CA.
func TestLeafEncodingMatchesSmx509(t *testing.T) {
	leaves := map[string]Leaf{
		"workload": {CommonName: "system:serviceaccount:payments:api", TTL: time.Hour,
			URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/payments/sa/api"}, {Scheme: "urn", Opaque: "podkey:pod:0b5c-uid"}}},
		"server": {CommonName: "podkey-keyd", TTL: 90 * time.Minute, Server: true,
			DNSNames: []string{"localhost", "podkey-keyd.podkey.svc"}, IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}},
		"beyond the CA": {CommonName: "long", TTL: 48 * time.Hour},
		"no names":      {TTL: time.Minute},
	}
	for _, s := range []suite.Name{suite.Intl, suite.GM} {
		c := testCA(t, s)
		key, err := s.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		for name, l := range leaves {
			tmpl := c.leafTemplate(l, time.Now(), big.NewInt(1234567890123))
			want, err := smx509.CreateCertificate(rand.Reader, tmpl, c.Cert, key.Public(), c.signer)
			if err != nil {
				t.Fatal(err)
			}
			wantCert, err := smx509.ParseCertificate(want)
			if err != nil {
				t.Fatal(err)
			}
			subject := wantCert.RawSubject
			tbs, err := c.leafTBS(tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter, subject, key.Public(), l)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tbs, wantCert.RawTBSCertificate) {
				t.Errorf("%s %s: TBSCertificate differs from smx509's:\n got %x\nwant %x", s, name, tbs, wantCert.RawTBSCertificate)
				continue
			}
			der, err := c.signLeaf(tbs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := smx509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("%s %s: %v", s, name, err)
			}
			root, _ := smx509.ParseCertificate(c.DER)
			if err := got.CheckSignatureFrom(root); err != nil {
				t.Errorf("%s %s: does not verify under the CA: %v", s, name, err)
			}
			if got.SignatureAlgorithm != wantCert.SignatureAlgorithm || !bytes.Equal(got.RawTBSCertificate, wantCert.RawTBSCertificate) {
				t.Errorf("%s %s: signed certificate differs", s, name)
			}
		}
		// Issue end to end.
		der, tmpl, err := c.Issue(key.Public(), leaves["workload"])
		if err != nil {
			t.Fatal(err)
		}
		got, err := smx509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		root, _ := smx509.ParseCertificate(c.DER)
		if err := got.CheckSignatureFrom(root); err != nil || !got.NotAfter.Equal(tmpl.NotAfter.Truncate(time.Second)) || got.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
			t.Fatalf("%s: issued certificate: %v %v %v", s, err, got.NotAfter, got.ExtKeyUsage)
		}
	}
}
