package keydclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// roots is the CA bundle file that verifies keyd, re-read when it changes:
// keyd publishes a rotated CA (the ConfigMap podkey-csi mounts updates the
// file), and clients follow it without a restart. A bundle that turns
// unreadable or empty keeps the last good one in use.
type roots struct {
	file string

	mu   sync.Mutex
	mod  time.Time
	size int64
	pool *x509.CertPool
}

func newRoots(file string) (*roots, error) {
	r := &roots{file: file}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return r, nil
}

// get returns the bundle as the file holds it now.
func (r *roots) get() (*x509.CertPool, error) {
	fi, statErr := os.Stat(r.file)
	r.mu.Lock()
	defer r.mu.Unlock()
	if statErr == nil && r.pool != nil && fi.ModTime().Equal(r.mod) && fi.Size() == r.size {
		return r.pool, nil
	}
	pool, err := loadRoots(r.file)
	switch {
	case err == nil:
		r.pool, r.mod, r.size = pool, fi.ModTime(), fi.Size()
	case r.pool == nil:
		return nil, err
	}
	return r.pool, nil
}

// tlsConfig verifies keyd's certificate against the bundle as it is at
// each handshake, and its name: serverName, or else the host of address
// (of its first entry, for a list).
func (r *roots) tlsConfig(address, serverName string) *tls.Config {
	if serverName == "" {
		serverName = hostOf(firstAddress(address))
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// The standard verification is replaced, not skipped: VerifyConnection
		// below does it against the current bundle, name included.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			// The name is the one configured here: the connection state's
			// is empty for an IP address, which is not sent as SNI.
			if serverName == "" {
				return errors.New("keyd's certificate: no server name to verify")
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("keyd presented no certificate")
			}
			pool, err := r.get()
			if err != nil {
				return err
			}
			opts := x509.VerifyOptions{Roots: pool, DNSName: serverName, Intermediates: x509.NewCertPool(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("keyd's certificate: %w", err)
			}
			return nil
		},
	}
}
