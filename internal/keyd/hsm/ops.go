package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/emmansun/gmsm/sm2"
	"github.com/miekg/pkcs11"
)

// HMACSHA256 computes HMAC-SHA256 over data with a secret token key.
func (t *Token) HMACSHA256(ctx context.Context, label string, data []byte) ([]byte, error) {
	return t.Sign(ctx, pkcs11.CKM_SHA256_HMAC, SecretKey, label, data)
}

// Sign runs C_Sign with any mechanism (including vendor codes from the
// mechanism table) and a key found by class and label.
func (t *Token) Sign(ctx context.Context, mech uint, class Class, label string, data []byte) ([]byte, error) {
	var out []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, class, label)
		if err != nil {
			return err
		}
		if err := t.p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, h); err != nil {
			return err
		}
		out, err = t.p.Sign(sh, data)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: sign with %q (mechanism %s): %w", label, t.mechanismName(mech), err)
	}
	return out, nil
}

// mechanismName names a mechanism in an error: the PKCS#11 name of a
// standard one, the table's name and the code of a vendor one.
func (t *Token) mechanismName(m uint) string {
	v := t.cfg.Mechanisms
	for name, code := range map[string]uint{"sm3Hmac": v.SM3HMAC, "sm2Sign": v.SM2Sign, "sm2Decrypt": v.SM2Decrypt, "sm4Gcm": v.SM4GCM} {
		if code != 0 && code == m {
			return fmt.Sprintf("%s %#x", name, m)
		}
	}
	return standardMechanismName(m)
}

func standardMechanismName(m uint) string {
	switch m {
	case pkcs11.CKM_SHA256_HMAC:
		return "CKM_SHA256_HMAC"
	case pkcs11.CKM_ECDSA:
		return "CKM_ECDSA"
	case pkcs11.CKM_AES_GCM:
		return "CKM_AES_GCM"
	case pkcs11.CKM_ECDH1_DERIVE:
		return "CKM_ECDH1_DERIVE"
	}
	return fmt.Sprintf("%#x", m)
}

// gcmName names the GCM mechanisms a KEK may use.
func (t *Token) gcmName() string {
	if c := t.cfg.Mechanisms.SM4GCM; c != 0 {
		return fmt.Sprintf("CKM_AES_GCM or sm4Gcm %#x", c)
	}
	return "CKM_AES_GCM"
}

// gcmIVSize and gcmTagBits fix podkey's AES-GCM wrapping format:
// iv (12 bytes) || ciphertext || tag (16 bytes).
const (
	gcmIVSize  = 12
	gcmTagBits = 128
)

// EncryptGCM encrypts under a token AES key with AES-256-GCM, or an SM4
// key with the table's SM4-GCM, and a fresh random IV; the result is iv || ciphertext || tag. aad binds the context.
func (t *Token) EncryptGCM(ctx context.Context, label string, plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, gcmIVSize)
	if _, err := io.ReadFull(rand.Reader, iv); err != nil {
		return nil, err
	}
	var out []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, SecretKey, label)
		if err != nil {
			return err
		}
		mech, err := t.gcmMechanism(sh, h, label)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(iv, aad, gcmTagBits)
		defer params.Free()
		if err := t.p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, params)}, h); err != nil {
			return err
		}
		ct, err := t.p.Encrypt(sh, plaintext)
		if err != nil {
			return err
		}
		out = append(append(make([]byte, 0, len(iv)+len(ct)), iv...), ct...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: encrypt with %q (GCM, mechanism %s): %w", label, t.gcmName(), err)
	}
	return out, nil
}

// ErrDecrypt is returned when a wrapped blob fails authentication: it was
// altered, or is bound to another context.
var ErrDecrypt = errors.New("hsm: wrapped value failed authentication")

