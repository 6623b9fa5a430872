// Package imagecrypt is podkey's key-wrapping scheme for encrypted
// container images (ocicrypt's keyprovider annotation
// org.opencontainers.image.enc.keys.provider.podkey).
//
// ocicrypt encrypts each layer under a fresh layer key and hands podkey the
// layer's private options (the layer key, cipher and digest, as JSON) to
// wrap. podkey seals those options under a content key (CEK) made once per
// encryption run, and wraps the CEK once for every recipient, each an image
// key held by keyd and named by a key id (kid):
//
//	intl: ECDH P-256 with an ephemeral key, HKDF-SHA256, AES-256-GCM
//	gm:   SM2 public-key encryption (GB/T 32918.4, ASN.1)
//
// The blob lists {kid, wrapped CEK} for every recipient, so a node asks
// keyd to unwrap exactly the entry of a key it may use: one private-key
// operation per image whatever the number of recipients, where ocicrypt's
// own schemes try recipients one after another. Every layer of an image
// encrypted in one run carries the same recipient list, so the node
// unwraps once per image and opens the other layers from its cache.
//
// Wire format (lengths big-endian):
//
//	"PKI1" | suite u8 (1 intl, 2 gm) | count u8 |
//	count × (kid: u8 length | wrapped CEK: u16 length) |
//	nonce: u8 length | sealed options: u16 length
//
// Everything before the nonce is the header; it is the AEAD's additional
// data, so a changed, added or removed entry fails the opening of every
// layer even when the node's own entry is intact.
package imagecrypt

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/suite"
)

// Scheme is the keyprovider name: ocicrypt stores the blob under
// AnnotationID and calls the provider configured under this name.
const (
	Scheme       = "podkey"
	AnnotationID = "org.opencontainers.image.enc.keys.provider." + Scheme
	magic        = "PKI1"
)

// Limits of the format.
const (
	MaxRecipients = 255
	maxWrapped    = 1024
	maxSealed     = 16 << 10
)

// ErrMalformed is wrapped by every parse failure.
var ErrMalformed = errors.New("malformed podkey image key blob")

// ValidKeyID reports whether s can name an image key: the rule of object
// names (a DNS label-like name of at most 63 characters).
func ValidKeyID(s string) bool { return object.ValidName(s) }

// Entry is one recipient: an image key id and the CEK wrapped for it.
type Entry struct {
	KeyID   string
	Wrapped []byte
}

// Blob is one layer's wrapped options.
type Blob struct {
	Suite   suite.Name
	Entries []Entry
	Nonce   []byte
	Sealed  []byte
}

func suiteCode(s suite.Name) (uint8, error) {
	switch s {
	case suite.Intl:
		return 1, nil
	case suite.GM:
		return 2, nil
	}
	return 0, fmt.Errorf("imagecrypt: unknown suite %q", s)
}

func suiteFromCode(c uint8) (suite.Name, bool) {
	switch c {
	case 1:
		return suite.Intl, true
	case 2:
		return suite.GM, true
	}
	return "", false
}

// header encodes the blob up to the nonce.
func header(s suite.Name, entries []Entry) ([]byte, error) {
	code, err := suiteCode(s)
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 || len(entries) > MaxRecipients {
		return nil, fmt.Errorf("imagecrypt: %d recipients; between 1 and %d are allowed", len(entries), MaxRecipients)
	}
	b := cryptobyte.NewBuilder(nil)
	b.AddBytes([]byte(magic))
	b.AddUint8(code)
	b.AddUint8(uint8(len(entries)))
	seen := map[string]bool{}
	for _, e := range entries {
		if !ValidKeyID(e.KeyID) {
			return nil, fmt.Errorf("imagecrypt: invalid key id %q", e.KeyID)
		}
		if seen[e.KeyID] {
			return nil, fmt.Errorf("imagecrypt: key id %q given twice", e.KeyID)
		}
		if len(e.Wrapped) == 0 || len(e.Wrapped) > maxWrapped {
			return nil, fmt.Errorf("imagecrypt: wrapped key for %q has %d bytes", e.KeyID, len(e.Wrapped))
		}
		seen[e.KeyID] = true
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.KeyID)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Wrapped) })
	}
	return b.Bytes()
}

