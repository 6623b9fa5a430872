// Package policy decides which workloads may obtain which credential
// objects. It is default deny: a request is allowed only when a rule names
// its namespace, service account, object name and kind.
//
//	version: v1
//	rules:
//	- namespace: payments          # exact name or "*"
//	  serviceAccount: payments     # exact name or "*"
//	  objects: [ledger-api, mtls]  # object names or "*"
//	  kinds: [apiKey, certificate] # optional; empty means every kind
//	imageRules:                    # which nodes may decrypt which images
//	- nodes: ["pool-a-*"]          # node names, shell patterns ("*" for all)
//	  imageKeys: [cluster-a]       # image key ids or "*"
package policy

import (
	"fmt"
	"path"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/pkg/object"
)

// Version is the policy document version this package reads and writes.
const Version = "v1"

// MaxRules bounds a policy document.
const MaxRules = 10000

// Rule grants a (namespace, service account) some objects.
type Rule struct {
	Namespace      string        `json:"namespace"`
	ServiceAccount string        `json:"serviceAccount"`
	Objects        []string      `json:"objects"`
	Kinds          []object.Kind `json:"kinds,omitempty"`
}

// ImageRule lets nodes unwrap images encrypted for some image keys.
type ImageRule struct {
	Nodes     []string `json:"nodes"`
	ImageKeys []string `json:"imageKeys"`
}

// Policy is an ordered set of rules.
type Policy struct {
	Version    string      `json:"version"`
	Rules      []Rule      `json:"rules"`
	ImageRules []ImageRule `json:"imageRules,omitempty"`
}

// Parse reads and validates a policy document (YAML or JSON).
func Parse(data []byte) (*Policy, error) {
	if len(data) > 4<<20 {
		return nil, fmt.Errorf("policy: larger than 4 MiB")
	}
	var p Policy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func validSubject(s string) bool { return s == "*" || object.ValidName(s) || validSAName(s) }

// validSAName allows Kubernetes names with the subdomain charset.
func validSAName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Validate checks the document.
func (p *Policy) Validate() error {
	if p.Version != Version {
		return fmt.Errorf("policy: version must be %s, got %q", Version, p.Version)
	}
	if len(p.Rules) > MaxRules {
		return fmt.Errorf("policy: %d rules, at most %d", len(p.Rules), MaxRules)
	}
	for i, r := range p.Rules {
		if !validSubject(r.Namespace) {
			return fmt.Errorf("policy: rules[%d]: namespace %q is invalid", i, r.Namespace)
		}
		if !validSubject(r.ServiceAccount) {
			return fmt.Errorf("policy: rules[%d]: serviceAccount %q is invalid", i, r.ServiceAccount)
		}
		if len(r.Objects) == 0 {
			return fmt.Errorf("policy: rules[%d]: objects is empty (use [\"*\"] for every object)", i)
		}
		for _, o := range r.Objects {
			if o != "*" && !object.ValidName(o) {
				return fmt.Errorf("policy: rules[%d]: object %q is invalid", i, o)
			}
		}
		for _, k := range r.Kinds {
			if _, err := object.ParseKind(string(k)); err != nil {
				return fmt.Errorf("policy: rules[%d]: %w", i, err)
			}
		}
	}
	if len(p.ImageRules) > MaxRules {
		return fmt.Errorf("policy: %d image rules, at most %d", len(p.ImageRules), MaxRules)
	}
	for i, r := range p.ImageRules {
		if len(r.Nodes) == 0 || len(r.ImageKeys) == 0 {
			return fmt.Errorf("policy: imageRules[%d]: nodes and imageKeys must both be given (use [\"*\"] for all)", i)
		}
		for _, n := range r.Nodes {
			if _, err := path.Match(n, ""); err != nil || len(n) == 0 || len(n) > 253 {
				return fmt.Errorf("policy: imageRules[%d]: node pattern %q is invalid", i, n)
			}
		}
		for _, k := range r.ImageKeys {
			if k != "*" && !object.ValidName(k) {
				return fmt.Errorf("policy: imageRules[%d]: image key %q is invalid", i, k)
			}
		}
	}
	return nil
}

// Marshal renders the document as YAML.
func (p *Policy) Marshal() ([]byte, error) { return yaml.Marshal(p) }

func match(pattern, v string) bool { return pattern == "*" || pattern == v }

// Allowed reports whether some rule grants the object of the kind to the
// namespace's service account.
func (p *Policy) Allowed(namespace, serviceAccount, objectName string, kind object.Kind) bool {
	for _, r := range p.Rules {
		if !match(r.Namespace, namespace) || !match(r.ServiceAccount, serviceAccount) {
			continue
		}
		if len(r.Kinds) > 0 && !slices.Contains(r.Kinds, kind) {
			continue
		}
		if slices.Contains(r.Objects, "*") || slices.Contains(r.Objects, objectName) {
			return true
		}
	}
	return false
}

// AllowedImageKey reports whether some image rule lets the node unwrap
// images encrypted for the image key.
func (p *Policy) AllowedImageKey(node, keyID string) bool {
	for _, r := range p.ImageRules {
		if !slices.Contains(r.ImageKeys, "*") && !slices.Contains(r.ImageKeys, keyID) {
			continue
		}
		for _, n := range r.Nodes {
			if ok, _ := path.Match(n, node); ok {
				return true
			}
		}
	}
	return false
}

// Add appends a rule after validating it; an identical rule is not added
// twice.
func (p *Policy) Add(r Rule) error {
	for _, q := range p.Rules {
		if equal(q, r) {
			return nil
		}
	}
	p.Rules = append(p.Rules, r)
	if err := p.Validate(); err != nil {
		p.Rules = p.Rules[:len(p.Rules)-1]
		return err
	}
	return nil
}

// Remove deletes rules equal to r and reports how many it removed.
func (p *Policy) Remove(r Rule) int {
	n := len(p.Rules)
	p.Rules = slices.DeleteFunc(p.Rules, func(q Rule) bool { return equal(q, r) })
	return n - len(p.Rules)
}

func equal(a, b Rule) bool {
	return a.Namespace == b.Namespace && a.ServiceAccount == b.ServiceAccount &&
		slices.Equal(a.Objects, b.Objects) && slices.Equal(a.Kinds, b.Kinds)
}

// Empty is the default-deny policy.
func Empty() *Policy { return &Policy{Version: Version} }

// RulesNotIn counts p's rules (and image rules) that other lacks.
func (p *Policy) RulesNotIn(other *Policy) int {
	have := map[string]bool{}
	for _, r := range other.Rules {
		have[fmt.Sprintf("%v", r)] = true
	}
	for _, r := range other.ImageRules {
		have[fmt.Sprintf("image %v", r)] = true
	}
	n := 0
	for _, r := range p.Rules {
		if !have[fmt.Sprintf("%v", r)] {
			n++
		}
	}
	for _, r := range p.ImageRules {
		if !have[fmt.Sprintf("image %v", r)] {
			n++
		}
	}
	return n
}
