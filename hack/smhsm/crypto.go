package main

/*
#include "smhsm.h"
*/
import "C"

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/asn1"
	"hash"
	"math/big"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/sm4"
)

// defaultMechanisms are the vendor codes the module answers to unless
// PODKEY_SMHSM_MECHANISMS names a table: mechanisms.yaml, which says
// whose header each comes from.
//
//go:embed mechanisms.yaml
var defaultMechanisms []byte

var (
	oidP256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	oidSM2  = []byte{0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d}
)

// mech is a mechanism with its parsed parameter.
type mech struct {
	typ  uint64
	gcm  *gcmParams
	ecdh *ecdhParams
}

type gcmParams struct {
	iv, aad []byte
	tagBits uint64
}

type ecdhParams struct {
	kdf    uint64
	public []byte
}

type operation struct {
	mech mech
	key  *object
	// data accumulates what a digest is over.
	data []byte
}

// mechInfo is a mechanism the module offers: its key sizes and uses.
type mechInfo struct {
	min, max, flags uint64
}

func mechanisms() map[uint64]mechInfo {
	m := state.mechs
	out := map[uint64]mechInfo{
		C.CKM_AES_KEY_GEN:            {16, 32, C.CKF_GENERATE},
		C.CKM_AES_GCM:                {16, 32, C.CKF_ENCRYPT | C.CKF_DECRYPT | C.CKF_WRAP | C.CKF_UNWRAP},
		C.CKM_GENERIC_SECRET_KEY_GEN: {1, 512, C.CKF_GENERATE},
		C.CKM_SHA256_HMAC:            {1, 512, C.CKF_SIGN | C.CKF_VERIFY},
		C.CKM_SHA256:                 {0, 0, C.CKF_DIGEST},
		C.CKM_EC_KEY_PAIR_GEN:        {256, 256, C.CKF_GENERATE_KEY_PAIR | C.CKF_EC_F_P | C.CKF_EC_NAMEDCURVE | C.CKF_EC_UNCOMPRESS},
		C.CKM_ECDSA:                  {256, 256, C.CKF_SIGN | C.CKF_VERIFY | C.CKF_EC_F_P | C.CKF_EC_NAMEDCURVE | C.CKF_EC_UNCOMPRESS},
		C.CKM_ECDH1_DERIVE:           {256, 256, C.CKF_DERIVE | C.CKF_EC_F_P | C.CKF_EC_NAMEDCURVE | C.CKF_EC_UNCOMPRESS},
	}
	add := func(code uint, info mechInfo) {
		if code != 0 {
			out[uint64(code)] = info
		}
	}
	add(m.SM2KeyGen, mechInfo{256, 256, C.CKF_GENERATE_KEY_PAIR})
	add(m.SM2Sign, mechInfo{256, 256, C.CKF_SIGN | C.CKF_VERIFY})
	add(m.SM2Decrypt, mechInfo{256, 256, C.CKF_ENCRYPT | C.CKF_DECRYPT})
	add(m.SM3HMAC, mechInfo{1, 512, C.CKF_SIGN | C.CKF_VERIFY})
	add(m.SM4KeyGen, mechInfo{16, 16, C.CKF_GENERATE})
	add(m.SM4GCM, mechInfo{16, 16, C.CKF_ENCRYPT | C.CKF_DECRYPT | C.CKF_WRAP | C.CKF_UNWRAP})
	return out
}

func mechanismInfo(slot, typ uint64) (mechInfo, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return mechInfo{}, C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	if _, r := tokenDir(slot); r != ok {
		return mechInfo{}, r
	}
	info, found := mechanisms()[typ]
	if !found {
		return mechInfo{}, C.CKR_MECHANISM_INVALID
	}
	return info, ok
}

func mechanismList(slot uint64) ([]uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return nil, C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	if _, r := tokenDir(slot); r != ok {
		return nil, r
	}
	var out []uint64
	for t := range mechanisms() {
		out = append(out, t)
	}
	return out, ok
}

