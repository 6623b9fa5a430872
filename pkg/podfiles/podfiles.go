// Package podfiles defines the files podkey writes into a pod's volume:
// their names and formats, shared by the node plugin that writes them and
// the client library workloads read them with. It depends only on the
// standard library and package pod.
package podfiles

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/podkey/podkey/pkg/pod"
)

// MetadataFile is the volume's non-secret description of its objects.
const MetadataFile = "podkey-metadata.json"

// Certificate objects become three files: <file>.key, .crt and .ca.crt.
const (
	CertKeySuffix = ".key"
	CertSuffix    = ".crt"
	CASuffix      = ".ca.crt"
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
// "..data"), and no character that makes two names look alike or one name
// look like another: control characters, bidirectional overrides and
// isolates, and zero-width characters.
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
	for _, r := range name {
		// Cf: bidirectional marks, embeddings, overrides and isolates,
		// zero-width spaces and joiners, the byte order mark, soft hyphen.
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("file name %q contains the invisible or control character %U", name, r)
		}
	}
	return nil
}

// FoldName is the form two names are compared in when they must differ by
// more than case (a volume may be read on a case-insensitive file system).
func FoldName(name string) string { return strings.ToLower(strings.ToUpper(name)) }
