package main

/*
#include <stdlib.h>
#include "smhsm.h"
*/
import "C"

import (
	"unsafe"

	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/podkey/podkey/internal/keyd/hsm/mechanism"
)

// rv is a PKCS#11 return value.
type rv = uint64

const ok rv = C.CKR_OK

// The module's state in this process. Token objects live on disk (see
// store.go); sessions, logins and session objects live here, as in a real
// module's client library.
var state struct {
	mu          sync.Mutex
	initialized bool
	root        string
	mechs       mechanism.Table
	sessions    map[uint64]*session
	nextSession uint64
	// login is the user type logged in, per slot: a login is the
	// application's, for all its sessions with the token.
	login       map[uint64]uint64
	sessionObjs map[uint64]*object
	// keys caches token objects read from disk, by slot and handle
	// (objects never change once written; a destroyed one's file is
	// gone, which every use checks).
	keys map[[2]uint64]attrs
}

type session struct {
	mu     sync.Mutex
	handle uint64
	slot   uint64
	dir    string // the token's directory: gone, the token was removed
	rw     bool
	find   []uint64
	// ops are the operations initialised, by kind.
	ops map[opKind]*operation
}

type opKind int

const (
	opFind opKind = iota
	opSign
	opVerify
	opEncrypt
	opDecrypt
	opDigest
)

// Environment: PODKEY_SMHSM_DIR is the directory of tokens (created),
// PODKEY_SMHSM_MECHANISMS a vendor mechanism table (the format of keyd's
// --hsm-mechanisms) replacing the built-in codes.
const (
	envDir   = "PODKEY_SMHSM_DIR"
	envMechs = "PODKEY_SMHSM_MECHANISMS"
)

// getenv reads the process's environment as it is now: a Go library
// loaded into a program sees only the environment the program started
// with through os.Getenv, not what the program set since.
func getenv(name string) string {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	if v := C.getenv(cs); v != nil {
		return C.GoString(v)
	}
	return ""
}

func initialize() rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	if state.initialized {
		return C.CKR_CRYPTOKI_ALREADY_INITIALIZED
	}
	root := getenv(envDir)
	if root == "" {
		fmt.Fprintf(os.Stderr, "podkey SM module: %s is not set\n", envDir)
		return C.CKR_GENERAL_ERROR
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "podkey SM module: %v\n", err)
		return C.CKR_GENERAL_ERROR
	}
	data, err := defaultMechanisms, error(nil)
	if f := getenv(envMechs); f != "" {
		data, err = os.ReadFile(f)
	}
	var mechs mechanism.Table
	if err == nil {
		mechs, err = mechanism.Parse(data)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "podkey SM module: mechanism table: %v\n", err)
		return C.CKR_GENERAL_ERROR
	}
	state.root, state.mechs = root, mechs
	state.sessions = map[uint64]*session{}
	state.login = map[uint64]uint64{}
	state.sessionObjs = map[uint64]*object{}
	state.keys = map[[2]uint64]attrs{}
	state.initialized = true
	return ok
}

func finalize() rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	for k := range state.keys {
		clearAttrs(state.keys[k])
	}
	for _, o := range state.sessionObjs {
		clearAttrs(o.attrs)
	}
	state.initialized = false
	state.sessions, state.login, state.sessionObjs, state.keys = nil, nil, nil, nil
	return ok
}

// clearAttrs overwrites the secret values an object held in memory.
func clearAttrs(a attrs) {
	if v, ok := a[C.CKA_VALUE]; ok {
		clear(v)
	}
}

// slots lists the initialised tokens' slots and one free slot after
// them, for C_InitToken, as SoftHSM2 does. Caller holds state.mu.
func slots() (map[uint64]string, uint64, rv) {
	dirs, err := slotDirs(state.root)
	if err != nil {
		return nil, 0, C.CKR_DEVICE_ERROR
	}
	free := uint64(0)
	for id := range dirs {
		free = max(free, id+1)
	}
	return dirs, free, ok
}

func slotList() ([]uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return nil, C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	dirs, free, r := slots()
	if r != ok {
		return nil, r
	}
	ids := []uint64{free}
	for id := range dirs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, ok
}

// tokenInfo is what C_GetTokenInfo reports.
type tokenInfo struct {
	label, serial  string
	initialized    bool
	userPIN        bool
	sessions, rwss uint64
}