// needKey checks what a mechanism asks of its key: the class, the key
// type, and the use the key's attributes permit.
func needKey(o *object, class, keyType, use uint64) rv {
	if o.class() != class {
		return C.CKR_KEY_TYPE_INCONSISTENT
	}
	if kt, _ := o.attrs.ulong(C.CKA_KEY_TYPE); keyType != ^uint64(0) && kt != keyType {
		return C.CKR_KEY_TYPE_INCONSISTENT
	}
	if !o.attrs.bool(use, false) {
		return C.CKR_KEY_FUNCTION_NOT_PERMITTED
	}
	return ok
}

const anyType = ^uint64(0)

// checkMech verifies that the key can do the mechanism for the kind of
// operation.
func checkMech(kind opKind, m mech, o *object) rv {
	t := state.mechs
	switch {
	case m.typ == C.CKM_SHA256_HMAC || m.typ == uint64(t.SM3HMAC) && t.SM3HMAC != 0:
		if kind != opSign && kind != opVerify {
			return C.CKR_MECHANISM_INVALID
		}
		return needKey(o, C.CKO_SECRET_KEY, anyType, map[opKind]uint64{opSign: C.CKA_SIGN, opVerify: C.CKA_VERIFY}[kind])
	case m.typ == C.CKM_ECDSA || m.typ == uint64(t.SM2Sign) && t.SM2Sign != 0:
		kt := uint64(C.CKK_EC)
		if m.typ != C.CKM_ECDSA {
			kt = uint64(t.SM2KeyType)
		}
		switch kind {
		case opSign:
			return needKey(o, C.CKO_PRIVATE_KEY, kt, C.CKA_SIGN)
		case opVerify:
			return needKey(o, C.CKO_PUBLIC_KEY, kt, C.CKA_VERIFY)
		}
		return C.CKR_MECHANISM_INVALID
	case m.typ == uint64(t.SM2Decrypt) && t.SM2Decrypt != 0:
		switch kind {
		case opEncrypt:
			return needKey(o, C.CKO_PUBLIC_KEY, uint64(t.SM2KeyType), C.CKA_ENCRYPT)
		case opDecrypt:
			return needKey(o, C.CKO_PRIVATE_KEY, uint64(t.SM2KeyType), C.CKA_DECRYPT)
		}
		return C.CKR_MECHANISM_INVALID
	case m.typ == C.CKM_AES_GCM || m.typ == uint64(t.SM4GCM) && t.SM4GCM != 0:
		if m.gcm == nil {
			return C.CKR_MECHANISM_PARAM_INVALID
		}
		kt := uint64(C.CKK_AES)
		if m.typ != C.CKM_AES_GCM {
			kt = uint64(t.SM4KeyType)
		}
		use := map[opKind]uint64{opEncrypt: C.CKA_ENCRYPT, opDecrypt: C.CKA_DECRYPT}[kind]
		if use == 0 {
			return C.CKR_MECHANISM_INVALID
		}
		return needKey(o, C.CKO_SECRET_KEY, kt, use)
	}
	return C.CKR_MECHANISM_INVALID
}

// opInit starts an operation of the kind on the session.
func opInit(sh uint64, kind opKind, m mech, keyHandle uint64) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops[kind] != nil {
		return C.CKR_OPERATION_ACTIVE
	}
	if kind == opDigest {
		if m.typ != C.CKM_SHA256 {
			return C.CKR_MECHANISM_INVALID
		}
		s.ops[kind] = &operation{mech: m}
		return ok
	}
	o, r := getObject(s, keyHandle)
	if r != ok {
		if r == C.CKR_OBJECT_HANDLE_INVALID {
			return C.CKR_KEY_HANDLE_INVALID
		}
		return r
	}
	if r := checkMech(kind, m, o); r != ok {
		return r
	}
	s.ops[kind] = &operation{mech: m, key: o}
	return ok
}

