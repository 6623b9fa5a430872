package approval

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/emmansun/gmsm/sm2"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/pkg/suite"
)

// Operations are the operations that need approval once a roster is set:
// keyd's admin methods of the same names, and RestoreStore (podkey store
// restore, made with the HSM token directly).
var Operations = []string{
	"RotateKey", "RetireKey", "CreateImageKey", // every root key, the KEK and the audit key
	"SetPolicy", "AddPolicyRule", "RemovePolicyRule",
	"PutSecret", "DeleteSecret",
	"PutDatabase", "DeleteDatabase", // connections pods get logins on
	"ForceRenewal", // of a namespace or everything; one pod's needs none
	"BackupStore", "RestoreStore",
	"SetRoster",     // people, roles, rules, re-arming break-glass
	"RecoverEscrow", // a TLCP encryption key held for lawful recovery
}

// Errors callers map to status codes.
var (
	// ErrMalformed: the document cannot be read, or is not canonical.
	ErrMalformed = errors.New("approval: malformed request")
	// ErrRefused: the document is well formed but does not authorize this
	// execution (signatures, roles, quorum, time, operation, parameters).
	ErrRefused = errors.New("approval refused")
)

func refused(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// MaxLifetime bounds a request's validity; MaxSkew is how far in the
// future its creation time may be.
const (
	MaxLifetime = 7 * 24 * time.Hour
	MaxSkew     = 2 * time.Minute
)

// Request is what everyone signs: one operation with its parameters.
type Request struct {
	V  int    `json:"v"`
	ID string `json:"id"` // 128 random bits, hex: execution claims it once
	Op string `json:"op"`
	// Params are the operation's parameters, canonical JSON (the admin
	// method's request message in protobuf's JSON mapping). A secret
	// value is never a parameter: it is given at execution.
	Params     json.RawMessage `json:"params"`
	Requester  string          `json:"requester"`
	Created    time.Time       `json:"created"`
	Expires    time.Time       `json:"expires"`
	BreakGlass bool            `json:"breakGlass,omitempty"`
}

// Signature is a person's signature over a request: the requester's
// (Role empty), or an approval in Role.
type Signature struct {
	Name      string `json:"name"`
	Role      Role   `json:"role,omitempty"`
	Requester bool   `json:"requester,omitempty"`
	Sig       []byte `json:"sig"` // ASN.1 DER: SM2 with SM3 (default user id), or ECDSA P-256 with SHA-256
}

// Document is the file that goes from person to person and finally to
// keyd: the request, exactly as signed, and the signatures.
type Document struct {
	Request    string      `json:"request"`
	Signatures []Signature `json:"signatures"`
}

const signingDomain = "podkey-approval-v1\n"

// SigningInput is what a person signs: a domain tag and the request.
func SigningInput(request string) []byte { return append([]byte(signingDomain), request...) }

// Digest is the suite hash of the signing input, hex: what an approver
// compares before signing, and the audit records.
func Digest(s suite.Name, request string) string {
	h := s.Hash()()
	h.Write(SigningInput(request))
	return hex.EncodeToString(h.Sum(nil))
}

// Canonical returns b in its one accepted spelling: compact, object keys
// sorted, as Go's encoding/json writes a decoded value. A document whose
// request is not canonical is refused, so there is never a second reading
// of what was signed (duplicate keys, for one, do not survive).
func Canonical(b []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("trailing data")
	}
	return json.Marshal(v)
}