func getTokenInfo(slot uint64) (tokenInfo, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return tokenInfo{}, C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	dirs, free, r := slots()
	if r != ok {
		return tokenInfo{}, r
	}
	dir, found := dirs[slot]
	if !found {
		if slot == free {
			return tokenInfo{}, ok
		}
		return tokenInfo{}, C.CKR_SLOT_ID_INVALID
	}
	t, err := readToken(dir)
	if err != nil {
		return tokenInfo{}, C.CKR_DEVICE_ERROR
	}
	ti := tokenInfo{label: t.Label, serial: t.Serial, initialized: true, userPIN: t.User != nil}
	for _, s := range state.sessions {
		if s.slot == slot {
			ti.sessions++
			if s.rw {
				ti.rwss++
			}
		}
	}
	return ti, ok
}

func tokenDir(slot uint64) (string, rv) {
	dirs, _, r := slots()
	if r != ok {
		return "", r
	}
	dir, found := dirs[slot]
	if !found {
		return "", C.CKR_SLOT_ID_INVALID
	}
	return dir, ok
}

// initToken initialises the free slot's token, or re-initialises an
// initialised one when the SO PIN matches (destroying its objects).
func initToken(slot uint64, soPIN []byte, label string) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	if len(soPIN) < 4 || len(soPIN) > 255 {
		return C.CKR_PIN_LEN_RANGE
	}
	for _, s := range state.sessions {
		if s.slot == slot {
			return C.CKR_SESSION_EXISTS
		}
	}
	dirs, free, r := slots()
	if r != ok {
		return r
	}
	h, err := hashPIN(soPIN)
	if err != nil {
		return C.CKR_GENERAL_ERROR
	}
	label = strings.TrimRight(label, " ")
	for id, dir := range dirs {
		if t, err := readToken(dir); err == nil && t.Label == label && id != slot {
			return C.CKR_ARGUMENTS_BAD // one label, one token: keyd finds tokens by label
		}
	}
	if dir, found := dirs[slot]; found {
		t, err := readToken(dir)
		if err != nil {
			return C.CKR_DEVICE_ERROR
		}
		if !t.SO.matches(soPIN) {
			return C.CKR_PIN_INCORRECT
		}
		if err := os.RemoveAll(filepath.Join(dir, "objects")); err != nil {
			return C.CKR_DEVICE_ERROR
		}
		t.Label, t.SO, t.User = label, h, nil
		if writeToken(dir, t) != nil {
			return C.CKR_DEVICE_ERROR
		}
		return ok
	}
	if slot != free {
		return C.CKR_SLOT_ID_INVALID
	}
	dir := filepath.Join(state.root, fmt.Sprintf("slot-%d", slot))
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return C.CKR_TOKEN_NOT_RECOGNIZED // another process took the slot at once
		}
		return C.CKR_DEVICE_ERROR
	}
	serial := fmt.Sprintf("%016x", newHandle()<<32|newHandle())
	if writeToken(dir, &tokenFile{Label: label, Serial: serial[:16], SO: h}) != nil {
		os.RemoveAll(dir)
		return C.CKR_DEVICE_ERROR
	}
	return ok
}

func openSession(slot, flags uint64) (uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return 0, C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	if flags&C.CKF_SERIAL_SESSION == 0 {
		return 0, C.CKR_SESSION_PARALLEL_NOT_SUPPORTED
	}
	dir, r := tokenDir(slot)
	if r != ok {
		return 0, r
	}
	rw := flags&C.CKF_RW_SESSION != 0
	if !rw && state.login[slot] == C.CKU_SO && loggedIn(slot) {
		return 0, C.CKR_SESSION_READ_WRITE_SO_EXISTS
	}
	state.nextSession++
	s := &session{handle: state.nextSession, slot: slot, dir: dir, rw: rw, ops: map[opKind]*operation{}}
	state.sessions[s.handle] = s
	return s.handle, ok
}

func loggedIn(slot uint64) bool { _, in := state.login[slot]; return in }

// closeSession ends a session; the last session of a slot ends the
// login and its session objects.
func closeSession(h uint64) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	if !state.initialized {
		return C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	s, found := state.sessions[h]
	if !found {
		return C.CKR_SESSION_HANDLE_INVALID
	}
	delete(state.sessions, h)
	for oh, o := range state.sessionObjs {
		if o.session == h {
			clearAttrs(o.attrs)
			delete(state.sessionObjs, oh)
		}
	}
	for _, other := range state.sessions {
		if other.slot == s.slot {
			return ok
		}
	}
	delete(state.login, s.slot)
	return ok
}

