// Package approval is dual control (双人双控) for keyd's sensitive
// operations: named people with separated roles, each holding their own
// signing key, approve a request for one operation with one set of
// parameters; keyd executes it once, when the signatures meet the quorum
// the roster sets for that operation.
//
// The roster (people, roles, quorum rules, break-glass state) is kept on
// the HSM token, beside the audit anchor, where whoever can rewrite keyd's
// store cannot change it; changing it is itself an approved operation.
// A request is a small canonical JSON document: it is made and signed
// offline (a key file, a smart card through PKCS#11, anything that makes
// an SM2 or ECDSA P-256 signature), approvers append their signatures, and
// keyd checks the whole at execution. keyd holds no person's private key.
package approval

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"

	"github.com/emmansun/gmsm/smx509"
	"sigs.k8s.io/yaml"

	"github.com/podkey/podkey/pkg/suite"
)

// Role is a post of the key management organisation (GB/T 39786-2021,
// 人员管理: 密钥管理员, 密码操作员, 密码安全审计员 and the 安全主管 who
// oversees them).
type Role string

const (
	KeyAdmin        Role = "key-admin"        // 密钥管理员: key life cycle (rotate, retire, create, restore)
	Operator        Role = "operator"         // 密码操作员: day-to-day operation (policy, secrets, renewals)
	Auditor         Role = "auditor"          // 密码安全审计员: reads and verifies the audit log; approves nothing else
	SecurityOfficer Role = "security-officer" // 安全主管: oversees, approves, holds break-glass
)

// Roles lists the roles in a stable order.
var Roles = []Role{KeyAdmin, Operator, Auditor, SecurityOfficer}

// conflicts: a person may not hold both roles of a pair. The auditor
// checks the others' work, so holds nothing else; the security officer
// approves the key administrators' and operators' requests, so is neither.
// A key administrator may also be an operator (small teams).
var conflicts = [][2]Role{
	{Auditor, KeyAdmin}, {Auditor, Operator}, {Auditor, SecurityOfficer},
	{SecurityOfficer, KeyAdmin}, {SecurityOfficer, Operator},
}

// Person is a named administrator and the public half of their key.
type Person struct {
	Name  string `json:"name"`
	Roles []Role `json:"roles"`
	// PublicKey is PEM (PKIX "PUBLIC KEY"): SM2 under suite gm, ECDSA P-256
	// under intl.
	PublicKey string `json:"publicKey"`

	pub *ecdsa.PublicKey
}

// Need is one term of a quorum: Count distinct people holding Role.
type Need struct {
	Role  Role `json:"role"`
	Count int  `json:"count"`
}

// Rule is a quorum: every term must be met, each approver counting for
// one term only, the requester for none.
type Rule []Need

// Roster is the set of people and the quorum rules.
type Roster struct {
	// Version increases by one with every change.
	Version int `json:"version"`
	// Suite is the roster's cryptography: request digests and every
	// person's key (gm: SM3, SM2; intl: SHA-256, ECDSA P-256).
	Suite  suite.Name `json:"suite"`
	People []Person   `json:"people"`
	// Rules names a quorum per operation; Default serves the others.
	Default Rule            `json:"default,omitempty"`
	Rules   map[string]Rule `json:"rules,omitempty"`
	// BreakGlass is who may execute one operation alone in an emergency,
	// and whether that is armed (see Check).
	BreakGlass BreakGlass `json:"breakGlass"`
}

// BreakGlass lets one person of Roles execute one operation alone while
// Armed; the use disarms it (Epoch names the arming), and re-arming is an
// approved change of the roster.
type BreakGlass struct {
	Roles []Role `json:"roles,omitempty"`
	Armed bool   `json:"armed"`
	Epoch int    `json:"epoch"`
}

// DefaultRule is the quorum of any operation the roster does not name:
// two key administrators and a security officer besides the requester.
var DefaultRule = Rule{{KeyAdmin, 2}, {SecurityOfficer, 1}}

