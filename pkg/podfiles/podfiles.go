// Package podfiles defines the files podkey writes into a pod's volume:
// their names and formats, shared by the node plugin that writes them and
// the client library workloads read them with. It depends only on the
// standard library, golang.org/x/text's Unicode normalization and package
// pod.
package podfiles

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"

	"github.com/podkey/podkey/pkg/pod"
)

// MetadataFile is the volume's non-secret description of its objects.
const MetadataFile = "podkey-metadata.json"

// Certificate objects become three files: <file>.key, .crt and .ca.crt
// (format pem), and with the keystore formats <file>.p12 (pkcs12),
// <file>.jks (jks), <file>.truststore.p12 (truststore) and the keystores'
// password in <file>.pass.
const (
	CertKeySuffix    = ".key"
	CertSuffix       = ".crt"
	CASuffix         = ".ca.crt"
	PKCS12Suffix     = ".p12"
	JKSSuffix        = ".jks"
	TrustStoreSuffix = ".truststore.p12"
	PasswordSuffix   = ".pass"
)

// TLCP objects become five files: the signing pair <file>.sign.key and
// .sign.crt, the encryption pair <file>.enc.key and .enc.crt, and the CA
// bundle <file>.ca.crt.
const (
	TLCPSignKeySuffix  = ".sign.key"
	TLCPSignCertSuffix = ".sign.crt"
	TLCPEncKeySuffix   = ".enc.key"
	TLCPEncCertSuffix  = ".enc.crt"
)

// DataDir is the symlink to the current generation's directory.
const DataDir = "..data"

// APIKeyFile is the JSON form of an apiKey object.
type APIKeyFile struct {
	Version     string    `json:"version"`
	AccessKeyID string    `json:"accessKeyId"`
	SecretKey   string    `json:"secretKey"` // base64url, no padding
	Suite       string    `json:"suite"`
	Expiry      time.Time `json:"expiry"`
}

// Object describes one object as written: public facts only.
type Object struct {
	Name       string    `json:"name"`
	Kind       string    `json:"kind"`
	Suite      string    `json:"suite"`
	Generation int64     `json:"generation"`
	Files      []string  `json:"files"`
	IssuedAt   time.Time `json:"issuedAt"`
	Expiry     time.Time `json:"expiry"`
	RenewAt    time.Time `json:"renewAt"`
	// Missing says why an optional object is not in the volume (yet): it
	// has no files and no times, and podkey fills it in when it can.
	Missing string `json:"missing,omitempty"`
}

// Metadata is the content of MetadataFile.
type Metadata struct {
	Version string       `json:"version"`
	Pod     pod.Identity `json:"pod"` // without the node
	Written time.Time    `json:"written"`
	RenewAt time.Time    `json:"renewAt"`
	Objects []Object     `json:"objects"`
}

// MaxNameLen bounds a file name in the volume, in bytes.
const MaxNameLen = 253

// ValidName checks a file name a volume may hold: valid UTF-8 of at most
// MaxNameLen bytes, no path separator, no leading '.' (the writer owns
// "..data"), no white space at either end, and no character that is
// invisible or breaks a line: control characters, line and paragraph
// separators, and every default-ignorable code point (bidirectional
// marks, zero-width characters, variation selectors, Hangul fillers, the
// combining grapheme joiner, ...). Names that look alike once valid are
// caught by comparing them in FoldName's form.
func ValidName(name string) error {
	switch {
	case name == "" || len(name) > MaxNameLen:
		return fmt.Errorf("file name %q is empty or longer than %d bytes", name, MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("file name %q is not valid UTF-8", name)
	case strings.ContainsAny(name, "/\\"):
		return fmt.Errorf("file name %q contains a path separator", name)
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("file name %q starts with '.'", name)
	}
	first, _ := utf8.DecodeRuneInString(name)
	last, _ := utf8.DecodeLastRuneInString(name)
	if isSpace(first) || isSpace(last) {
		return fmt.Errorf("file name %q begins or ends with white space", name)
	}
	for _, r := range name {
		switch {
		case unicode.IsControl(r), unicode.In(r, unicode.Zl, unicode.Zp):
			return fmt.Errorf("file name %q contains the control or line-breaking character %U", name, r)
		case ignorable(r):
			return fmt.Errorf("file name %q contains the invisible character %U", name, r)
		}
	}
	return nil
}

// isSpace is white space of any kind: Unicode's White_Space property and
// every space separator (no-break and ideographic spaces included).
func isSpace(r rune) bool { return unicode.IsSpace(r) || unicode.Is(unicode.Zs, r) }

// ignorable reports Unicode's Default_Ignorable_Code_Point property
// (DerivedCoreProperties: Other_Default_Ignorable_Code_Point, format
// characters and variation selectors): code points that render as
// nothing, so that two names differing by them look the same.
func ignorable(r rune) bool {
	return unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Cf, unicode.Variation_Selector)
}

// FoldName is the form two names are compared in: they must differ in it,
// not only by case (a volume may be read on a case-insensitive file
// system), Unicode normalization (NFC and NFD twins, compatibility forms
// such as full-width letters), or the kind of space between words.
func FoldName(name string) string {
	n := norm.NFKC.String(name)
	n = strings.Map(func(r rune) rune {
		switch {
		case ignorable(r):
			return -1
		case isSpace(r):
			return ' '
		}
		return r
	}, n)
	// Full case folding (ß and SS alike), then upper and lower case (one
	// form for scripts whose folding goes to upper case, as Cherokee's);
	// either can un-normalize, and normalization un-fold: all again until
	// the form is stable.
	for range 4 {
		next := norm.NFKC.String(strings.ToLower(strings.ToUpper(cases.Fold().String(n))))
		if next == n {
			break
		}
		n = next
	}
	return n
}
