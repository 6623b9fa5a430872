// Package podfiles defines the files podkey writes into a pod's volume:
// their names and formats, shared by the node plugin that writes them and
// the client library workloads read them with. It depends only on the
// standard library and package pod.
package podfiles

import (
	"time"

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