// DecryptGCM reverses EncryptGCM.
func (t *Token) DecryptGCM(ctx context.Context, label string, blob, aad []byte) ([]byte, error) {
	if len(blob) < gcmIVSize+gcmTagBits/8 {
		return nil, ErrDecrypt
	}
	iv, ct := blob[:gcmIVSize], blob[gcmIVSize:]
	var out []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, SecretKey, label)
		if err != nil {
			return err
		}
		mech, err := t.gcmMechanism(sh, h, label)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(iv, aad, gcmTagBits)
		defer params.Free()
		if err := t.p.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, params)}, h); err != nil {
			return err
		}
		out, err = t.p.Decrypt(sh, ct)
		return err
	})
	if err != nil {
		// SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR.
		if isCode(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID) || isCode(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE) ||
			isCode(err, pkcs11.CKR_GENERAL_ERROR) {
			return nil, ErrDecrypt
		}
		return nil, fmt.Errorf("hsm: decrypt with %q (GCM, mechanism %s): %w", label, t.gcmName(), err)
	}
	return out, nil
}

// ECPublicKey reads the public half of a P-256 key pair.
func (t *Token) ECPublicKey(ctx context.Context, label string) (*ecdsa.PublicKey, error) {
	raw, err := t.ecPoint(ctx, label)
	if err != nil {
		return nil, err
	}
	pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("hsm: public key %q: %w", label, err)
	}
	return pk, nil
}

// ecPoint reads a public key's uncompressed point.
func (t *Token) ecPoint(ctx context.Context, label string) ([]byte, error) {
	var point []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, PublicKey, label)
		if err != nil {
			return err
		}
		attrs, err := t.attributes(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return err
		}
		point = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: public key %q: %w", label, err)
	}
	// CKA_EC_POINT is a DER OCTET STRING around the uncompressed point.
	var raw []byte
	if rest, err := asn1.Unmarshal(point, &raw); err != nil || len(rest) != 0 {
		raw = point
	}
	return raw, nil
}

// ECDH computes the P-256 shared secret (the x coordinate, 32 bytes) of
// the token's key pair with the label and a peer's uncompressed point
// (CKM_ECDH1_DERIVE, no KDF). The private key never leaves the token; the
// secret exists on it only as a session object, destroyed before return.
func (t *Token) ECDH(ctx context.Context, label string, peer []byte) ([]byte, error) {
	var out []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, PrivateKey, label)
		if err != nil {
			return err
		}
		params := pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer)
		secret, err := t.p.DeriveKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, params)}, h,
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			})
		if err != nil {
			return err
		}
		defer t.p.DestroyObject(sh, secret)
		attrs, err := t.p.GetAttributeValue(sh, secret, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return err
		}
		out = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: key agreement with %q (mechanism CKM_ECDH1_DERIVE): %w", label, err)
	}
	return out, nil
}

// ECDSASigner is a crypto.Signer whose private key never leaves the token.
type ECDSASigner struct {
	t     *Token
	label string
	pub   *ecdsa.PublicKey
}

// ECDSASigner returns a signer for the P-256 key pair with the label.
func (t *Token) ECDSASigner(ctx context.Context, label string) (*ECDSASigner, error) {
	pub, err := t.ECPublicKey(ctx, label)
	if err != nil {
		return nil, err
	}
	return &ECDSASigner{t: t, label: label, pub: pub}, nil
}

// Public implements crypto.Signer.
func (s *ECDSASigner) Public() crypto.PublicKey { return s.pub }

// Sign implements crypto.Signer: digest is signed with CKM_ECDSA inside the
// token and returned ASN.1-encoded as crypto/x509 expects.
func (s *ECDSASigner) Sign(_ io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	return s.SignContext(context.Background(), digest)
}

// SignContext is Sign with a context for the session wait.
func (s *ECDSASigner) SignContext(ctx context.Context, digest []byte) ([]byte, error) {
	rs, err := s.t.Sign(ctx, pkcs11.CKM_ECDSA, PrivateKey, s.label, digest)
	if err != nil {
		return nil, err
	}
	if len(rs)%2 != 0 {
		return nil, fmt.Errorf("hsm: ECDSA signature of odd length %d", len(rs))
	}
	return rawToASN1(rs)
}

// rawToASN1 turns the r||s of PKCS#11 EC signatures into the ASN.1
// SEQUENCE of two INTEGERs that X.509 and JOSE verifiers take.
func rawToASN1(rs []byte) ([]byte, error) {
	n := len(rs) / 2
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rs[:n]), new(big.Int).SetBytes(rs[n:])})
}

