package keydclient

import (
	"crypto"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/pkg/suite"
)

func testAuthority(t *testing.T, s suite.Name) *ca.CA {
	t.Helper()
	key, err := s.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.NewRoot(s, 1, key, "check test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(s, 1, der, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCheckCertificate: the node accepts a certificate for its key signed
// by a CA of the bundle, and refuses one for another key, one signed by a
// CA outside the bundle, and one that is not a certificate.
func TestCheckCertificate(t *testing.T) {
	for _, s := range []suite.Name{suite.Intl, suite.GM} {
		authority, other := testAuthority(t, s), testAuthority(t, s)
		key, _ := s.GenerateKey()
		otherKey, _ := s.GenerateKey()
		issue := func(c *ca.CA, pub crypto.PublicKey) []byte {
			der, _, err := c.Issue(pub, ca.Leaf{CommonName: "x", TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		}
		bundle := append(other.PEM(), authority.PEM()...) // during a rotation: two CAs
		if err := CheckCertificate(issue(authority, key.Public()), bundle, key); err != nil {
			t.Fatalf("%s: a good certificate refused: %v", s, err)
		}
		for name, c := range map[string]struct {
			cert, bundle []byte
			want         string
		}{
			"another key":  {issue(authority, otherKey.Public()), bundle, "another key"},
			"another CA":   {issue(other, key.Public()), authority.PEM(), "no CA of its bundle"},
			"not PEM":      {[]byte("garbage"), bundle, "no PEM certificate"},
			"empty bundle": {issue(authority, key.Public()), nil, "no CA of its bundle"},
		} {
			if err := CheckCertificate(c.cert, c.bundle, key); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %s: %v, want an error saying %q", s, name, err, c.want)
			}
		}
	}
}
