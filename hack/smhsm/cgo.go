// Command smhsm is podkey's development PKCS#11 module with SM2, SM3 and
// SM4 (build it with -buildmode=c-shared; see docs/operations.md). It is
// for development and tests, never for production: its keys are files
// on the host, protected by file permissions only.
package main

/*
#cgo CFLAGS: -I${SRCDIR}
#include "smhsm.h"
*/
import "C"

import (
	"bytes"
	"unsafe"
)

func main() {}

func goBytes(p C.CK_BYTE_PTR, n C.CK_ULONG) []byte {
	if p == nil || n == 0 {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n))
}

// putBytes answers the two-call convention: the length alone when out
// is NULL, CKR_BUFFER_TOO_SMALL when it does not fit.
func putBytes(v []byte, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR) rv {
	if outLen == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	if out == nil {
		*outLen = C.CK_ULONG(len(v))
		return ok
	}
	if uint64(*outLen) < uint64(len(v)) {
		*outLen = C.CK_ULONG(len(v))
		return C.CKR_BUFFER_TOO_SMALL
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(out)), len(v)), v)
	*outLen = C.CK_ULONG(len(v))
	return ok
}

func template(p C.CK_ATTRIBUTE_PTR, n C.CK_ULONG) (attrs, rv) {
	a := attrs{}
	if n == 0 {
		return a, ok
	}
	if p == nil {
		return nil, C.CKR_ARGUMENTS_BAD
	}
	for _, at := range unsafe.Slice(p, int(n)) {
		if at.pValue == nil && at.ulValueLen != 0 {
			return nil, C.CKR_ATTRIBUTE_VALUE_INVALID
		}
		a[uint64(at._type)] = goBytes(C.CK_BYTE_PTR(at.pValue), at.ulValueLen)
		if a[uint64(at._type)] == nil {
			a[uint64(at._type)] = []byte{}
		}
	}
	return a, ok
}

func mechanismOf(p C.CK_MECHANISM_PTR) (mech, rv) {
	if p == nil {
		return mech{}, C.CKR_ARGUMENTS_BAD
	}
	m := mech{typ: uint64(p.mechanism)}
	if m.typ == C.CKM_AES_GCM || (state.mechs.SM4GCM != 0 && m.typ == uint64(state.mechs.SM4GCM)) {
		if p.pParameter == nil || p.ulParameterLen != C.sizeof_CK_GCM_PARAMS {
			return mech{}, C.CKR_MECHANISM_PARAM_INVALID
		}
		g := (*C.CK_GCM_PARAMS)(p.pParameter)
		m.gcm = &gcmParams{iv: goBytes(g.pIv, g.ulIvLen), aad: goBytes(g.pAAD, g.ulAADLen), tagBits: uint64(g.ulTagBits)}
	}
	if m.typ == C.CKM_ECDH1_DERIVE {
		if p.pParameter == nil || p.ulParameterLen != C.sizeof_CK_ECDH1_DERIVE_PARAMS {
			return mech{}, C.CKR_MECHANISM_PARAM_INVALID
		}
		e := (*C.CK_ECDH1_DERIVE_PARAMS)(p.pParameter)
		m.ecdh = &ecdhParams{kdf: uint64(e.kdf), public: goBytes(e.pPublicData, e.ulPublicDataLen)}
	}
	return m, ok
}

// padded fills a fixed-size PKCS#11 text field with s, blank-padded.
func padded(dst []C.CK_UTF8CHAR, s string) {
	b := bytes.Repeat([]byte{' '}, len(dst))
	copy(b, s)
	for i := range dst {
		dst[i] = C.CK_UTF8CHAR(b[i])
	}
}

//export goInitialize
func goInitialize(args C.CK_VOID_PTR) C.CK_RV {
	if args != nil {
		a := (*C.CK_C_INITIALIZE_ARGS)(args)
		// Go's own locking serves any application threads; a module that
		// cannot use OS locking would refuse here.
		if a.pReserved != nil {
			return C.CKR_ARGUMENTS_BAD
		}
	}
	return C.CK_RV(initialize())
}