// opRun runs the session's operation of the kind on data. out is nil for
// a length query, which leaves the operation active, as is a result that
// does not fit (CKR_BUFFER_TOO_SMALL); any other answer ends it.
func opRun(sh uint64, kind opKind, data []byte, size func(op *operation) int, run func(op *operation) ([]byte, rv)) ([]byte, int, rv) {
	state.mu.Lock()
	s, r := lookupSession(sh)
	state.mu.Unlock()
	if r != ok {
		return nil, 0, r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.ops[kind]
	if op == nil {
		return nil, 0, C.CKR_OPERATION_NOT_INITIALIZED
	}
	if size != nil {
		return nil, size(op), ok
	}
	delete(s.ops, kind)
	out, r := run(op)
	return out, len(out), r
}

func macHash(m mech) func() hash.Hash {
	if m.typ == C.CKM_SHA256_HMAC {
		return sha256.New
	}
	return sm3.New
}

func isMAC(m mech) bool {
	return m.typ == C.CKM_SHA256_HMAC || m.typ == uint64(state.mechs.SM3HMAC)
}

func signatureSize(op *operation) int {
	if isMAC(op.mech) {
		return 32
	}
	return 64
}

func sign(op *operation, data []byte) ([]byte, rv) {
	key := op.key.attrs[C.CKA_VALUE]
	switch {
	case isMAC(op.mech):
		h := hmac.New(macHash(op.mech), key)
		h.Write(data)
		return h.Sum(nil), ok
	case op.mech.typ == C.CKM_ECDSA:
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), key)
		if err != nil {
			return nil, C.CKR_KEY_HANDLE_INVALID
		}
		der, err := ecdsa.SignASN1(rand.Reader, k, data)
		if err != nil {
			return nil, C.CKR_FUNCTION_FAILED
		}
		return rawSignature(der)
	default: // SM2 over a precomputed e
		if len(data) != 32 {
			return nil, C.CKR_DATA_LEN_RANGE
		}
		k, err := sm2.NewPrivateKey(key)
		if err != nil {
			return nil, C.CKR_KEY_HANDLE_INVALID
		}
		der, err := sm2.SignASN1(rand.Reader, k, data, nil)
		if err != nil {
			return nil, C.CKR_FUNCTION_FAILED
		}
		return rawSignature(der)
	}
}

// rawSignature turns an ASN.1 (r, s) into the r||s PKCS#11 returns.
func rawSignature(der []byte) ([]byte, rv) {
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, C.CKR_FUNCTION_FAILED
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, ok
}

func verify(op *operation, data, sig []byte) rv {
	if isMAC(op.mech) {
		want, _ := sign(op, data)
		if !hmac.Equal(want, sig) {
			return C.CKR_SIGNATURE_INVALID
		}
		return ok
	}
	if len(sig) != 64 {
		return C.CKR_SIGNATURE_LEN_RANGE
	}
	pt, r := ecPoint(op.key.attrs)
	if r != ok {
		return r
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])})
	if err != nil {
		return C.CKR_FUNCTION_FAILED
	}
	var good bool
	if op.mech.typ == C.CKM_ECDSA {
		x, y := elliptic.Unmarshal(elliptic.P256(), pt) //nolint:staticcheck // a public point, checked on the curve
		if x == nil {
			return C.CKR_KEY_HANDLE_INVALID
		}
		good = ecdsa.VerifyASN1(&ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}, data, der)
	} else {
		pub, err := sm2.NewPublicKey(pt)
		if err != nil {
			return C.CKR_KEY_HANDLE_INVALID
		}
		good = sm2.VerifyASN1(pub, data, der)
	}
	if !good {
		return C.CKR_SIGNATURE_INVALID
	}
	return ok
}

// ecPoint is a public key's point, from its DER OCTET STRING.
func ecPoint(a attrs) ([]byte, rv) {
	var pt []byte
	if _, err := asn1.Unmarshal(a[C.CKA_EC_POINT], &pt); err != nil {
		return nil, C.CKR_KEY_HANDLE_INVALID
	}
	return pt, ok
}

func gcmCipher(op *operation) (cipher.AEAD, rv) {
	key := op.key.attrs[C.CKA_VALUE]
	var b cipher.Block
	var err error
	if op.mech.typ == C.CKM_AES_GCM {
		b, err = aes.NewCipher(key)
	} else {
		b, err = sm4.NewCipher(key)
	}
	if err != nil {
		return nil, C.CKR_KEY_SIZE_RANGE
	}
	p := op.mech.gcm
	if len(p.iv) == 0 || p.tagBits < 96 || p.tagBits > 128 || p.tagBits%8 != 0 {
		return nil, C.CKR_MECHANISM_PARAM_INVALID
	}
	var aead cipher.AEAD
	switch {
	case len(p.iv) == 12:
		aead, err = cipher.NewGCMWithTagSize(b, int(p.tagBits/8))
	case p.tagBits == 128:
		aead, err = cipher.NewGCMWithNonceSize(b, len(p.iv))
	default:
		return nil, C.CKR_MECHANISM_PARAM_INVALID
	}
	if err != nil {
		return nil, C.CKR_MECHANISM_PARAM_INVALID
	}
	return aead, ok
}

