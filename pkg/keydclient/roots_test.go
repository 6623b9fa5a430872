package keydclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca testCA) serve(t *testing.T, dns string, ip net.IP) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), DNSNames: []string{dns}, IPAddresses: []net.IP{ip}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return l.Addr().String()
}

// A rotated bundle written to the file is used at the next handshake; the
// name is still checked; a broken file keeps the last good bundle.
func TestRootsFollowTheBundleFile(t *testing.T) {
	oldCA, newCA := newTestCA(t, "old"), newTestCA(t, "new")
	addr := newCA.serve(t, "keyd.test", net.ParseIP("127.0.0.1")) // keyd now serves a certificate from the new CA
	file := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(file, oldCA.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := newRoots(file)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(name string) error {
		c, err := tls.Dial("tcp", addr, r.tlsConfig("no-port", name))
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial("keyd.test"); err == nil {
		t.Fatal("a certificate from a CA outside the bundle was accepted")
	}
	// keyd publishes both generations; the file changes (size and time).
	if err := os.WriteFile(file, append(append([]byte{}, oldCA.pem...), newCA.pem...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := dial("keyd.test"); err != nil {
		t.Fatalf("the rotated bundle was not followed: %v", err)
	}
	if err := dial("other.test"); err == nil {
		t.Fatal("a certificate for another name was accepted")
	}
	if err := dial(""); err == nil {
		t.Fatal("a connection without a name to verify was accepted")
	}
	// Dialled by IP with no name given: the address's host is the name.
	if c, err := tls.Dial("tcp", addr, r.tlsConfig(addr, "")); err != nil {
		t.Fatalf("by IP address: %v", err)
	} else {
		c.Close()
	}
	if err := os.WriteFile(file, []byte("not a bundle"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := dial("keyd.test"); err != nil {
		t.Fatalf("a broken bundle file replaced the last good one: %v", err)
	}
	if _, err := newRoots(file); err == nil {
		t.Fatal("a client started on a broken bundle")
	}
}

func TestRootsNeedAFile(t *testing.T) {
	if _, err := newRoots(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing bundle was accepted")
	}
}