//export goFinalize
func goFinalize(reserved C.CK_VOID_PTR) C.CK_RV {
	if reserved != nil {
		return C.CKR_ARGUMENTS_BAD
	}
	return C.CK_RV(finalize())
}

//export goGetInfo
func goGetInfo(p C.CK_INFO_PTR) C.CK_RV {
	if p == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	state.mu.Lock()
	in := state.initialized
	state.mu.Unlock()
	if !in {
		return C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	p.cryptokiVersion = C.CK_VERSION{major: 2, minor: 40}
	padded(p.manufacturerID[:], "podkey")
	p.flags = 0
	padded(p.libraryDescription[:], "podkey SM development module")
	p.libraryVersion = C.CK_VERSION{major: 1, minor: 0}
	return C.CKR_OK
}

//export goGetSlotList
func goGetSlotList(present C.CK_BBOOL, list C.CK_SLOT_ID_PTR, count C.CK_ULONG_PTR) C.CK_RV {
	if count == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	ids, r := slotList()
	if r != ok {
		return C.CK_RV(r)
	}
	return putList(ids, list, count, func(v uint64) C.CK_SLOT_ID { return C.CK_SLOT_ID(v) })
}

// putList answers a list under the two-call convention: the count alone
// when list is NULL, CKR_BUFFER_TOO_SMALL when it does not fit.
func putList[T any](vals []uint64, list *T, count C.CK_ULONG_PTR, conv func(uint64) T) C.CK_RV {
	if list == nil {
		*count = C.CK_ULONG(len(vals))
		return C.CKR_OK
	}
	if int(*count) < len(vals) {
		*count = C.CK_ULONG(len(vals))
		return C.CKR_BUFFER_TOO_SMALL
	}
	out := unsafe.Slice(list, len(vals))
	for i, v := range vals {
		out[i] = conv(v)
	}
	*count = C.CK_ULONG(len(vals))
	return C.CKR_OK
}

//export goGetSlotInfo
func goGetSlotInfo(slot C.CK_SLOT_ID, p C.CK_SLOT_INFO_PTR) C.CK_RV {
	if p == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	if _, r := getTokenInfo(uint64(slot)); r != ok {
		return C.CK_RV(r)
	}
	padded(p.slotDescription[:], "podkey SM development slot")
	padded(p.manufacturerID[:], "podkey")
	p.flags = C.CKF_TOKEN_PRESENT
	p.hardwareVersion = C.CK_VERSION{major: 1}
	p.firmwareVersion = C.CK_VERSION{major: 1}
	return C.CKR_OK
}

//export goGetTokenInfo
func goGetTokenInfo(slot C.CK_SLOT_ID, p C.CK_TOKEN_INFO_PTR) C.CK_RV {
	if p == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	ti, r := getTokenInfo(uint64(slot))
	if r != ok {
		return C.CK_RV(r)
	}
	padded(p.label[:], ti.label)
	padded(p.manufacturerID[:], "podkey")
	padded(p.model[:], "SM dev module")
	padded(p.serialNumber[:], ti.serial)
	p.flags = C.CKF_RNG | C.CKF_LOGIN_REQUIRED
	if ti.initialized {
		p.flags |= C.CKF_TOKEN_INITIALIZED
	}
	if ti.userPIN {
		p.flags |= C.CKF_USER_PIN_INITIALIZED
	}
	p.ulMaxSessionCount, p.ulMaxRwSessionCount = C.CK_EFFECTIVELY_INFINITE, C.CK_EFFECTIVELY_INFINITE
	p.ulSessionCount, p.ulRwSessionCount = C.CK_ULONG(ti.sessions), C.CK_ULONG(ti.rwss)
	p.ulMaxPinLen, p.ulMinPinLen = 255, 4
	p.ulTotalPublicMemory, p.ulFreePublicMemory = C.CK_UNAVAILABLE_INFORMATION, C.CK_UNAVAILABLE_INFORMATION
	p.ulTotalPrivateMemory, p.ulFreePrivateMemory = C.CK_UNAVAILABLE_INFORMATION, C.CK_UNAVAILABLE_INFORMATION
	p.hardwareVersion = C.CK_VERSION{major: 1}
	p.firmwareVersion = C.CK_VERSION{major: 1}
	for i := range p.utcTime {
		p.utcTime[i] = ' '
	}
	return C.CKR_OK
}

//export goGetMechanismList
func goGetMechanismList(slot C.CK_SLOT_ID, list C.CK_MECHANISM_TYPE_PTR, count C.CK_ULONG_PTR) C.CK_RV {
	if count == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	ms, r := mechanismList(uint64(slot))
	if r != ok {
		return C.CK_RV(r)
	}
	return putList(ms, list, count, func(v uint64) C.CK_MECHANISM_TYPE { return C.CK_MECHANISM_TYPE(v) })
}

//export goGetMechanismInfo
func goGetMechanismInfo(slot C.CK_SLOT_ID, typ C.CK_MECHANISM_TYPE, p C.CK_MECHANISM_INFO_PTR) C.CK_RV {
	if p == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	info, r := mechanismInfo(uint64(slot), uint64(typ))
	if r != ok {
		return C.CK_RV(r)
	}
	p.ulMinKeySize, p.ulMaxKeySize, p.flags = C.CK_ULONG(info.min), C.CK_ULONG(info.max), C.CK_FLAGS(info.flags)
	return C.CKR_OK
}

//export goInitToken
func goInitToken(slot C.CK_SLOT_ID, pin C.CK_UTF8CHAR_PTR, pinLen C.CK_ULONG, label C.CK_UTF8CHAR_PTR) C.CK_RV {
	if pin == nil || label == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	l := goBytes(C.CK_BYTE_PTR(label), 32)
	return C.CK_RV(initToken(uint64(slot), goBytes(C.CK_BYTE_PTR(pin), pinLen), string(l)))
}

//export goInitPIN
func goInitPIN(h C.CK_SESSION_HANDLE, pin C.CK_UTF8CHAR_PTR, pinLen C.CK_ULONG) C.CK_RV {
	if pin == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	return C.CK_RV(initPIN(uint64(h), goBytes(C.CK_BYTE_PTR(pin), pinLen)))
}

//export goOpenSession
func goOpenSession(slot C.CK_SLOT_ID, flags C.CK_FLAGS, app C.CK_VOID_PTR, notify C.CK_NOTIFY, out C.CK_SESSION_HANDLE_PTR) C.CK_RV {
	if out == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	h, r := openSession(uint64(slot), uint64(flags))
	if r == ok {
		*out = C.CK_SESSION_HANDLE(h)
	}
	return C.CK_RV(r)
}

//export goCloseSession
func goCloseSession(h C.CK_SESSION_HANDLE) C.CK_RV { return C.CK_RV(closeSession(uint64(h))) }

//export goCloseAllSessions
func goCloseAllSessions(slot C.CK_SLOT_ID) C.CK_RV { return C.CK_RV(closeAllSessions(uint64(slot))) }

//export goGetSessionInfo
func goGetSessionInfo(h C.CK_SESSION_HANDLE, p C.CK_SESSION_INFO_PTR) C.CK_RV {
	if p == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	slot, st, flags, r := sessionState(uint64(h))
	if r != ok {
		return C.CK_RV(r)
	}
	p.slotID, p.state, p.flags, p.ulDeviceError = C.CK_SLOT_ID(slot), C.CK_STATE(st), C.CK_FLAGS(flags), 0
	return C.CKR_OK
}

//export goLogin
func goLogin(h C.CK_SESSION_HANDLE, user C.CK_USER_TYPE, pin C.CK_UTF8CHAR_PTR, pinLen C.CK_ULONG) C.CK_RV {
	if pin == nil && pinLen != 0 {
		return C.CKR_ARGUMENTS_BAD
	}
	return C.CK_RV(login(uint64(h), uint64(user), goBytes(C.CK_BYTE_PTR(pin), pinLen)))
}

//export goLogout
func goLogout(h C.CK_SESSION_HANDLE) C.CK_RV { return C.CK_RV(logout(uint64(h))) }

//export goCreateObject
func goCreateObject(h C.CK_SESSION_HANDLE, t C.CK_ATTRIBUTE_PTR, n C.CK_ULONG, out C.CK_OBJECT_HANDLE_PTR) C.CK_RV {
	a, r := template(t, n)
	if r != ok || out == nil {
		return C.CK_RV(max(r, C.CKR_ARGUMENTS_BAD*boolRV(out == nil)))
	}
	oh, r := createObject(uint64(h), a)
	if r == ok {
		*out = C.CK_OBJECT_HANDLE(oh)
	}
	return C.CK_RV(r)
}

func boolRV(b bool) rv {
	if b {
		return 1
	}
	return 0
}

//export goDestroyObject
func goDestroyObject(h C.CK_SESSION_HANDLE, o C.CK_OBJECT_HANDLE) C.CK_RV {
	return C.CK_RV(destroyObject(uint64(h), uint64(o)))
}

//export goGetAttributeValue
func goGetAttributeValue(h C.CK_SESSION_HANDLE, o C.CK_OBJECT_HANDLE, t C.CK_ATTRIBUTE_PTR, n C.CK_ULONG) C.CK_RV {
	if t == nil && n != 0 {
		return C.CKR_ARGUMENTS_BAD
	}
	tmpl := unsafe.Slice(t, int(n))
	types := make([]uint64, len(tmpl))
	for i := range tmpl {
		types[i] = uint64(tmpl[i]._type)
	}
	res, r := getAttributes(uint64(h), uint64(o), types)
	if r != ok {
		return C.CK_RV(r)
	}
	var last rv = ok
	for i := range tmpl {
		at := &tmpl[i]
		switch {
		case res[i].err != ok:
			at.ulValueLen = C.CK_UNAVAILABLE_INFORMATION
			last = res[i].err
		case at.pValue == nil:
			at.ulValueLen = C.CK_ULONG(len(res[i].value))
		case int(at.ulValueLen) < len(res[i].value):
			at.ulValueLen = C.CK_UNAVAILABLE_INFORMATION
			last = C.CKR_BUFFER_TOO_SMALL
		default:
			copy(unsafe.Slice((*byte)(at.pValue), len(res[i].value)), res[i].value)
			at.ulValueLen = C.CK_ULONG(len(res[i].value))
		}
	}
	return C.CK_RV(last)
}

//export goFindObjectsInit
func goFindObjectsInit(h C.CK_SESSION_HANDLE, t C.CK_ATTRIBUTE_PTR, n C.CK_ULONG) C.CK_RV {
	a, r := template(t, n)
	if r != ok {
		return C.CK_RV(r)
	}
	return C.CK_RV(findInit(uint64(h), a))
}

//export goFindObjects
func goFindObjects(h C.CK_SESSION_HANDLE, out C.CK_OBJECT_HANDLE_PTR, max C.CK_ULONG, count C.CK_ULONG_PTR) C.CK_RV {
	if count == nil || (out == nil && max != 0) {
		return C.CKR_ARGUMENTS_BAD
	}
	hs, r := findNext(uint64(h), int(max))
	if r != ok {
		return C.CK_RV(r)
	}
	dst := unsafe.Slice(out, len(hs))
	for i, v := range hs {
		dst[i] = C.CK_OBJECT_HANDLE(v)
	}
	*count = C.CK_ULONG(len(hs))
	return C.CKR_OK
}

//export goFindObjectsFinal
func goFindObjectsFinal(h C.CK_SESSION_HANDLE) C.CK_RV { return C.CK_RV(findFinal(uint64(h))) }

func initOp(h C.CK_SESSION_HANDLE, kind opKind, p C.CK_MECHANISM_PTR, key C.CK_OBJECT_HANDLE) C.CK_RV {
	m, r := mechanismOf(p)
	if r != ok {
		return C.CK_RV(r)
	}
	return C.CK_RV(opInit(uint64(h), kind, m, uint64(key)))
}

// runOp runs a one-part operation under the two-call convention.
func runOp(h C.CK_SESSION_HANDLE, kind opKind, in []byte, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR,
	size func(*operation) int, run func(*operation) ([]byte, rv)) C.CK_RV {
	if outLen == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	if out == nil {
		_, n, r := opRun(uint64(h), kind, in, size, nil)
		if r == ok {
			*outLen = C.CK_ULONG(n)
		}
		return C.CK_RV(r)
	}
	_, need, r := opRun(uint64(h), kind, in, size, nil)
	if r != ok {
		return C.CK_RV(r)
	}
	if int(*outLen) < need {
		*outLen = C.CK_ULONG(need)
		return C.CKR_BUFFER_TOO_SMALL
	}
	v, _, r := opRun(uint64(h), kind, in, nil, run)
	if r != ok {
		return C.CK_RV(r)
	}
	return C.CK_RV(putBytes(v, out, outLen))
}

//export goEncryptInit
func goEncryptInit(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, key C.CK_OBJECT_HANDLE) C.CK_RV {
	return initOp(h, opEncrypt, p, key)
}

//export goEncrypt
func goEncrypt(h C.CK_SESSION_HANDLE, in C.CK_BYTE_PTR, inLen C.CK_ULONG, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR) C.CK_RV {
	data := goBytes(in, inLen)
	return runOp(h, opEncrypt, data, out, outLen,
		func(op *operation) int { return gcmSize(op, len(data), true) },
		func(op *operation) ([]byte, rv) { return encrypt(op, data) })
}

//export goDecryptInit
func goDecryptInit(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, key C.CK_OBJECT_HANDLE) C.CK_RV {
	return initOp(h, opDecrypt, p, key)
}

//export goDecrypt
func goDecrypt(h C.CK_SESSION_HANDLE, in C.CK_BYTE_PTR, inLen C.CK_ULONG, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR) C.CK_RV {
	data := goBytes(in, inLen)
	return runOp(h, opDecrypt, data, out, outLen,
		func(op *operation) int { return gcmSize(op, len(data), false) },
		func(op *operation) ([]byte, rv) { return decrypt(op, data) })
}

//export goDigestInit
func goDigestInit(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR) C.CK_RV {
	return initOp(h, opDigest, p, 0)
}

//export goDigest
func goDigest(h C.CK_SESSION_HANDLE, in C.CK_BYTE_PTR, inLen C.CK_ULONG, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR) C.CK_RV {
	data := goBytes(in, inLen)
	return runOp(h, opDigest, data, out, outLen,
		func(*operation) int { return 32 },
		func(*operation) ([]byte, rv) { d := sha256Sum(data); return d[:], ok })
}

//export goSignInit
func goSignInit(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, key C.CK_OBJECT_HANDLE) C.CK_RV {
	return initOp(h, opSign, p, key)
}

//export goSign
func goSign(h C.CK_SESSION_HANDLE, in C.CK_BYTE_PTR, inLen C.CK_ULONG, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR) C.CK_RV {
	data := goBytes(in, inLen)
	return runOp(h, opSign, data, out, outLen, signatureSize,
		func(op *operation) ([]byte, rv) { return sign(op, data) })
}

//export goVerifyInit
func goVerifyInit(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, key C.CK_OBJECT_HANDLE) C.CK_RV {
	return initOp(h, opVerify, p, key)
}

//export goVerify
func goVerify(h C.CK_SESSION_HANDLE, in C.CK_BYTE_PTR, inLen C.CK_ULONG, sig C.CK_BYTE_PTR, sigLen C.CK_ULONG) C.CK_RV {
	data, s := goBytes(in, inLen), goBytes(sig, sigLen)
	_, _, r := opRun(uint64(h), opVerify, data, nil, func(op *operation) ([]byte, rv) { return nil, verify(op, data, s) })
	return C.CK_RV(r)
}

//export goGenerateKey
func goGenerateKey(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, t C.CK_ATTRIBUTE_PTR, n C.CK_ULONG, out C.CK_OBJECT_HANDLE_PTR) C.CK_RV {
	if out == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	m, r := mechanismOf(p)
	if r != ok {
		return C.CK_RV(r)
	}
	a, r := template(t, n)
	if r != ok {
		return C.CK_RV(r)
	}
	k, r := generateKey(uint64(h), m, a)
	if r == ok {
		*out = C.CK_OBJECT_HANDLE(k)
	}
	return C.CK_RV(r)
}

//export goGenerateKeyPair
func goGenerateKeyPair(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, pt C.CK_ATTRIBUTE_PTR, pn C.CK_ULONG,
	kt C.CK_ATTRIBUTE_PTR, kn C.CK_ULONG, pubOut, privOut C.CK_OBJECT_HANDLE_PTR) C.CK_RV {
	if pubOut == nil || privOut == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	m, r := mechanismOf(p)
	if r != ok {
		return C.CK_RV(r)
	}
	pub, r := template(pt, pn)
	if r != ok {
		return C.CK_RV(r)
	}
	priv, r := template(kt, kn)
	if r != ok {
		return C.CK_RV(r)
	}
	ph, kh, r := generateKeyPair(uint64(h), m, pub, priv)
	if r == ok {
		*pubOut, *privOut = C.CK_OBJECT_HANDLE(ph), C.CK_OBJECT_HANDLE(kh)
	}
	return C.CK_RV(r)
}

//export goWrapKey
func goWrapKey(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, wrapping, key C.CK_OBJECT_HANDLE, out C.CK_BYTE_PTR, outLen C.CK_ULONG_PTR) C.CK_RV {
	m, r := mechanismOf(p)
	if r != ok {
		return C.CK_RV(r)
	}
	v, r := wrapKey(uint64(h), m, uint64(wrapping), uint64(key))
	if r != ok {
		return C.CK_RV(r)
	}
	return C.CK_RV(putBytes(v, out, outLen))
}

//export goUnwrapKey
func goUnwrapKey(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, unwrapping C.CK_OBJECT_HANDLE, in C.CK_BYTE_PTR, inLen C.CK_ULONG,
	t C.CK_ATTRIBUTE_PTR, n C.CK_ULONG, out C.CK_OBJECT_HANDLE_PTR) C.CK_RV {
	if out == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	m, r := mechanismOf(p)
	if r != ok {
		return C.CK_RV(r)
	}
	a, r := template(t, n)
	if r != ok {
		return C.CK_RV(r)
	}
	k, r := unwrapKey(uint64(h), m, uint64(unwrapping), goBytes(in, inLen), a)
	if r == ok {
		*out = C.CK_OBJECT_HANDLE(k)
	}
	return C.CK_RV(r)
}

//export goDeriveKey
func goDeriveKey(h C.CK_SESSION_HANDLE, p C.CK_MECHANISM_PTR, base C.CK_OBJECT_HANDLE, t C.CK_ATTRIBUTE_PTR, n C.CK_ULONG, out C.CK_OBJECT_HANDLE_PTR) C.CK_RV {
	if out == nil {
		return C.CKR_ARGUMENTS_BAD
	}
	m, r := mechanismOf(p)
	if r != ok {
		return C.CK_RV(r)
	}
	a, r := template(t, n)
	if r != ok {
		return C.CK_RV(r)
	}
	k, r := deriveKey(uint64(h), m, uint64(base), a)
	if r == ok {
		*out = C.CK_OBJECT_HANDLE(k)
	}
	return C.CK_RV(r)
}

//export goSeedRandom
func goSeedRandom(h C.CK_SESSION_HANDLE, seed C.CK_BYTE_PTR, seedLen C.CK_ULONG) C.CK_RV {
	state.mu.Lock()
	defer state.mu.Unlock()
	if _, r := lookupSession(uint64(h)); r != ok {
		return C.CK_RV(r)
	}
	return C.CKR_RANDOM_SEED_NOT_SUPPORTED
}

//export goGenerateRandom
func goGenerateRandom(h C.CK_SESSION_HANDLE, out C.CK_BYTE_PTR, n C.CK_ULONG) C.CK_RV {
	state.mu.Lock()
	_, r := lookupSession(uint64(h))
	state.mu.Unlock()
	if r != ok {
		return C.CK_RV(r)
	}
	if out == nil && n != 0 {
		return C.CKR_ARGUMENTS_BAD
	}
	if _, err := randRead(unsafe.Slice((*byte)(unsafe.Pointer(out)), int(n))); err != nil {
		return C.CKR_FUNCTION_FAILED
	}
	return C.CKR_OK
}