// NewRequest makes a request for op with params (any JSON; made
// canonical), valid for ttl from now.
func NewRequest(op string, params []byte, requester string, now time.Time, ttl time.Duration, breakGlass bool) (string, error) {
	if !slices.Contains(Operations, op) {
		return "", fmt.Errorf("approval: %s needs no approval (operations: %v)", op, Operations)
	}
	if ttl <= 0 || ttl > MaxLifetime {
		return "", fmt.Errorf("approval: a request lives between 0 and %v, not %v", MaxLifetime, ttl)
	}
	p, err := Canonical(params)
	if err != nil {
		return "", fmt.Errorf("approval: parameters: %w", err)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	now = now.UTC().Truncate(time.Second)
	r := Request{V: 1, ID: hex.EncodeToString(id), Op: op, Params: p, Requester: requester,
		Created: now, Expires: now.Add(ttl), BreakGlass: breakGlass}
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	c, err := Canonical(b)
	return string(c), err
}

// Sign signs request as a person with key (an SM2 key under gm, ECDSA
// P-256 under intl; any crypto.Signer, so a smart card's too).
func Sign(s suite.Name, key crypto.Signer, request string) ([]byte, error) {
	in := SigningInput(request)
	if s == suite.GM {
		return key.Sign(rand.Reader, in, sm2.DefaultSM2SignerOpts)
	}
	d := sha256.Sum256(in)
	return key.Sign(rand.Reader, d[:], crypto.SHA256)
}

// VerifySignature checks one signature.
func VerifySignature(s suite.Name, pub *ecdsa.PublicKey, request string, sig []byte) bool {
	in := SigningInput(request)
	if s == suite.GM {
		return sm2.VerifyASN1WithSM2(pub, nil, in, sig)
	}
	d := sha256.Sum256(in)
	return ecdsa.VerifyASN1(pub, d[:], sig)
}

// ParseDocument reads a document and its request.
func ParseDocument(b []byte) (*Document, *Request, error) {
	var doc Document
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&doc); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	c, err := Canonical([]byte(doc.Request))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: request: %v", ErrMalformed, err)
	}
	if string(c) != doc.Request {
		return nil, nil, fmt.Errorf("%w: the request is not in canonical form", ErrMalformed)
	}
	var r Request
	rd := json.NewDecoder(bytes.NewReader(c))
	rd.DisallowUnknownFields()
	if err := rd.Decode(&r); err != nil {
		return nil, nil, fmt.Errorf("%w: request: %v", ErrMalformed, err)
	}
	if r.V != 1 {
		return nil, nil, fmt.Errorf("%w: request version %d (this keyd reads 1)", ErrMalformed, r.V)
	}
	if id, err := hex.DecodeString(r.ID); err != nil || len(id) != 16 {
		return nil, nil, fmt.Errorf("%w: request id", ErrMalformed)
	}
	return &doc, &r, nil
}

// Verified is a document that authorizes one execution.
type Verified struct {
	Request *Request
	// Text is the request as signed; Digest its digest.
	Text   string
	Digest string
	// Requester's and approvers' signatures, as checked.
	Signatures []Signature
	// BreakGlass: executed on the requester's signature alone; the caller
	// must disarm break-glass (epoch Epoch) atomically before executing.
	BreakGlass bool
	Epoch      int
}