// MinApprovers is the floor of every rule: no roster may let fewer than
// two people besides the requester approve anything.
const MinApprovers = 2

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ParseRoster reads a roster from YAML or JSON and validates it.
func ParseRoster(b []byte) (*Roster, error) {
	var r Roster
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		return nil, fmt.Errorf("roster: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Marshal is the roster's stored form.
func (r *Roster) Marshal() ([]byte, error) { return json.Marshal(r) }

// Validate checks names, keys, role conflicts and that every rule can be
// met by the people listed without any one of them (so that no single
// person's absence, or presence, decides).
func (r *Roster) Validate() error {
	s, err := suite.Parse(string(r.Suite))
	if err != nil || r.Suite == "" {
		return fmt.Errorf("roster: suite must be gm or intl")
	}
	r.Suite = s
	if len(r.People) == 0 {
		return errors.New("roster: no people")
	}
	seen := map[string]bool{}
	for i := range r.People {
		p := &r.People[i]
		if !namePattern.MatchString(p.Name) {
			return fmt.Errorf("roster: person name %q: want lower case letters, digits, '.', '_' or '-', at most 63", p.Name)
		}
		if seen[p.Name] {
			return fmt.Errorf("roster: %s is listed twice", p.Name)
		}
		seen[p.Name] = true
		if len(p.Roles) == 0 {
			return fmt.Errorf("roster: %s holds no role", p.Name)
		}
		for _, role := range p.Roles {
			if !slices.Contains(Roles, role) {
				return fmt.Errorf("roster: %s: unknown role %q (want one of %v)", p.Name, role, Roles)
			}
		}
		for _, c := range conflicts {
			if slices.Contains(p.Roles, c[0]) && slices.Contains(p.Roles, c[1]) {
				return fmt.Errorf("roster: %s may not be both %s and %s", p.Name, c[0], c[1])
			}
		}
		pub, err := ParsePublicKey(s, []byte(p.PublicKey))
		if err != nil {
			return fmt.Errorf("roster: %s: %w", p.Name, err)
		}
		p.pub = pub
	}
	check := func(op string, rule Rule) error {
		total := 0
		for _, n := range rule {
			if !slices.Contains(Roles, n.Role) || n.Count < 1 {
				return fmt.Errorf("roster: rule %s: want known roles with counts of at least 1", op)
			}
			if n.Role == Auditor {
				return fmt.Errorf("roster: rule %s: auditors approve nothing", op)
			}
			total += n.Count
		}
		if total < MinApprovers {
			return fmt.Errorf("roster: rule %s asks for %d approvers, fewer than %d", op, total, MinApprovers)
		}
		// Satisfiable by the people listed, whoever of them requests.
		for _, p := range r.People {
			if !r.satisfiable(rule, p.Name) {
				return fmt.Errorf("roster: rule %s cannot be met when %s requests: too few people hold its roles", op, p.Name)
			}
		}
		return nil
	}
	for op := range r.Rules {
		if !slices.Contains(Operations, op) {
			return fmt.Errorf("roster: rule for unknown operation %q (want one of %v)", op, Operations)
		}
	}
	if len(r.Default) == 0 {
		r.Default = DefaultRule
	}
	if err := check("default", r.Default); err != nil {
		return err
	}
	for op, rule := range r.Rules {
		if err := check(op, rule); err != nil {
			return err
		}
	}
	for _, role := range r.BreakGlass.Roles {
		if role != SecurityOfficer && role != KeyAdmin {
			return fmt.Errorf("roster: break-glass may be held by %s or %s, not %s", SecurityOfficer, KeyAdmin, role)
		}
	}
	return nil
}

// satisfiable reports whether rule can be met by people other than
// requester (each counting once), ignoring those who cannot help.
func (r *Roster) satisfiable(rule Rule, requester string) bool {
	var people []Person
	for _, p := range r.People {
		if p.Name != requester {
			people = append(people, p)
		}
	}
	return meets(rule, people)
}

// meets reports whether people, each counting for one term at most, meet
// every term of rule: a small search, rosters being small.
func meets(rule Rule, people []Person) bool {
	need := map[Role]int{}
	for _, n := range rule {
		need[n.Role] += n.Count
	}
	var try func(i int) bool
	try = func(i int) bool {
		done := true
		for _, c := range need {
			done = done && c <= 0
		}
		if done {
			return true
		}
		if i == len(people) {
			return false
		}
		for _, role := range people[i].Roles {
			if need[role] > 0 {
				need[role]--
				ok := try(i + 1)
				need[role]++
				if ok {
					return true
				}
			}
		}
		return try(i + 1)
	}
	return try(0)
}

// Rule returns the quorum of op.
func (r *Roster) Rule(op string) Rule {
	if rule, ok := r.Rules[op]; ok {
		return rule
	}
	return r.Default
}

// Person returns the person named name.
func (r *Roster) Person(name string) (Person, bool) {
	for _, p := range r.People {
		if p.Name == name {
			return p, true
		}
	}
	return Person{}, false
}

// Names lists the people, sorted.
func (r *Roster) Names() []string {
	var out []string
	for _, p := range r.People {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// ParsePublicKey reads a PEM public key of the suite.
func ParsePublicKey(s suite.Name, b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("public key: want a PEM PUBLIC KEY block")
	}
	var (
		k   crypto.PublicKey
		err error
	)
	if s == suite.GM {
		k, err = smx509.ParsePKIXPublicKey(blk.Bytes)
	} else {
		k, err = x509.ParsePKIXPublicKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if !s.MatchesKey(k) {
		return nil, fmt.Errorf("public key: not a %s key (want %s)", s, map[suite.Name]string{suite.GM: "SM2", suite.Intl: "ECDSA P-256"}[s])
	}
	return k.(*ecdsa.PublicKey), nil
}

// MarshalPublicKey is the PEM form of a person's public key.
func MarshalPublicKey(s suite.Name, pub crypto.PublicKey) (string, error) {
	var (
		der []byte
		err error
	)
	if s == suite.GM {
		der, err = smx509.MarshalPKIXPublicKey(pub)
	} else {
		der, err = x509.MarshalPKIXPublicKey(pub)
	}
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}
