// Package accesskey defines podkey's access key ids: self-describing,
// authenticated identifiers that name the namespace, service account, pod,
// object, suite, key generation and expiry of an API key, from which keyd
// recomputes the key's secret with an HSM-held MAC key instead of storing it.
//
// Format (version 2; version 1 ids, "PK1" with payload 0x01 and no issue
// time, are still read):
//
//	id      = "PK2" base64url(payload || tag)          (no padding)
//	payload = 0x02 suite gen:uvarint expiry:int64be issued:int64be
//	          str(namespace) str(serviceAccount) str(podUID) str(object)
//	str(s)  = len:uvarint bytes
//	(expiry in Unix seconds, issued in Unix nanoseconds: a revocation
//	refuses the keys issued before it, and only those)
//	secret  = MAC_suite(K_gen, "podkey-apikey-v1\x00" || payload)   32 bytes
//	tag     = Hash_suite("podkey-apikey-tag-v1\x00" || secret)[:16]
//
// The tag binds the id to its secret: only the holder of K_gen can produce
// a matching (payload, tag), so forged or altered ids are refused before any
// signature is checked, at the cost of one HSM MAC per check.
package accesskey

import (
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podkey/podkey/pkg/suite"
)

// Prefix starts every access key id podkey issues (version 2);
// PrefixV1 starts the version 1 ids issued before.
const (
	Prefix   = "PK2"
	PrefixV1 = "PK1"
)

const (
	version   = 2
	tagSize   = 16
	maxString = 253
	// MaxIDLength bounds an encoded id; longer input is refused unparsed.
	MaxIDLength = 1024
)

var (
	secretDomain = []byte("podkey-apikey-v1\x00")
	tagDomain    = []byte("podkey-apikey-tag-v1\x00")
)

// ErrMalformed is returned for input that is not an access key id.
var ErrMalformed = errors.New("malformed access key id")

// ErrForged is returned for an id whose tag does not match its contents.
var ErrForged = errors.New("access key id is not authentic")

// ID is the content of an access key id.
type ID struct {
	Suite          suite.Name
	Generation     int
	Expiry         time.Time // second precision
	IssuedAt       time.Time // nanosecond precision; zero in version 1 ids
	Namespace      string
	ServiceAccount string
	PodUID         string
	Object         string
}

func suiteByte(s suite.Name) byte {
	if s == suite.GM {
		return 2
	}
	return 1
}

