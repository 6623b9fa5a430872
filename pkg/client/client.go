// Package client is the workload side of podkey: it opens a podkey volume,
// reads its credentials the consistent way (resolve ..data once, read,
// check the generation is still there), follows rotation without a
// restart, signs outgoing HTTP requests with the pod's API key, and offers
// TLS configurations whose certificate follows rotation. Secrets stay in
// memory, are never copied to disk, and are zeroed when dropped.
package client

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/podkey/podkey/pkg/apikey/reqsign"
	"github.com/podkey/podkey/pkg/podfiles"
	"github.com/podkey/podkey/pkg/suite"
)

// ErrNoObject is returned for an object the volume does not hold.
var ErrNoObject = errors.New("no such object in the podkey volume")

// Volume is an opened podkey volume.
type Volume struct {
	dir string

	mu   sync.Mutex
	gen  string
	meta podfiles.Metadata
	data map[string][]byte // file contents of generation gen
}

// Open reads the volume mounted at dir (for example /var/run/podkey).
func Open(dir string) (*Volume, error) {
	v := &Volume{dir: dir}
	if _, err := v.current(); err != nil {
		return nil, err
	}
	return v, nil
}

// current returns the files of the published generation, reloading them
// when ..data moved. Readers racing a rotation retry.
func (v *Volume) current() (map[string][]byte, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for attempt := 0; attempt < 5; attempt++ {
		gen, err := os.Readlink(filepath.Join(v.dir, podfiles.DataDir))
		if err != nil {
			return nil, fmt.Errorf("podkey volume %s: %w", v.dir, err)
		}
		if gen == v.gen && v.data != nil {
			return v.data, nil
		}
		data, meta, err := readGeneration(filepath.Join(v.dir, gen))
		if err != nil {
			continue // the generation went away while we read it
		}
		if _, err := os.Stat(filepath.Join(v.dir, gen)); err != nil {
			zeroAll(data)
			continue
		}
		zeroAll(v.data)
		v.gen, v.data, v.meta = gen, data, meta
		return data, nil
	}
	return nil, fmt.Errorf("podkey volume %s: no consistent generation after retries", v.dir)
}

func readGeneration(dir string) (map[string][]byte, podfiles.Metadata, error) {
	var meta podfiles.Metadata
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, meta, err
	}
	data := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			zeroAll(data)
			return nil, meta, err
		}
		data[e.Name()] = b
	}
	if err := json.Unmarshal(data[podfiles.MetadataFile], &meta); err != nil {
		zeroAll(data)
		return nil, meta, fmt.Errorf("metadata: %w", err)
	}
	return data, meta, nil
}

func zeroAll(m map[string][]byte) {
	for _, b := range m {
		clear(b)
	}
}

// Metadata is the volume's current metadata.
func (v *Volume) Metadata() (podfiles.Metadata, error) {
	if _, err := v.current(); err != nil {
		return podfiles.Metadata{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.meta, nil
}

func (v *Volume) object(name string) (podfiles.Object, map[string][]byte, error) {
	data, err := v.current()
	if err != nil {
		return podfiles.Object{}, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, o := range v.meta.Objects {
		if o.Name == name {
			return o, data, nil
		}
	}
	return podfiles.Object{}, nil, fmt.Errorf("%w: %q", ErrNoObject, name)
}

// fileCopy returns a copy of an object's only file.
func (v *Volume) fileCopy(name, kind string) ([]byte, error) {
	o, data, err := v.object(name)
	if err != nil {
		return nil, err
	}
	if o.Kind != kind || len(o.Files) != 1 {
		return nil, fmt.Errorf("object %q is a %s, not a %s", name, o.Kind, kind)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return bytes.Clone(data[o.Files[0]]), nil
}

// DerivedKey returns a copy of a derivedKey object; zero it when done.
func (v *Volume) DerivedKey(name string) ([]byte, error) { return v.fileCopy(name, "derivedKey") }

// Secret returns a copy of an enrolled secret; zero it when done.
func (v *Volume) Secret(name string) ([]byte, error) { return v.fileCopy(name, "secret") }

// Token returns a token object's JWT.
func (v *Volume) Token(name string) (string, error) {
	b, err := v.fileCopy(name, "token")
	return string(b), err
}

// Database returns the pod's current login of a database object (re-read
// on each call, so a new password after a renewal is followed); zero its
// Password when done.
func (v *Volume) Database(name string) (podfiles.DatabaseLogin, error) {
	b, err := v.fileCopy(name, "database")
	if err != nil {
		return podfiles.DatabaseLogin{}, err
	}
	defer clear(b)
	d, err := podfiles.ParseDatabaseLogin(b)
	if err != nil {
		return podfiles.DatabaseLogin{}, fmt.Errorf("database %q: %w", name, err)
	}
	return d, nil
}

// APIKey is an API key as read from the volume.
type APIKey struct {
	ID     string
	Secret []byte
	Suite  suite.Name
	Expiry time.Time
}

// APIKey returns the current API key of an apiKey object; zero Secret when
// done.
func (v *Volume) APIKey(name string) (APIKey, error) {
	b, err := v.fileCopy(name, "apiKey")
	if err != nil {
		return APIKey{}, err
	}
	defer clear(b)
	var f podfiles.APIKeyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return APIKey{}, fmt.Errorf("api key %q: %w", name, err)
	}
	secret, err := base64.RawURLEncoding.DecodeString(f.SecretKey)
	if err != nil {
		return APIKey{}, fmt.Errorf("api key %q: %w", name, err)
	}
	return APIKey{ID: f.AccessKeyID, Secret: secret, Suite: suite.Name(f.Suite), Expiry: f.Expiry}, nil
}

// Transport signs every request with the current key of the apiKey object
// name (re-read on each request, so rotation is followed) and sends it
// with base (http.DefaultTransport when nil). extraHeaders are signed too.
func (v *Volume) Transport(name string, base http.RoundTripper, extraHeaders ...string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		k, err := v.APIKey(name)
		if err != nil {
			return nil, err
		}
		defer clear(k.Secret)
		r = r.Clone(r.Context())
		if err := reqsign.Sign(r, k.Suite, k.ID, k.Secret, time.Now(), extraHeaders...); err != nil {
			return nil, err
		}
		return base.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Certificate returns the current key pair of a certificate object (suite
// intl; Go's TLS has no SM2) and its CA bundle.
func (v *Volume) Certificate(name string) (*tls.Certificate, *x509.CertPool, error) {
	o, data, err := v.object(name)
	if err != nil {
		return nil, nil, err
	}
	if o.Kind != "certificate" || len(o.Files) != 3 {
		return nil, nil, fmt.Errorf("object %q is not a certificate", name)
	}
	v.mu.Lock()
	keyPEM, certPEM, caPEM := bytes.Clone(data[o.Files[0]]), bytes.Clone(data[o.Files[1]]), bytes.Clone(data[o.Files[2]])
	v.mu.Unlock()
	defer clear(keyPEM)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %q: %w", name, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &cert, pool, nil
}

// ClientTLS is a TLS client configuration presenting the certificate
// object's current certificate on every handshake and trusting its CA
// bundle as of this call.
func (v *Volume) ClientTLS(name string) (*tls.Config, error) {
	_, pool, err := v.Certificate(name)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, _, err := v.Certificate(name)
			return c, err
		}}, nil
}

// Close zeroes what the volume holds in memory.
func (v *Volume) Close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	zeroAll(v.data)
	v.data, v.gen = nil, ""
}
