package service

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/pkg/suite"
)

// servingCertTTL is the life of keyd's serving certificate; a new one is
// made (fresh key in memory, signed by the HSM-held CA) at two thirds of it.
const servingCertTTL = 24 * time.Hour

// servingTLS returns a TLS 1.3 configuration whose certificate comes from
// the current intl CA generation and is renewed in the background of
// handshakes.
func (s *Server) servingTLS() (*tls.Config, error) {
	var (
		mu      sync.Mutex
		cur     *tls.Certificate
		renewAt time.Time
	)
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cur == nil || s.opts.Now().After(renewAt) {
			c, err := s.servingCert()
			if err != nil {
				if cur != nil {
					s.opts.Logger.Warn("serving certificate renewal failed; keeping the current one", "error", err)
					return cur, nil
				}
				return nil, err
			}
			cur, renewAt = c, c.Leaf.NotBefore.Add(time.Minute).Add(servingCertTTL*2/3)
		}
		return cur, nil
	}
	if _, err := get(nil); err != nil {
		return nil, err
	}
	// Client certificates are requested, not verified, in the handshake:
	// keyd verifies them per call (callerNode) so refusals say why.
	conf := &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: get, ClientAuth: tls.RequestClientCert}
	if s.opts.TLSRequirePostQuantum {
		conf.CurvePreferences = PostQuantumGroups
	}
	return conf, nil
}

// PostQuantumGroups are the hybrid post-quantum key exchanges, in keyd's
// order of preference. Go's default already offers and prefers them (a
// recorded session cannot be opened later by a quantum computer); the
// classical groups after them stay for clients that have none, unless
// Options.TLSRequirePostQuantum.
var PostQuantumGroups = []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024}

func (s *Server) servingCert() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	authority, err := s.kr.CA(suite.Intl, s.kr.Current(keyring.CA, suite.Intl))
	if err != nil {
		return nil, err
	}
	leaf := ca.Leaf{CommonName: "podkey-keyd", TTL: servingCertTTL, Server: true}
	for _, n := range s.opts.TLSNames {
		if ip := net.ParseIP(n); ip != nil {
			leaf.IPs = append(leaf.IPs, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, n)
		}
	}
	der, _, err := authority.Issue(&key.PublicKey, leaf)
	if err != nil {
		return nil, fmt.Errorf("keyd: serving certificate: %w", err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}, nil
}