// Payload is the authenticated byte form of the id's content.
func (id ID) Payload() ([]byte, error) {
	if id.Generation < 1 {
		return nil, fmt.Errorf("%w: generation %d", ErrMalformed, id.Generation)
	}
	// Without an issue time the id takes version 1's form (podkey always
	// sets one; verification treats such an id as issued before any
	// revocation).
	v := byte(version)
	if id.IssuedAt.IsZero() {
		v = 1
	}
	b := []byte{v, suiteByte(id.Suite)}
	b = binary.AppendUvarint(b, uint64(id.Generation))
	b = binary.BigEndian.AppendUint64(b, uint64(id.Expiry.Unix()))
	if v == version {
		b = binary.BigEndian.AppendUint64(b, uint64(id.IssuedAt.UnixNano()))
	}
	for _, s := range []string{id.Namespace, id.ServiceAccount, id.PodUID, id.Object} {
		if s == "" || len(s) > maxString {
			return nil, fmt.Errorf("%w: empty or oversized field", ErrMalformed)
		}
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b, nil
}

// SecretInput is what the MAC key is applied to, to obtain the secret.
func SecretInput(payload []byte) []byte {
	return append(append([]byte{}, secretDomain...), payload...)
}

// Tag binds payload to its secret.
func Tag(s suite.Name, secret []byte) []byte {
	h := s.Hash()()
	h.Write(tagDomain)
	h.Write(secret)
	return h.Sum(nil)[:tagSize]
}

// Encode renders the id string from a payload and the secret computed for it.
func Encode(s suite.Name, payload, secret []byte) string {
	raw := append(append([]byte{}, payload...), Tag(s, secret)...)
	prefix := Prefix
	if len(payload) > 0 && payload[0] == 1 {
		prefix = PrefixV1
	}
	return prefix + base64.RawURLEncoding.EncodeToString(raw)
}

// Parse decodes an id string without authenticating it. It returns the
// content, the payload to recompute the secret from, and the claimed tag.
func Parse(s string) (ID, []byte, []byte, error) {
	var id ID
	var want byte
	switch {
	case len(s) > MaxIDLength:
		return id, nil, nil, ErrMalformed
	case strings.HasPrefix(s, Prefix):
		want = version
	case strings.HasPrefix(s, PrefixV1):
		want = 1
	default:
		return id, nil, nil, ErrMalformed
	}
	raw, err := decodeCanonical(s[len(Prefix):])
	if err != nil || len(raw) < 2+1+8+4+tagSize {
		return id, nil, nil, ErrMalformed
	}
	payload, tag := raw[:len(raw)-tagSize], raw[len(raw)-tagSize:]
	if payload[0] != want {
		return id, nil, nil, fmt.Errorf("%w: version %d", ErrMalformed, payload[0])
	}
	switch payload[1] {
	case 1:
		id.Suite = suite.Intl
	case 2:
		id.Suite = suite.GM
	default:
		return id, nil, nil, fmt.Errorf("%w: suite %d", ErrMalformed, payload[1])
	}
	rest := payload[2:]
	gen, n := binary.Uvarint(rest)
	if n <= 0 || gen < 1 || gen > 1<<20 {
		return id, nil, nil, ErrMalformed
	}
	id.Generation = int(gen)
	rest = rest[n:]
	if len(rest) < 8 {
		return id, nil, nil, ErrMalformed
	}
	id.Expiry = time.Unix(int64(binary.BigEndian.Uint64(rest)), 0).UTC()
	rest = rest[8:]
	if want == version {
		if len(rest) < 8 {
			return id, nil, nil, ErrMalformed
		}
		id.IssuedAt = time.Unix(0, int64(binary.BigEndian.Uint64(rest))).UTC()
		rest = rest[8:]
	}
	fields := []*string{&id.Namespace, &id.ServiceAccount, &id.PodUID, &id.Object}
	for _, f := range fields {
		l, n := binary.Uvarint(rest)
		if n <= 0 || l == 0 || l > maxString || uint64(len(rest)-n) < l {
			return id, nil, nil, ErrMalformed
		}
		*f = string(rest[n : n+int(l)])
		rest = rest[n+int(l):]
	}
	if len(rest) != 0 {
		return id, nil, nil, ErrMalformed
	}
	return id, payload, tag, nil
}

// decodeCanonical decodes unpadded base64url in its one spelling: Go's
// decoder also takes a last character whose unused low bits are set, and
// skips line breaks, which would let one id be spelled several ways (and
// a captured request be replayed under each).
func decodeCanonical(s string) ([]byte, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if base64.RawURLEncoding.EncodeToString(raw) != s {
		return nil, ErrMalformed
	}
	return raw, nil
}

// CheckTag compares a claimed tag with the one the recomputed secret gives.
func CheckTag(s suite.Name, secret, claimed []byte) error {
	if subtle.ConstantTimeCompare(Tag(s, secret), claimed) != 1 {
		return ErrForged
	}
	return nil
}

// Sign computes an API-key signature: the suite's HMAC under the secret.
func Sign(s suite.Name, secret, stringToSign []byte) []byte {
	return s.MAC(secret, stringToSign)
}

// CheckSignature compares a signature in constant time.
func CheckSignature(s suite.Name, secret, stringToSign, sig []byte) bool {
	return subtle.ConstantTimeCompare(Sign(s, secret, stringToSign), sig) == 1
}
