// Package object defines what a pod may ask podkey for: the credential
// kinds and the per-object specification written in a SecretProviderClass
// (spec.parameters.objects) and carried in keyd's Issue requests.
package object

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"time"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/pkg/podfiles"
	"github.com/podkey/podkey/pkg/suite"
)

// Kind is a credential kind.
type Kind string

const (
	APIKey      Kind = "apiKey"
	Certificate Kind = "certificate"
	DerivedKey  Kind = "derivedKey"
	Token       Kind = "token"
	Secret      Kind = "secret"
	// TLCP is a TLCP (GB/T 38636) certificate pair: a signing key made on
	// the node, an encryption key made and escrowed by keyd (the KMC),
	// both SM2.
	TLCP Kind = "tlcp"
	// Database is a login of the pod's own on a database connection an
	// administrator defined in keyd (the object's name names it): one
	// file of user, password, host, port, database and url lines.
	Database Kind = "database"
)

// Kinds lists every kind.
var Kinds = []Kind{APIKey, Certificate, DerivedKey, Token, Secret, TLCP, Database}

// NeedsCSR reports whether the node sends a certificate request for the
// kind (a key pair it generates): certificate and tlcp.
func (k Kind) NeedsCSR() bool { return k == Certificate || k == TLCP }

// ParseKind checks a kind name.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown kind %q (want one of apiKey, certificate, derivedKey, token, secret, tlcp, database)", s)
}

// Scopes of a derivedKey.
const (
	ScopePod            = "pod"
	ScopeServiceAccount = "serviceAccount"
)

// Limits.
const (
	MaxObjects = 32
	MaxTTL     = 30 * 24 * time.Hour
	MinTTL     = 1 * time.Minute
	DefaultTTL = time.Hour
	// MaxSecretSize bounds an enrolled secret's value.
	MaxSecretSize = 64 << 10
)

// RenewFraction is the part of a credential's life after which it is
// renewed; what remains is the window in which a renewal must happen.
const RenewFraction = 2.0 / 3.0

// RenewalWindow is the time between an object's renewal and its expiry.
func (s *Spec) RenewalWindow() time.Duration {
	return s.TTL - time.Duration(float64(s.TTL)*RenewFraction)
}

// Spec is one requested object.
type Spec struct {
	Name      string        `json:"name"`
	Kind      Kind          `json:"kind"`
	File      string        `json:"file,omitempty"`      // file name in the volume; default Name
	Mode      string        `json:"mode,omitempty"`      // octal; default 0440
	Suite     suite.Name    `json:"suite,omitempty"`     // gm or intl; default intl
	Algorithm string        `json:"algorithm,omitempty"` // certificate: sm2 or ecdsa-p256 (sets Suite)
	TTL       time.Duration `json:"-"`
	TTLText   string        `json:"ttl,omitempty"`
	Scope     string        `json:"scope,omitempty"`    // derivedKey: pod (default) or serviceAccount
	Length    int           `json:"length,omitempty"`   // derivedKey bytes; default 32
	Audience  []string      `json:"audience,omitempty"` // token audiences; default [podkey]
	// Format is what a certificate is written as: pem (the default),
	// pkcs12, jks, truststore; one or several.
	Format Formats `json:"format,omitempty"`
	// Optional objects do not hold the pod back: one keyd refuses (policy,
	// an enrolled secret missing) or cannot reach at the first publish is
	// left out, said so in the metadata file, and filled in later.
	Optional bool `json:"optional,omitempty"`
	// Owner, when set, owns the object's files instead of root and the
	// pod's fsGroup; see OwnerRule.
	Owner *Owner `json:"owner,omitempty"`
}

// Owner is a file owner: a user, a group, or both.
type Owner struct {
	UID *int64 `json:"uid,omitempty"`
	GID *int64 `json:"gid,omitempty"`
}

// MaxID bounds a uid or gid (Kubernetes' own bound for runAsUser).
const MaxID = 1<<31 - 2

// OwnerRule says what a pod may name as an owner, in refusals.
const OwnerRule = "an owner's uid must be one the pod runs as (runAsUser of the pod or a container) and its gid one of its groups (runAsGroup, fsGroup, supplementalGroups), whenever the pod sets them"

func (o *Owner) normalize(name string) error {
	if o.UID == nil && o.GID == nil {
		return fmt.Errorf("object %q: owner needs uid, gid or both", name)
	}
	for _, id := range []*int64{o.UID, o.GID} {
		if id != nil && (*id < 0 || *id > MaxID) {
			return fmt.Errorf("object %q: owner id %d out of range [0, %d]", name, *id, MaxID)
		}
	}
	return nil
}

// Certificate formats.
const (
	FormatPEM        = "pem"        // <file>.key, <file>.crt, <file>.ca.crt
	FormatPKCS12     = "pkcs12"     // <file>.p12: key, certificate and CA chain
	FormatJKS        = "jks"        // <file>.jks: the same as a Java KeyStore
	FormatTrustStore = "truststore" // <file>.truststore.p12: the CA bundle only
)