// SM2Signer is a crypto.Signer whose SM2 private key never leaves the
// token: keyd computes e (SM3 over Z and the message, with the default
// ID of GB/T 32918) and the token signs it with the table's sm2Sign
// mechanism (an SM2 signature over a precomputed e, r||s).
type SM2Signer struct {
	t     *Token
	label string
	pub   *ecdsa.PublicKey
}

// SM2Signer returns a signer for the SM2 key pair with the label.
func (t *Token) SM2Signer(ctx context.Context, label string) (*SM2Signer, error) {
	if t.cfg.Mechanisms.SM2Sign == 0 {
		return nil, fmt.Errorf("hsm: SM2 key %q: the mechanism table has no sm2Sign", label)
	}
	pub, err := t.SM2PublicKey(ctx, label)
	if err != nil {
		return nil, err
	}
	return &SM2Signer{t: t, label: label, pub: pub}, nil
}

// SM2PublicKey reads the public half of an SM2 key pair.
func (t *Token) SM2PublicKey(ctx context.Context, label string) (*ecdsa.PublicKey, error) {
	raw, err := t.ecPoint(ctx, label)
	if err != nil {
		return nil, err
	}
	pub, err := sm2.NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("hsm: SM2 public key %q: %w", label, err)
	}
	return pub, nil
}

// SM2Decrypt decrypts an SM2 ciphertext (ASN.1) with the token's SM2
// private key through the table's sm2Decrypt. A ciphertext the key did
// not encrypt fails with ErrDecrypt.
func (t *Token) SM2Decrypt(ctx context.Context, label string, ciphertext []byte) ([]byte, error) {
	mech := t.cfg.Mechanisms.SM2Decrypt
	if mech == 0 {
		return nil, fmt.Errorf("hsm: SM2 key %q: the mechanism table has no sm2Decrypt", label)
	}
	var out []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, PrivateKey, label)
		if err != nil {
			return err
		}
		if err := t.p.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, h); err != nil {
			return err
		}
		out, err = t.p.Decrypt(sh, ciphertext)
		return err
	})
	if err != nil {
		if isCode(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID) || isCode(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE) {
			return nil, ErrDecrypt
		}
		return nil, fmt.Errorf("hsm: SM2 decrypt with %q (mechanism sm2Decrypt %#x): %w", label, mech, err)
	}
	return out, nil
}

// Public implements crypto.Signer.
func (s *SM2Signer) Public() crypto.PublicKey { return s.pub }

// Sign implements crypto.Signer as gmsm's SM2 keys do: with
// sm2.DefaultSM2SignerOpts, msg is the message (the default ID); with
// other options, it is e itself. An SM2 option with another ID is
// refused, as its ID cannot be read.
func (s *SM2Signer) Sign(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	e := msg
	switch o := opts.(type) {
	case *sm2.SM2SignerOption:
		if o != sm2.DefaultSM2SignerOpts {
			return nil, fmt.Errorf("hsm: SM2 key %q: only the default signer ID is supported", s.label)
		}
		var err error
		if e, err = sm2.CalculateSM2Hash(s.pub, msg, nil); err != nil {
			return nil, err
		}
	}
	if len(e) != 32 {
		return nil, fmt.Errorf("hsm: SM2 key %q: e must be 32 bytes, got %d", s.label, len(e))
	}
	rs, err := s.t.Sign(context.Background(), s.t.cfg.Mechanisms.SM2Sign, PrivateKey, s.label, e)
	if err != nil {
		return nil, err
	}
	if len(rs) != 64 {
		return nil, fmt.Errorf("hsm: SM2 key %q: signature of %d bytes, want r||s of 64", s.label, len(rs))
	}
	return rawToASN1(rs)
}

// Random returns n bytes from the module's random number generator
// (C_GenerateRandom).
func (t *Token) Random(ctx context.Context, n int) ([]byte, error) {
	var out []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		out, err = t.p.GenerateRandom(sh, n)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: generate random: %w", err)
	}
	if len(out) != n {
		return nil, fmt.Errorf("hsm: generate random: %d bytes of %d", len(out), n)
	}
	return out, nil
}