func closeAllSessions(slot uint64) rv {
	state.mu.Lock()
	var hs []uint64
	for h, s := range state.sessions {
		if s.slot == slot {
			hs = append(hs, h)
		}
	}
	initialized := state.initialized
	state.mu.Unlock()
	if !initialized {
		return C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	for _, h := range hs {
		closeSession(h)
	}
	return ok
}

// sessionState is C_GetSessionInfo's state.
func sessionState(h uint64) (slot, st, flags uint64, r rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(h)
	if r != ok {
		return 0, 0, 0, r
	}
	flags = C.CKF_SERIAL_SESSION
	if s.rw {
		flags |= C.CKF_RW_SESSION
	}
	user, in := state.login[s.slot]
	switch {
	case in && user == C.CKU_SO:
		st = C.CKS_RW_SO_FUNCTIONS
	case in && s.rw:
		st = C.CKS_RW_USER_FUNCTIONS
	case in:
		st = C.CKS_RO_USER_FUNCTIONS
	case s.rw:
		st = C.CKS_RW_PUBLIC_SESSION
	default:
		st = C.CKS_RO_PUBLIC_SESSION
	}
	return s.slot, st, flags, ok
}

// slotToken reads a slot's token file. Caller holds state.mu.
func slotToken(slot uint64) (string, *tokenFile, rv) {
	dir, r := tokenDir(slot)
	if r != ok {
		return "", nil, r
	}
	t, err := readToken(dir)
	if err != nil {
		return "", nil, C.CKR_DEVICE_ERROR
	}
	return dir, t, ok
}

// lookupSession finds a session. Caller holds state.mu.
func lookupSession(h uint64) (*session, rv) {
	if !state.initialized {
		return nil, C.CKR_CRYPTOKI_NOT_INITIALIZED
	}
	s, found := state.sessions[h]
	if !found {
		return nil, C.CKR_SESSION_HANDLE_INVALID
	}
	if _, err := os.Stat(filepath.Join(s.dir, "token.json")); err != nil {
		// The token was removed (its directory moved away): its sessions
		// and login end, as a real module's do when a token leaves.
		removeToken(s.slot)
		return nil, C.CKR_DEVICE_REMOVED
	}
	return s, ok
}

// removeToken ends every session and the login of a removed token.
// Caller holds state.mu.
func removeToken(slot uint64) {
	for h, s := range state.sessions {
		if s.slot == slot {
			delete(state.sessions, h)
		}
	}
	for oh, o := range state.sessionObjs {
		if o.slot == slot {
			clearAttrs(o.attrs)
			delete(state.sessionObjs, oh)
		}
	}
	for k, a := range state.keys {
		if k[0] == slot {
			clearAttrs(a)
			delete(state.keys, k)
		}
	}
	delete(state.login, slot)
}

func login(h, userType uint64, pin []byte) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(h)
	if r != ok {
		return r
	}
	if userType != C.CKU_SO && userType != C.CKU_USER {
		return C.CKR_USER_TYPE_INVALID
	}
	if cur, in := state.login[s.slot]; in {
		if cur == userType {
			return C.CKR_USER_ALREADY_LOGGED_IN
		}
		return C.CKR_USER_ANOTHER_ALREADY_LOGGED_IN
	}
	if userType == C.CKU_SO {
		for _, o := range state.sessions {
			if o.slot == s.slot && !o.rw {
				return C.CKR_SESSION_READ_ONLY_EXISTS
			}
		}
	}
	_, t, r := slotToken(s.slot)
	if r != ok {
		return r
	}
	want := t.SO
	if userType == C.CKU_USER {
		if t.User == nil {
			return C.CKR_USER_PIN_NOT_INITIALIZED
		}
		want = t.User
	}
	if !want.matches(pin) {
		return C.CKR_PIN_INCORRECT
	}
	state.login[s.slot] = userType
	return ok
}

func logout(h uint64) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(h)
	if r != ok {
		return r
	}
	if !loggedIn(s.slot) {
		return C.CKR_USER_NOT_LOGGED_IN
	}
	delete(state.login, s.slot)
	// Private session objects become invisible; operations on private
	// keys end, as a real module's do.
	for _, o := range state.sessions {
		if o.slot == s.slot {
			o.mu.Lock()
			clear(o.ops)
			o.find = nil
			o.mu.Unlock()
		}
	}
	return ok
}

func initPIN(h uint64, pin []byte) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(h)
	if r != ok {
		return r
	}
	if state.login[s.slot] != C.CKU_SO || !loggedIn(s.slot) {
		return C.CKR_USER_NOT_LOGGED_IN
	}
	if !s.rw {
		return C.CKR_SESSION_READ_ONLY
	}
	if len(pin) < 4 || len(pin) > 255 {
		return C.CKR_PIN_LEN_RANGE
	}
	dir, t, r := slotToken(s.slot)
	if r != ok {
		return r
	}
	var err error
	if t.User, err = hashPIN(pin); err != nil {
		return C.CKR_GENERAL_ERROR
	}
	if writeToken(dir, t) != nil {
		return C.CKR_DEVICE_ERROR
	}
	return ok
}