// Formats is one format or a list of them: YAML takes `format: jks` and
// `format: [pem, jks]`.
type Formats []string

// UnmarshalJSON takes a string or a list of strings.
func (f *Formats) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*f = Formats{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("format: a name or a list of names")
	}
	*f = many
	return nil
}

// Has reports whether the formats include f.
func (f Formats) Has(name string) bool { return slices.Contains(f, name) }

// Keystore reports whether any format is a password-protected store.
func (f Formats) Keystore() bool {
	return f.Has(FormatPKCS12) || f.Has(FormatJKS) || f.Has(FormatTrustStore)
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s is a valid object or secret name (a DNS
// label-like name: lower case, digits, '-' and '.').
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ValidFileName reports whether s can name a file in the volume (the rule
// of podfiles.ValidName: no path separators, no hidden names, no control
// or invisible characters).
func ValidFileName(s string) bool { return podfiles.ValidName(s) == nil }

// Files are the names the object writes into the volume: its file, or for
// a certificate those of its formats (pem: <file>.key, <file>.crt and
// <file>.ca.crt; pkcs12 <file>.p12; jks <file>.jks; truststore
// <file>.truststore.p12; with any keystore its password, <file>.pass).
func (s *Spec) Files() []string {
	if s.Kind == TLCP {
		return []string{s.File + podfiles.TLCPSignKeySuffix, s.File + podfiles.TLCPSignCertSuffix,
			s.File + podfiles.TLCPEncKeySuffix, s.File + podfiles.TLCPEncCertSuffix, s.File + podfiles.CASuffix}
	}
	if s.Kind != Certificate {
		return []string{s.File}
	}
	var out []string
	if len(s.Format) == 0 || s.Format.Has(FormatPEM) {
		out = append(out, s.File+podfiles.CertKeySuffix, s.File+podfiles.CertSuffix, s.File+podfiles.CASuffix)
	}
	for _, f := range []struct{ name, suffix string }{
		{FormatPKCS12, podfiles.PKCS12Suffix}, {FormatJKS, podfiles.JKSSuffix}, {FormatTrustStore, podfiles.TrustStoreSuffix},
	} {
		if s.Format.Has(f.name) {
			out = append(out, s.File+f.suffix)
		}
	}
	if s.Format.Keystore() {
		out = append(out, s.File+podfiles.PasswordSuffix)
	}
	return out
}

// normalizeFormat checks a certificate's formats: known, each once, and
// no keystore for the gm suite (see docs/secretproviderclass.md).
func (s *Spec) normalizeFormat() error {
	if len(s.Format) == 0 {
		if s.Kind == Certificate {
			s.Format = Formats{FormatPEM}
		}
		return nil
	}
	if s.Kind != Certificate {
		return fmt.Errorf("object %q: format applies to certificate only", s.Name)
	}
	seen := map[string]bool{}
	for _, f := range s.Format {
		switch f {
		case FormatPEM, FormatPKCS12, FormatJKS, FormatTrustStore:
		default:
			return fmt.Errorf("object %q: unknown format %q (want pem, pkcs12, jks or truststore)", s.Name, f)
		}
		if seen[f] {
			return fmt.Errorf("object %q: format %q given twice", s.Name, f)
		}
		seen[f] = true
	}
	if s.Suite == suite.GM && s.Format.Keystore() {
		return fmt.Errorf("object %q: keystore formats are intl only: a gm (SM2) key in a PKCS#12 or JKS store loads only with a vendor SM provider, so podkey writes gm certificates as pem", s.Name)
	}
	return nil
}

// Normalize fills defaults and validates. The error names the object.
func (s *Spec) Normalize() error {
	if !ValidName(s.Name) {
		return fmt.Errorf("object name %q is invalid (lower-case letters, digits, '-' and '.', at most 63)", s.Name)
	}
	if _, err := ParseKind(string(s.Kind)); err != nil {
		return fmt.Errorf("object %q: %w", s.Name, err)
	}
	if s.File == "" {
		s.File = s.Name
	}
	if err := s.normalizeSuite(); err != nil {
		return err
	}
	if err := s.normalizeFormat(); err != nil {
		return err
	}
	for _, f := range s.Files() {
		if err := podfiles.ValidName(f); err != nil {
			return fmt.Errorf("object %q: %w", s.Name, err)
		}
	}
	if s.Mode == "" {
		s.Mode = "0440"
	}
	m, err := strconv.ParseUint(s.Mode, 8, 32)
	if err != nil || m&^0o777 != 0 || m&0o022 != 0 {
		return fmt.Errorf("object %q: mode %q must be octal permission bits (no setuid, setgid or sticky) with no group/other write bits", s.Name, s.Mode)
	}
	if s.Owner != nil {
		if err := s.Owner.normalize(s.Name); err != nil {
			return err
		}
	}
	if s.TTLText != "" {
		if s.TTL, err = time.ParseDuration(s.TTLText); err != nil {
			return fmt.Errorf("object %q: ttl %q: %w", s.Name, s.TTLText, err)
		}
	}
	if s.TTL == 0 {
		s.TTL = DefaultTTL
	}
	if s.TTL < MinTTL || s.TTL > MaxTTL {
		return fmt.Errorf("object %q: ttl %s out of range [%s, %s]", s.Name, s.TTL, MinTTL, MaxTTL)
	}
	if s.Kind != DerivedKey && (s.Scope != "" || s.Length != 0) {
		return fmt.Errorf("object %q: scope and length apply to derivedKey only", s.Name)
	}
	if s.Kind == DerivedKey {
		if s.Scope == "" {
			s.Scope = ScopePod
		}
		if s.Scope != ScopePod && s.Scope != ScopeServiceAccount {
			return fmt.Errorf("object %q: scope %q (want pod or serviceAccount)", s.Name, s.Scope)
		}
		if s.Length == 0 {
			s.Length = 32
		}
		if s.Length < 16 || s.Length > 64 {
			return fmt.Errorf("object %q: length %d out of range [16, 64]", s.Name, s.Length)
		}
	}
	if s.Kind != Token && len(s.Audience) > 0 {
		return fmt.Errorf("object %q: audience applies to token only", s.Name)
	}
	if s.Kind == Token && len(s.Audience) == 0 {
		s.Audience = []string{"podkey"}
	}
	for _, a := range s.Audience {
		if a == "" || len(a) > 253 {
			return fmt.Errorf("object %q: empty or oversized audience", s.Name)
		}
	}
	return nil
}

// normalizeSuite resolves the algorithm and the suite.
func (s *Spec) normalizeSuite() error {
	switch s.Algorithm {
	case "":
	case "sm2":
		if s.Suite != "" && s.Suite != suite.GM {
			return fmt.Errorf("object %q: algorithm sm2 needs suite gm", s.Name)
		}
		s.Suite = suite.GM
	case "ecdsa-p256":
		if s.Suite != "" && s.Suite != suite.Intl {
			return fmt.Errorf("object %q: algorithm ecdsa-p256 needs suite intl", s.Name)
		}
		s.Suite = suite.Intl
	default:
		return fmt.Errorf("object %q: unknown algorithm %q (want sm2 or ecdsa-p256)", s.Name, s.Algorithm)
	}
	if s.Algorithm != "" && s.Kind != Certificate && s.Kind != Token && s.Kind != TLCP {
		return fmt.Errorf("object %q: algorithm applies to certificate, tlcp and token only", s.Name)
	}
	if s.Kind == TLCP {
		// TLCP is SM2 only.
		if s.Suite != "" && s.Suite != suite.GM || s.Algorithm != "" && s.Algorithm != "sm2" {
			return fmt.Errorf("object %q: tlcp is SM2 (suite gm) only", s.Name)
		}
		s.Suite = suite.GM
	}
	var err error
	if s.Suite, err = suite.Parse(string(s.Suite)); err != nil {
		return fmt.Errorf("object %q: %w", s.Name, err)
	}
	return nil
}

// FileMode is the parsed mode.
func (s *Spec) FileMode() uint32 {
	m, _ := strconv.ParseUint(s.Mode, 8, 32)
	return uint32(m)
}

// ParseList parses and validates the YAML list of a SecretProviderClass's
// objects parameter. Field names are case-sensitive and unknown or
// repeated fields are refused, so an admission tool reading a class with
// any Kubernetes decoder sees what podkey sees. Names must be unique, and
// so must every file the objects write, also when compared without case,
// and none may be the metadata file.
func ParseList(data []byte) ([]Spec, error) {
	if len(data) > 64<<10 {
		return nil, fmt.Errorf("objects: larger than 64 KiB")
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("objects: %w", err)
	}
	var specs []Spec
	strict, err := kjson.UnmarshalStrict(js, &specs)
	if err != nil {
		return nil, fmt.Errorf("objects: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("objects: %w", strict[0])
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("objects: the list is empty")
	}
	if len(specs) > MaxObjects {
		return nil, fmt.Errorf("objects: %d objects, at most %d", len(specs), MaxObjects)
	}
	names := map[string]bool{}
	files := map[string]string{podfiles.FoldName(podfiles.MetadataFile): "podkey's own metadata"}
	for i := range specs {
		if err := specs[i].Normalize(); err != nil {
			return nil, fmt.Errorf("objects[%d]: %w", i, err)
		}
		if names[specs[i].Name] {
			return nil, fmt.Errorf("objects: name %q used twice", specs[i].Name)
		}
		names[specs[i].Name] = true
		for _, f := range specs[i].Files() {
			if other, dup := files[podfiles.FoldName(f)]; dup {
				return nil, fmt.Errorf("objects: object %q writes file %q, which %s also writes (names are compared without case; certificates also write <file>%s and <file>%s, and their keystore formats <file>%s, %s, %s and %s)",
					specs[i].Name, f, other, podfiles.CertKeySuffix, podfiles.CASuffix, podfiles.PKCS12Suffix, podfiles.JKSSuffix, podfiles.TrustStoreSuffix, podfiles.PasswordSuffix)
			}
			files[podfiles.FoldName(f)] = fmt.Sprintf("object %q", specs[i].Name)
		}
	}
	return specs, nil
}
