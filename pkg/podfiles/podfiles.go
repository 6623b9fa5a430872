// Package podfiles defines the files podkey writes into a pod's volume:
// their names and formats, shared by the node plugin that writes them and
// the client library workloads read them with. It has no dependencies
// beyond the standard library.
package podfiles

import "time"

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

// Pod names the pod a volume belongs to.
type Pod struct {
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	UID            string `json:"uid"`
	ServiceAccount string `json:"serviceAccount"`
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
	Version string    `json:"version"`
	Pod     Pod       `json:"pod"`
	Written time.Time `json:"written"`
	RenewAt time.Time `json:"renewAt"`
	Objects []Object  `json:"objects"`
}
