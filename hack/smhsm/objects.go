package main

/*
#include "smhsm.h"
*/
import "C"

import (
	"errors"
	"io/fs"
	"os"
)

// object is a session object (in memory, this process's) or a token
// object read from disk.
type object struct {
	handle  uint64
	slot    uint64
	session uint64 // the session a session object belongs to; 0 for token objects
	attrs   attrs
}

func (o *object) private() bool { return o.attrs.bool(C.CKA_PRIVATE, true) }

func (o *object) class() uint64 { c, _ := o.attrs.ulong(C.CKA_CLASS); return c }

func (o *object) isKey() bool {
	c := o.class()
	return c == C.CKO_SECRET_KEY || c == C.CKO_PRIVATE_KEY
}

// secretHidden reports whether the object's value may never leave the
// module: a key that is sensitive or not extractable.
func (o *object) secretHidden() bool {
	return o.isKey() && (o.attrs.bool(C.CKA_SENSITIVE, true) || !o.attrs.bool(C.CKA_EXTRACTABLE, false))
}

// getObject finds an object the session may see. Caller holds state.mu.
func getObject(s *session, h uint64) (*object, rv) {
	if o, found := state.sessionObjs[h]; found {
		if o.slot != s.slot || (o.private() && !userIn(s.slot)) {
			return nil, C.CKR_OBJECT_HANDLE_INVALID
		}
		return o, ok
	}
	dir, r := tokenDir(s.slot)
	if r != ok {
		return nil, r
	}
	key := [2]uint64{s.slot, h}
	a, cached := state.keys[key]
	if _, err := os.Stat(objectPath(dir, h)); err != nil {
		// Destroyed, perhaps by another process.
		if cached {
			clearAttrs(a)
			delete(state.keys, key)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, C.CKR_OBJECT_HANDLE_INVALID
		}
		return nil, C.CKR_DEVICE_ERROR
	}
	if !cached {
		var err error
		if a, err = readObject(dir, h); err != nil {
			return nil, C.CKR_OBJECT_HANDLE_INVALID
		}
		state.keys[key] = a
	}
	o := &object{handle: h, slot: s.slot, attrs: a}
	if o.private() && !userIn(s.slot) {
		return nil, C.CKR_OBJECT_HANDLE_INVALID
	}
	return o, ok
}

func userIn(slot uint64) bool {
	u, in := state.login[slot]
	return in && u == C.CKU_USER
}

// addObject stores a new object after the checks a real module makes:
// token objects need a read/write session, private objects a user login.
// Caller holds state.mu.
func addObject(s *session, a attrs) (uint64, rv) {
	token := a.bool(C.CKA_TOKEN, false)
	if _, set := a[C.CKA_PRIVATE]; !set {
		c, _ := a.ulong(C.CKA_CLASS)
		a[C.CKA_PRIVATE] = boolean(c == C.CKO_SECRET_KEY || c == C.CKO_PRIVATE_KEY)
	}
	if token && !s.rw {
		return 0, C.CKR_SESSION_READ_ONLY
	}
	if a.bool(C.CKA_PRIVATE, true) && !userIn(s.slot) {
		return 0, C.CKR_USER_NOT_LOGGED_IN
	}
	a[C.CKA_TOKEN] = boolean(token)
	if !token {
		for {
			h := newHandle()
			if _, taken := state.sessionObjs[h]; !taken {
				state.sessionObjs[h] = &object{handle: h, slot: s.slot, session: s.handle, attrs: a}
				return h, ok
			}
		}
	}
	dir, r := tokenDir(s.slot)
	if r != ok {
		return 0, r
	}
	h, err := createObjectFile(dir, a)
	if err != nil {
		return 0, C.CKR_DEVICE_ERROR
	}
	state.keys[[2]uint64{s.slot, h}] = a
	return h, ok
}

