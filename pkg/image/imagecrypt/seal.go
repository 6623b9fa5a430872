package imagecrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"

	"github.com/emmansun/gmsm/sm2"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/pkg/suite"
)

// Recipient is an image key's public half.
type Recipient struct {
	KeyID  string
	Suite  suite.Name
	Public *ecdsa.PublicKey // P-256 for intl, SM2 for gm
}

// ErrUnwrap is returned when a wrapped CEK or the sealed options fail
// authentication: the blob was altered, or the key is not the recipient's.
var ErrUnwrap = errors.New("podkey image key: wrapped key failed authentication")

// Sealer wraps layer options for one set of recipients under one CEK, so
// every layer of an image encrypted in one run shares a recipient section
// (and a node unwraps once per image).
type Sealer struct {
	suite   suite.Name
	entries []Entry
	header  []byte
	aead    cipher.AEAD
	cek     []byte
}

// NewSealer makes a CEK and wraps it for every recipient. All recipients
// must be of one suite: the options are sealed with that suite's AEAD.
func NewSealer(rs []Recipient) (*Sealer, error) {
	if len(rs) == 0 {
		return nil, errors.New("imagecrypt: no recipients")
	}
	st := rs[0].Suite
	cek := make([]byte, st.AEADKeySize())
	if _, err := io.ReadFull(rand.Reader, cek); err != nil {
		return nil, err
	}
	s := &Sealer{suite: st, cek: cek}
	for _, r := range rs {
		if r.Suite != st {
			s.Close()
			return nil, fmt.Errorf("imagecrypt: recipients mix suites %s and %s (encrypt once per suite)", st, r.Suite)
		}
		if r.Public == nil || !st.MatchesKey(r.Public) {
			s.Close()
			return nil, fmt.Errorf("imagecrypt: recipient %q: not a %s public key", r.KeyID, st)
		}
		w, err := wrap(r, cek)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("imagecrypt: recipient %q: %w", r.KeyID, err)
		}
		s.entries = append(s.entries, Entry{KeyID: r.KeyID, Wrapped: w})
	}
	var err error
	if s.header, err = header(st, s.entries); err != nil {
		s.Close()
		return nil, err
	}
	if s.aead, err = st.NewAEAD(cek); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Seal wraps one layer's private options.
func (s *Sealer) Seal(opts []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, err
	}
	bl := Blob{Suite: s.suite, Entries: s.entries, Nonce: nonce, Sealed: s.aead.Seal(nil, nonce, opts, s.header)}
	return bl.Marshal()
}

// KeySet names the sealer's recipient section (see KeySet).
func (s *Sealer) KeySet() string {
	ks, _ := KeySet(s.suite, s.entries)
	return ks
}

// Close zeroes the CEK.
func (s *Sealer) Close() { secmem.Zero(s.cek) }

// Open unseals a layer's options with the CEK unwrapped for its recipient
// section.
func Open(bl *Blob, cek []byte) ([]byte, error) {
	h, err := bl.Header()
	if err != nil {
		return nil, err
	}
	aead, err := bl.Suite.NewAEAD(cek)
	if err != nil {
		return nil, ErrUnwrap
	}
	if len(bl.Nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrMalformed, len(bl.Nonce))
	}
	pt, err := aead.Open(nil, bl.Nonce, bl.Sealed, h)
	if err != nil {
		return nil, ErrUnwrap
	}
	return pt, nil
}

// intl wrapping: ephemeral P-256 point (65 bytes) || AES-256-GCM(KEK, CEK),
// KEK = HKDF-SHA256(ECDH secret, info = label || kid || point), nonce zero
// (every KEK is used once), additional data = kid.
const (
	intlInfo     = "podkey image key v1 intl"
	p256PointLen = 65
)

func wrap(r Recipient, cek []byte) ([]byte, error) {
	if r.Suite == suite.GM {
		return sm2.EncryptASN1(rand.Reader, r.Public, cek)
	}
	pub, err := r.Public.ECDH()
	if err != nil {
		return nil, err
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	z, err := eph.ECDH(pub)
	if err != nil {
		return nil, err
	}
	defer secmem.Zero(z)
	point := eph.PublicKey().Bytes()
	gcm, err := intlKEK(z, r.KeyID, point)
	if err != nil {
		return nil, err
	}
	return gcm.Seal(point, make([]byte, gcm.NonceSize()), cek, []byte(r.KeyID)), nil
}

func intlKEK(z []byte, kid string, point []byte) (cipher.AEAD, error) {
	kek, err := hkdf.Key(sha256.New, z, nil, intlInfo+"\x00"+kid+"\x00"+string(point), 32)
	if err != nil {
		return nil, err
	}
	defer secmem.Zero(kek)
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// IntlPoint is the ephemeral point of an intl entry, for the key holder's
// ECDH (inside the HSM).
func IntlPoint(wrapped []byte) ([]byte, error) {
	if len(wrapped) != p256PointLen+32+16 || wrapped[0] != 4 {
		return nil, fmt.Errorf("%w: intl wrapped key of %d bytes", ErrMalformed, len(wrapped))
	}
	return wrapped[:p256PointLen], nil
}

// UnwrapIntl recovers the CEK of an intl entry from the ECDH secret of the
// recipient's private key and IntlPoint(wrapped).
func UnwrapIntl(kid string, wrapped, z []byte) ([]byte, error) {
	point, err := IntlPoint(wrapped)
	if err != nil {
		return nil, err
	}
	gcm, err := intlKEK(z, kid, point)
	if err != nil {
		return nil, err
	}
	cek, err := gcm.Open(nil, make([]byte, gcm.NonceSize()), wrapped[p256PointLen:], []byte(kid))
	if err != nil || len(cek) != suite.Intl.AEADKeySize() {
		secmem.Zero(cek)
		return nil, ErrUnwrap
	}
	return cek, nil
}

// UnwrapGM recovers the CEK of a gm entry with the recipient's SM2 key.
// Only the ASN.1 ciphertext encoding that Seal writes is accepted.
func UnwrapGM(priv *sm2.PrivateKey, wrapped []byte) ([]byte, error) {
	return UnwrapGMWith(func(ct []byte) ([]byte, error) {
		cek, err := sm2.Decrypt(priv, ct)
		if err != nil {
			return nil, ErrUnwrap
		}
		return cek, nil
	}, wrapped)
}

// UnwrapGMWith is UnwrapGM with the SM2 decryption done elsewhere (by an
// HSM that holds the recipient's key): the same checks of what goes in
// and what comes out. decrypt returns ErrUnwrap for a ciphertext the key
// cannot open; its other errors (the HSM unavailable) pass through.
func UnwrapGMWith(decrypt func(ciphertext []byte) ([]byte, error), wrapped []byte) ([]byte, error) {
	if len(wrapped) == 0 || wrapped[0] != asn1.TagSequence|0x20 {
		return nil, fmt.Errorf("%w: gm wrapped key is not an ASN.1 SM2 ciphertext", ErrMalformed)
	}
	cek, err := decrypt(wrapped)
	if err != nil {
		return nil, err
	}
	if len(cek) != suite.GM.AEADKeySize() {
		secmem.Zero(cek)
		return nil, ErrUnwrap
	}
	return cek, nil
}
