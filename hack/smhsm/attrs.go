package main

import (
	"bytes"
	"encoding/binary"
)

// attrs is an object's attributes as the caller's template gave them:
// CK_ULONG and CK_BBOOL values in native encoding, the rest as bytes.
type attrs map[uint64][]byte

func ulong(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

func boolean(v bool) []byte {
	if v {
		return []byte{1}
	}
	return []byte{0}
}

func (a attrs) ulong(t uint64) (uint64, bool) {
	v, ok := a[t]
	if !ok || len(v) != 8 {
		return 0, false
	}
	return binary.NativeEndian.Uint64(v), true
}

// bool is the attribute's value, def when absent.
func (a attrs) bool(t uint64, def bool) bool {
	v, ok := a[t]
	if !ok || len(v) == 0 {
		return def
	}
	return v[0] != 0
}

func (a attrs) clone() attrs {
	c := make(attrs, len(a))
	for k, v := range a {
		c[k] = bytes.Clone(v)
	}
	return c
}

// matches reports whether a has every attribute of the template with the
// same value.
func (a attrs) matches(tmpl attrs) bool {
	for k, v := range tmpl {
		if have, ok := a[k]; !ok || !bytes.Equal(have, v) {
			return false
		}
	}
	return true
}

// merge adds the template's attributes to a, the template winning.
func (a attrs) merge(tmpl attrs) {
	for k, v := range tmpl {
		a[k] = bytes.Clone(v)
	}
}
