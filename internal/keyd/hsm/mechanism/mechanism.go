// Package mechanism is the vendor mechanism table: the PKCS#11 codes an
// HSM vendor assigned to SM2, SM3 and SM4 (PKCS#11 assigns none). keyd
// reads it to use them; podkey's development SM module reads the same
// table to offer them. No cgo, so both can import it.
package mechanism

import (
	"fmt"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Table maps podkey's SM operations to the vendor-defined PKCS#11
// codes of HSMs that implement SM2/SM3/SM4 natively (PKCS#11 itself assigns
// none). A zero code means "not native": podkey then runs that operation in
// software under a key that exists only wrapped by the HSM key-encryption key.
type Table struct {
	// SM3HMAC is the HMAC-SM3 signing mechanism (over a generic secret key
	// or SM4KeyType key).
	SM3HMAC uint `json:"sm3Hmac,omitempty"`
	// SM4GCM is the SM4-GCM encryption mechanism; it takes GCM parameters.
	SM4GCM uint `json:"sm4Gcm,omitempty"`
	// SM4KeyGen and SM4KeyType generate and type SM4 keys.
	SM4KeyGen  uint `json:"sm4KeyGen,omitempty"`
	SM4KeyType uint `json:"sm4KeyType,omitempty"`
	// SM2Sign signs a precomputed SM3 digest (with the Z value already
	// applied) with an SM2 private key.
	SM2Sign uint `json:"sm2Sign,omitempty"`
	// SM2Decrypt decrypts an SM2 ciphertext in its ASN.1 encoding
	// (GM/T 0009: C1 coordinates, C3 hash, C2 ciphertext) with an SM2
	// private key; image keys of the gm suite use it.
	SM2Decrypt uint `json:"sm2Decrypt,omitempty"`
	// SM2KeyGen and SM2KeyType generate and type SM2 key pairs.
	SM2KeyGen  uint `json:"sm2KeyGen,omitempty"`
	SM2KeyType uint `json:"sm2KeyType,omitempty"`
}

// mechanismsFile is the on-disk form: codes as hex ("0x80000001") or
// decimal strings, so vendor documentation can be copied as written.
type mechanismsFile struct {
	Version    string            `json:"version"`
	Mechanisms map[string]string `json:"mechanisms"`
}

// Parse reads a vendor mechanism table:
//
//	version: v1
//	mechanisms:
//	  sm3Hmac: "0x8000000b"
//	  sm4Gcm: "0x80000110"
func Parse(data []byte) (Table, error) {
	var f mechanismsFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return Table{}, fmt.Errorf("mechanism table: %w", err)
	}
	if f.Version != "v1" {
		return Table{}, fmt.Errorf("mechanism table: version must be v1, got %q", f.Version)
	}
	var m Table
	fields := map[string]*uint{
		"sm3Hmac": &m.SM3HMAC, "sm4Gcm": &m.SM4GCM, "sm4KeyGen": &m.SM4KeyGen, "sm4KeyType": &m.SM4KeyType,
		"sm2Sign": &m.SM2Sign, "sm2Decrypt": &m.SM2Decrypt, "sm2KeyGen": &m.SM2KeyGen, "sm2KeyType": &m.SM2KeyType,
	}
	for name, v := range f.Mechanisms {
		dst, ok := fields[name]
		if !ok {
			return Table{}, fmt.Errorf("mechanism table: unknown operation %q", name)
		}
		code, err := strconv.ParseUint(strings.TrimSpace(v), 0, 32)
		if err != nil || code == 0 {
			return Table{}, fmt.Errorf("mechanism table: %s: %q is not a non-zero 32-bit code", name, v)
		}
		*dst = uint(code)
	}
	if (m.SM4GCM != 0) != (m.SM4KeyGen != 0 && m.SM4KeyType != 0) {
		return Table{}, fmt.Errorf("mechanism table: sm4Gcm needs sm4KeyGen and sm4KeyType, and they need sm4Gcm")
	}
	if (m.SM2Sign != 0 || m.SM2Decrypt != 0) != (m.SM2KeyGen != 0 && m.SM2KeyType != 0) {
		return Table{}, fmt.Errorf("mechanism table: sm2Sign and sm2Decrypt need sm2KeyGen and sm2KeyType, and they need sm2Sign or sm2Decrypt")
	}
	return m, nil
}