// keyDefaults completes a new key's attributes the way a careful module
// does: sensitive and not extractable unless the template says
// otherwise, with the history attributes PKCS#11 defines.
func keyDefaults(a attrs, local bool) {
	if _, set := a[C.CKA_SENSITIVE]; !set {
		a[C.CKA_SENSITIVE] = boolean(true)
	}
	if _, set := a[C.CKA_EXTRACTABLE]; !set {
		a[C.CKA_EXTRACTABLE] = boolean(false)
	}
	a[C.CKA_LOCAL] = boolean(local)
	a[C.CKA_ALWAYS_SENSITIVE] = boolean(local && a.bool(C.CKA_SENSITIVE, true))
	a[C.CKA_NEVER_EXTRACTABLE] = boolean(local && !a.bool(C.CKA_EXTRACTABLE, false))
}

func createObject(h uint64, a attrs) (uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(h)
	if r != ok {
		return 0, r
	}
	class, found := a.ulong(C.CKA_CLASS)
	if !found {
		return 0, C.CKR_TEMPLATE_INCOMPLETE
	}
	switch class {
	case C.CKO_DATA:
	case C.CKO_SECRET_KEY:
		if _, found := a[C.CKA_VALUE]; !found {
			return 0, C.CKR_TEMPLATE_INCOMPLETE
		}
		keyDefaults(a, false)
	default:
		return 0, C.CKR_ATTRIBUTE_VALUE_INVALID
	}
	return addObject(s, a)
}

func destroyObject(sh, oh uint64) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return r
	}
	o, r := getObject(s, oh)
	if r != ok {
		return r
	}
	if o.session != 0 {
		clearAttrs(o.attrs)
		delete(state.sessionObjs, oh)
		return ok
	}
	if !s.rw {
		return C.CKR_SESSION_READ_ONLY
	}
	dir, r := tokenDir(s.slot)
	if r != ok {
		return r
	}
	if err := os.Remove(objectPath(dir, oh)); err != nil {
		return C.CKR_OBJECT_HANDLE_INVALID
	}
	clearAttrs(o.attrs)
	delete(state.keys, [2]uint64{s.slot, oh})
	return ok
}

// attrResult is one attribute of a C_GetAttributeValue answer: its value,
// or the reason there is none.
type attrResult struct {
	value []byte
	err   rv
}

func getAttributes(sh, oh uint64, types []uint64) ([]attrResult, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return nil, r
	}
	o, r := getObject(s, oh)
	if r != ok {
		return nil, r
	}
	out := make([]attrResult, len(types))
	for i, t := range types {
		v, found := o.attrs[t]
		switch {
		case !found:
			out[i].err = C.CKR_ATTRIBUTE_TYPE_INVALID
		case t == C.CKA_VALUE && o.secretHidden():
			out[i].err = C.CKR_ATTRIBUTE_SENSITIVE
		default:
			out[i].value = v
		}
	}
	return out, ok
}

func findInit(sh uint64, tmpl attrs) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return r
	}
	if s.find != nil {
		return C.CKR_OPERATION_ACTIVE
	}
	var found []uint64
	for h, o := range state.sessionObjs {
		if o.slot == s.slot && (!o.private() || userIn(s.slot)) && o.attrs.matches(tmpl) {
			found = append(found, h)
		}
	}
	dir, r := tokenDir(s.slot)
	if r != ok {
		return r
	}
	hs, err := listObjects(dir)
	if err != nil {
		return C.CKR_DEVICE_ERROR
	}
	for _, h := range hs {
		if o, r := getObject(s, h); r == ok && o.attrs.matches(tmpl) {
			found = append(found, h)
		}
	}
	s.find = append(found, 0)[:len(found)] // non-nil: the operation is active
	return ok
}

func findNext(sh uint64, max int) ([]uint64, rv) {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return nil, r
	}
	if s.find == nil {
		return nil, C.CKR_OPERATION_NOT_INITIALIZED
	}
	n := min(max, len(s.find))
	out := s.find[:n:n]
	s.find = s.find[n:]
	return out, ok
}

func findFinal(sh uint64) rv {
	state.mu.Lock()
	defer state.mu.Unlock()
	s, r := lookupSession(sh)
	if r != ok {
		return r
	}
	if s.find == nil {
		return C.CKR_OPERATION_NOT_INITIALIZED
	}
	s.find = nil
	return ok
}