// Header is the encoded recipient section: what the sealed options are
// bound to, and what identifies the key set.
func (bl *Blob) Header() ([]byte, error) { return header(bl.Suite, bl.Entries) }

// Marshal encodes the blob.
func (bl *Blob) Marshal() ([]byte, error) {
	h, err := bl.Header()
	if err != nil {
		return nil, err
	}
	if len(bl.Nonce) == 0 || len(bl.Nonce) > 255 || len(bl.Sealed) == 0 || len(bl.Sealed) > maxSealed {
		return nil, fmt.Errorf("imagecrypt: nonce of %d or sealed options of %d bytes out of range", len(bl.Nonce), len(bl.Sealed))
	}
	b := cryptobyte.NewBuilder(h)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(bl.Nonce) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(bl.Sealed) })
	return b.Bytes()
}

// Parse decodes a blob. Every error wraps ErrMalformed and says what was
// wrong; nothing of the input is quoted but key ids.
func Parse(data []byte) (*Blob, error) {
	bad := func(what string) (*Blob, error) { return nil, fmt.Errorf("%w: %s", ErrMalformed, what) }
	s := cryptobyte.String(data)
	var m []byte
	if !s.ReadBytes(&m, len(magic)) || string(m) != magic {
		return bad("not a podkey blob (unknown magic or version)")
	}
	var code, n uint8
	if !s.ReadUint8(&code) || !s.ReadUint8(&n) {
		return bad("truncated header")
	}
	st, ok := suiteFromCode(code)
	if !ok {
		return bad(fmt.Sprintf("unknown suite code %d", code))
	}
	if n == 0 {
		return bad("no recipients")
	}
	bl := &Blob{Suite: st, Entries: make([]Entry, 0, n)}
	seen := map[string]bool{}
	for i := 0; i < int(n); i++ {
		var kid, wrapped cryptobyte.String
		if !s.ReadUint8LengthPrefixed(&kid) || !s.ReadUint16LengthPrefixed(&wrapped) {
			return bad(fmt.Sprintf("recipient %d truncated", i+1))
		}
		if !ValidKeyID(string(kid)) {
			return bad(fmt.Sprintf("recipient %d has an invalid key id", i+1))
		}
		if seen[string(kid)] {
			return bad(fmt.Sprintf("key id %q listed twice", string(kid)))
		}
		if len(wrapped) == 0 || len(wrapped) > maxWrapped {
			return bad(fmt.Sprintf("wrapped key of %q has %d bytes", string(kid), len(wrapped)))
		}
		seen[string(kid)] = true
		bl.Entries = append(bl.Entries, Entry{KeyID: string(kid), Wrapped: append([]byte(nil), wrapped...)})
	}
	var nonce, sealed cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&nonce) || !s.ReadUint16LengthPrefixed(&sealed) {
		return bad("sealed options truncated")
	}
	if len(nonce) == 0 || len(sealed) == 0 || len(sealed) > maxSealed {
		return bad("sealed options empty or too large")
	}
	if !s.Empty() {
		return bad("trailing bytes")
	}
	bl.Nonce, bl.Sealed = append([]byte(nil), nonce...), append([]byte(nil), sealed...)
	return bl, nil
}

// KeySet names the recipient section: the first 16 hex digits of its
// SHA-256. Every layer encrypted in one run shares it; audit records and
// `podkey image inspect` show it, and the node caches by it.
func KeySet(s suite.Name, entries []Entry) (string, error) {
	h, err := header(s, entries)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(h)
	return hex.EncodeToString(sum[:8]), nil
}

// KeyIDs lists the recipients of entries in order.
func KeyIDs(entries []Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.KeyID
	}
	return out
}