func isSM2Cipher(m mech) bool {
	return state.mechs.SM2Decrypt != 0 && m.typ == uint64(state.mechs.SM2Decrypt)
}

// sm2Encrypt and sm2Decrypt are SM2 public-key encryption, the ASN.1
// ciphertext of GM/T 0009.
func sm2Encrypt(op *operation, data []byte) ([]byte, rv) {
	pt, r := ecPoint(op.key.attrs)
	if r != ok {
		return nil, r
	}
	pub, err := sm2.NewPublicKey(pt)
	if err != nil {
		return nil, C.CKR_KEY_HANDLE_INVALID
	}
	ct, err := sm2.EncryptASN1(rand.Reader, pub, data)
	if err != nil {
		return nil, C.CKR_FUNCTION_FAILED
	}
	return ct, ok
}

func sm2Decrypt(op *operation, data []byte) ([]byte, rv) {
	k, err := sm2.NewPrivateKey(op.key.attrs[C.CKA_VALUE])
	if err != nil {
		return nil, C.CKR_KEY_HANDLE_INVALID
	}
	pt, err := sm2.Decrypt(k, data)
	if err != nil {
		return nil, C.CKR_ENCRYPTED_DATA_INVALID
	}
	return pt, ok
}

func encrypt(op *operation, data []byte) ([]byte, rv) {
	if isSM2Cipher(op.mech) {
		return sm2Encrypt(op, data)
	}
	aead, r := gcmCipher(op)
	if r != ok {
		return nil, r
	}
	return aead.Seal(nil, op.mech.gcm.iv, data, op.mech.gcm.aad), ok
}

func decrypt(op *operation, data []byte) ([]byte, rv) {
	if isSM2Cipher(op.mech) {
		return sm2Decrypt(op, data)
	}
	aead, r := gcmCipher(op)
	if r != ok {
		return nil, r
	}
	pt, err := aead.Open(nil, op.mech.gcm.iv, data, op.mech.gcm.aad)
	if err != nil {
		return nil, C.CKR_ENCRYPTED_DATA_INVALID
	}
	return pt, ok
}

func gcmSize(op *operation, n int, sealing bool) int {
	if isSM2Cipher(op.mech) {
		if sealing {
			return n + 2*32 + 32 + 24 // the coordinates, the hash, ASN.1 framing at most
		}
		return n // an upper bound; the answer gives the length
	}
	tag := int(op.mech.gcm.tagBits / 8)
	if sealing {
		return n + tag
	}
	return max(n-tag, 0)
}

// generateKey makes a secret key on the session.
func generateKey(sh uint64, m mech, tmpl attrs) (uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return 0, r
	}
	a := tmpl.clone()
	n, hasLen := a.ulong(C.CKA_VALUE_LEN)
	var kt uint64
	switch {
	case m.typ == C.CKM_AES_KEY_GEN:
		if !hasLen {
			return 0, C.CKR_TEMPLATE_INCOMPLETE
		}
		if n != 16 && n != 24 && n != 32 {
			return 0, C.CKR_KEY_SIZE_RANGE
		}
		kt = C.CKK_AES
	case m.typ == C.CKM_GENERIC_SECRET_KEY_GEN:
		if !hasLen {
			return 0, C.CKR_TEMPLATE_INCOMPLETE
		}
		if n == 0 || n > 512 {
			return 0, C.CKR_KEY_SIZE_RANGE
		}
		kt = C.CKK_GENERIC_SECRET
	case m.typ == uint64(state.mechs.SM4KeyGen) && state.mechs.SM4KeyGen != 0:
		if hasLen && n != 16 {
			return 0, C.CKR_KEY_SIZE_RANGE
		}
		n, kt = 16, uint64(state.mechs.SM4KeyType)
	default:
		return 0, C.CKR_MECHANISM_INVALID
	}
	if c, set := a.ulong(C.CKA_CLASS); set && c != C.CKO_SECRET_KEY {
		return 0, C.CKR_TEMPLATE_INCONSISTENT
	}
	if t, set := a.ulong(C.CKA_KEY_TYPE); set && t != kt {
		return 0, C.CKR_TEMPLATE_INCONSISTENT
	}
	v := make([]byte, n)
	if _, err := rand.Read(v); err != nil {
		return 0, C.CKR_FUNCTION_FAILED
	}
	a[C.CKA_CLASS], a[C.CKA_KEY_TYPE], a[C.CKA_VALUE], a[C.CKA_VALUE_LEN] = ulong(C.CKO_SECRET_KEY), ulong(kt), v, ulong(n)
	keyDefaults(a, true)
	return addObject(s, a)
}