// Check verifies that doc authorizes op with params (canonical JSON) now,
// under roster: the request's operation and parameters, its times, the
// requester's signature, and approvals by distinct people other than the
// requester, each in a role they hold, meeting the operation's rule (or
// break-glass). It does not claim the request: single use is the
// caller's (keyd's store).
func Check(roster *Roster, b []byte, op string, params []byte, now time.Time) (*Verified, error) {
	doc, r, err := ParseDocument(b)
	if err != nil {
		return nil, err
	}
	if r.Op != op {
		return nil, refused("the request is for %s, not %s", r.Op, op)
	}
	want, err := Canonical(params)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(want, r.Params) {
		return nil, refused("the parameters differ from those approved")
	}
	switch {
	case r.Created.After(now.Add(MaxSkew)):
		return nil, refused("the request was made in the future (%s)", r.Created.Format(time.RFC3339))
	case !now.Before(r.Expires):
		return nil, refused("the request expired at %s", r.Expires.Format(time.RFC3339))
	case r.Expires.Sub(r.Created) > MaxLifetime:
		return nil, refused("the request lives longer than %v", MaxLifetime)
	}
	requester, ok := roster.Person(r.Requester)
	if !ok {
		return nil, refused("requester %q is not in the roster", r.Requester)
	}
	v := &Verified{Request: r, Text: doc.Request, Digest: Digest(roster.Suite, doc.Request)}
	counted := map[string]bool{}
	var approvers []Person
	for _, sig := range doc.Signatures {
		p, ok := roster.Person(sig.Name)
		if !ok {
			return nil, refused("%q is not in the roster", sig.Name)
		}
		if !VerifySignature(roster.Suite, p.pub, doc.Request, sig.Sig) {
			return nil, refused("%s's signature does not verify", sig.Name)
		}
		if sig.Requester {
			if sig.Name != r.Requester {
				return nil, refused("%s signs as requester, but %s requested", sig.Name, r.Requester)
			}
			if counted[""] {
				return nil, refused("the requester signs once")
			}
			counted[""] = true
			v.Signatures = append(v.Signatures, sig)
			continue
		}
		if sig.Name == r.Requester {
			return nil, refused("%s requested and may not also approve", sig.Name)
		}
		if counted[sig.Name] {
			return nil, refused("%s approves more than once; one person counts once", sig.Name)
		}
		if !slices.Contains(p.Roles, sig.Role) {
			return nil, refused("%s approves as %s, a role they do not hold", sig.Name, sig.Role)
		}
		if sig.Role == Auditor {
			return nil, refused("%s approves as auditor; auditors approve nothing", sig.Name)
		}
		counted[sig.Name] = true
		approvers = append(approvers, Person{Name: p.Name, Roles: []Role{sig.Role}})
		v.Signatures = append(v.Signatures, sig)
	}
	if !counted[""] {
		return nil, refused("the requester %s has not signed", r.Requester)
	}
	if r.BreakGlass {
		if len(approvers) > 0 {
			return nil, refused("a break-glass request carries only the requester's signature")
		}
		bg := roster.BreakGlass
		holds := false
		for _, role := range bg.Roles {
			holds = holds || slices.Contains(requester.Roles, role)
		}
		if !holds {
			return nil, refused("%s may not break glass", r.Requester)
		}
		if !bg.Armed {
			return nil, refused("break-glass was used and is not re-armed (an approved SetRoster re-arms it)")
		}
		v.BreakGlass, v.Epoch = true, bg.Epoch
		return v, nil
	}
	rule := roster.Rule(op)
	if !meets(rule, approvers) {
		return nil, refused("%d approval(s) do not meet the quorum of %s: %s", len(approvers), op, rule)
	}
	return v, nil
}

func (r Rule) String() string {
	s := ""
	for i, n := range r {
		if i > 0 {
			s += " + "
		}
		s += fmt.Sprintf("%d %s", n.Count, n.Role)
	}
	return s
}

// ClaimKey is the key under which keyd's store claims a request once.
func ClaimKey(r *Request) [32]byte {
	return sha256.Sum256([]byte("podkey-approval-claim\n" + r.ID))
}

// BreakGlassClaimKey is claimed when break-glass of epoch is used: once.
func BreakGlassClaimKey(epoch int) [32]byte {
	return sha256.Sum256(fmt.Appendf(nil, "podkey-break-glass\n%d", epoch))
}

// Evidence is v as audited, under roster version rosterVersion.
func (v *Verified) Evidence(rosterVersion int) *audit.Approval {
	e := &audit.Approval{ID: v.Request.ID, Op: v.Request.Op, Digest: v.Digest, Request: v.Text,
		RosterVer: rosterVersion, BreakGlass: v.BreakGlass}
	for _, sig := range v.Signatures {
		e.Signatures = append(e.Signatures, audit.ApprovalSignature{Name: sig.Name, Role: string(sig.Role), Requester: sig.Requester, Sig: sig.Sig})
	}
	return e
}