// generateKeyPair makes a P-256 or SM2 key pair.
func generateKeyPair(sh uint64, m mech, pubTmpl, privTmpl attrs) (uint64, uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return 0, 0, r
	}
	pub, priv := pubTmpl.clone(), privTmpl.clone()
	var kt uint64
	var d, point []byte
	switch {
	case m.typ == C.CKM_EC_KEY_PAIR_GEN:
		if p, set := pub[C.CKA_EC_PARAMS]; !set {
			return 0, 0, C.CKR_TEMPLATE_INCOMPLETE
		} else if !bytes.Equal(p, oidP256) {
			return 0, 0, C.CKR_CURVE_NOT_SUPPORTED
		}
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return 0, 0, C.CKR_FUNCTION_FAILED
		}
		kt, d, point = C.CKK_EC, k.Bytes(), k.PublicKey().Bytes()
		pub[C.CKA_EC_PARAMS] = oidP256
	case m.typ == uint64(state.mechs.SM2KeyGen) && state.mechs.SM2KeyGen != 0:
		if p, set := pub[C.CKA_EC_PARAMS]; set && !bytes.Equal(p, oidSM2) {
			return 0, 0, C.CKR_CURVE_NOT_SUPPORTED
		}
		k, err := sm2.GenerateKey(rand.Reader)
		if err != nil {
			return 0, 0, C.CKR_FUNCTION_FAILED
		}
		kt = uint64(state.mechs.SM2KeyType)
		d = k.D.FillBytes(make([]byte, 32))
		point = elliptic.Marshal(k.Curve, k.X, k.Y) //nolint:staticcheck // the uncompressed point PKCS#11 wants
		pub[C.CKA_EC_PARAMS] = oidSM2
	default:
		return 0, 0, C.CKR_MECHANISM_INVALID
	}
	ptDER, _ := asn1.Marshal(point)
	pub[C.CKA_CLASS], pub[C.CKA_KEY_TYPE], pub[C.CKA_EC_POINT] = ulong(C.CKO_PUBLIC_KEY), ulong(kt), ptDER
	pub[C.CKA_LOCAL] = boolean(true)
	priv[C.CKA_CLASS], priv[C.CKA_KEY_TYPE], priv[C.CKA_VALUE] = ulong(C.CKO_PRIVATE_KEY), ulong(kt), d
	priv[C.CKA_EC_PARAMS] = pub[C.CKA_EC_PARAMS]
	keyDefaults(priv, true)
	ph, r := addObject(s, pub)
	if r != ok {
		return 0, 0, r
	}
	kh, r := addObject(s, priv)
	if r != ok {
		return 0, 0, r
	}
	return ph, kh, ok
}

// deriveKey is ECDH on P-256 (CKM_ECDH1_DERIVE, no KDF): the shared x
// coordinate becomes a new secret key.
func deriveKey(sh uint64, m mech, base uint64, tmpl attrs) (uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return 0, r
	}
	if m.typ != C.CKM_ECDH1_DERIVE {
		return 0, C.CKR_MECHANISM_INVALID
	}
	if m.ecdh == nil || m.ecdh.kdf != C.CKD_NULL {
		return 0, C.CKR_MECHANISM_PARAM_INVALID
	}
	o, r := getObject(s, base)
	if r != ok {
		return 0, C.CKR_KEY_HANDLE_INVALID
	}
	if r := needKey(o, C.CKO_PRIVATE_KEY, C.CKK_EC, C.CKA_DERIVE); r != ok {
		return 0, r
	}
	k, err := ecdh.P256().NewPrivateKey(o.attrs[C.CKA_VALUE])
	if err != nil {
		return 0, C.CKR_KEY_HANDLE_INVALID
	}
	// The peer's point, raw (04 || X || Y) or in a DER OCTET STRING; a
	// raw point also begins with the OCTET STRING tag, so only a DER
	// encoding of exactly a point counts as one.
	peerBytes := m.ecdh.public
	var inner []byte
	if rest, err := asn1.Unmarshal(peerBytes, &inner); err == nil && len(rest) == 0 && len(inner) == 65 {
		peerBytes = inner
	}
	peer, err := ecdh.P256().NewPublicKey(peerBytes)
	if err != nil {
		return 0, C.CKR_MECHANISM_PARAM_INVALID
	}
	secret, err := k.ECDH(peer)
	if err != nil {
		return 0, C.CKR_MECHANISM_PARAM_INVALID
	}
	a := tmpl.clone()
	n, hasLen := a.ulong(C.CKA_VALUE_LEN)
	if !hasLen {
		n = uint64(len(secret))
	}
	if n == 0 || n > uint64(len(secret)) {
		return 0, C.CKR_TEMPLATE_INCONSISTENT
	}
	if _, set := a[C.CKA_KEY_TYPE]; !set {
		a[C.CKA_KEY_TYPE] = ulong(C.CKK_GENERIC_SECRET)
	}
	a[C.CKA_CLASS], a[C.CKA_VALUE], a[C.CKA_VALUE_LEN] = ulong(C.CKO_SECRET_KEY), secret[:n], ulong(n)
	keyDefaults(a, false)
	return addObject(s, a)
}

// wrapKey encrypts a secret key's value under a wrapping key with a GCM
// mechanism; a key that is not extractable never leaves.
func wrapKey(sh uint64, m mech, wrapping, target uint64) ([]byte, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return nil, r
	}
	w, r := getObject(s, wrapping)
	if r != ok {
		return nil, C.CKR_WRAPPING_KEY_HANDLE_INVALID
	}
	if r := wrapCheck(m, w, C.CKA_WRAP); r != ok {
		return nil, r
	}
	k, r := getObject(s, target)
	if r != ok {
		return nil, C.CKR_KEY_HANDLE_INVALID
	}
	if k.class() != C.CKO_SECRET_KEY {
		return nil, C.CKR_KEY_NOT_WRAPPABLE
	}
	if !k.attrs.bool(C.CKA_EXTRACTABLE, false) {
		return nil, C.CKR_KEY_UNEXTRACTABLE
	}
	return encrypt(&operation{mech: m, key: w}, k.attrs[C.CKA_VALUE])
}

func wrapCheck(m mech, w *object, use uint64) rv {
	kind := opEncrypt
	r := checkMech(kind, m, w)
	if r == C.CKR_KEY_FUNCTION_NOT_PERMITTED || r == ok {
		if !w.attrs.bool(use, false) {
			return C.CKR_KEY_FUNCTION_NOT_PERMITTED
		}
		return ok
	}
	return r
}

func unwrapKey(sh uint64, m mech, unwrapping uint64, wrapped []byte, tmpl attrs) (uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return 0, r
	}
	w, r := getObject(s, unwrapping)
	if r != ok {
		return 0, C.CKR_UNWRAPPING_KEY_HANDLE_INVALID
	}
	if r := wrapCheck(m, w, C.CKA_UNWRAP); r != ok {
		return 0, r
	}
	v, r := decrypt(&operation{mech: m, key: w}, wrapped)
	if r != ok {
		return 0, C.CKR_WRAPPED_KEY_INVALID
	}
	a := tmpl.clone()
	if c, _ := a.ulong(C.CKA_CLASS); c != C.CKO_SECRET_KEY {
		return 0, C.CKR_TEMPLATE_INCONSISTENT
	}
	if _, set := a[C.CKA_KEY_TYPE]; !set {
		return 0, C.CKR_TEMPLATE_INCOMPLETE
	}
	a[C.CKA_VALUE], a[C.CKA_VALUE_LEN] = v, ulong(uint64(len(v)))
	keyDefaults(a, false)
	return addObject(s, a)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

func randRead(b []byte) (int, error) { return rand.Read(b) }
