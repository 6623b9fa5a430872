package approval_test

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/pkg/suite"
)

// team is a roster with real keys: two key administrators (one also an
// operator), a third key administrator, an operator, two security
// officers and an auditor.
type team struct {
	s      suite.Name
	roster *approval.Roster
	keys   map[string]crypto.Signer
}

func newTeam(t testing.TB, s suite.Name, extra string) *team {
	t.Helper()
	tm := &team{s: s, keys: map[string]crypto.Signer{}}
	people := []struct{ name, roles string }{
		{"ann", "key-admin, operator"}, {"bob", "key-admin"}, {"cat", "key-admin"},
		{"dan", "operator"}, {"eve", "security-officer"}, {"fay", "security-officer"}, {"gus", "auditor"},
	}
	var y strings.Builder
	fmt.Fprintf(&y, "suite: %s\npeople:\n", s)
	for _, p := range people {
		k, err := s.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		tm.keys[p.name] = k
		pem, err := approval.MarshalPublicKey(s, k.Public())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&y, "- name: %s\n  roles: [%s]\n  publicKey: %q\n", p.name, p.roles, pem)
	}
	y.WriteString(extra)
	r, err := approval.ParseRoster([]byte(y.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, y.String())
	}
	tm.roster = r
	return tm
}

var params = []byte(`{"purpose":"kek"}`)

// doc makes a request by requester and signs it as each of "name/role"
// in approvals ("name/requester" signs as requester).
func (tm *team) doc(t testing.TB, requester string, ttl time.Duration, breakGlass bool, approvals ...string) []byte {
	t.Helper()
	req, err := approval.NewRequest("RotateKey", params, requester, time.Now(), ttl, breakGlass)
	if err != nil {
		t.Fatal(err)
	}
	return tm.sign(t, req, append([]string{requester + "/requester"}, approvals...)...)
}

func (tm *team) sign(t testing.TB, req string, who ...string) []byte {
	t.Helper()
	d := approval.Document{Request: req}
	for _, w := range who {
		name, role, _ := strings.Cut(w, "/")
		key := tm.keys[name]
		if key == nil { // someone outside the roster
			key, _ = tm.s.GenerateKey()
		}
		sig, err := approval.Sign(tm.s, key, req)
		if err != nil {
			t.Fatal(err)
		}
		s := approval.Signature{Name: name, Sig: sig}
		if role == "requester" {
			s.Requester = true
		} else {
			s.Role = approval.Role(role)
		}
		d.Signatures = append(d.Signatures, s)
	}
	b, _ := json.Marshal(d)
	return b
}

func TestQuorum(t *testing.T) {
	for _, s := range suite.All {
		t.Run(string(s), func(t *testing.T) { quorum(t, s) })
	}
}

func quorum(t *testing.T, s suite.Name) {
	tm := newTeam(t, s, "")
	now := time.Now()
	check := func(doc []byte) error {
		_, err := approval.Check(tm.roster, doc, "RotateKey", params, now)
		return err
	}
	refused := func(name string, doc []byte, why string) {
		t.Helper()
		err := check(doc)
		if !errors.Is(err, approval.ErrRefused) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: got %v, want a refusal saying %q", name, err, why)
		}
	}
	// Default rule: 2 key-admin + 1 security-officer, besides the requester.
	good := tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "bob/key-admin", "eve/security-officer")
	v, err := approval.Check(tm.roster, good, "RotateKey", params, now)
	if err != nil {
		t.Fatalf("a valid quorum: %v", err)
	}
	if len(v.Signatures) != 4 || len(v.Digest) != 64 {
		t.Fatalf("verified %+v", v)
	}
	refused("two approvals", tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "bob/key-admin"), "do not meet the quorum")
	refused("self-approval", tm.doc(t, "ann", time.Hour, false, "ann/key-admin", "bob/key-admin", "eve/security-officer"), "may not also approve")
	refused("one person twice", tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "ann/operator", "eve/security-officer"), "counts once")
	refused("one person twice, same role", tm.doc(t, "dan", time.Hour, false, "bob/key-admin", "bob/key-admin", "eve/security-officer"), "counts once")
	refused("a role not held", tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "dan/key-admin", "eve/security-officer"), "may not also approve")
	refused("a role not held", tm.doc(t, "ann", time.Hour, false, "bob/key-admin", "dan/key-admin", "eve/security-officer"), "a role they do not hold")
	refused("an auditor's approval", tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "bob/key-admin", "gus/auditor"), "auditors approve nothing")
	refused("a stranger", tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "bob/key-admin", "zed/security-officer"), "not in the roster")
	refused("no requester signature", tm.sign(t, mustRequest(t, "dan", time.Hour), "ann/key-admin", "bob/key-admin", "eve/security-officer"), "has not signed")

	// A signature by someone else's key under a roster name.
	forged := tm.doc(t, "dan", time.Hour, false, "ann/key-admin", "bob/key-admin", "eve/security-officer")
	var d approval.Document
	_ = json.Unmarshal(forged, &d)
	d.Signatures[3].Sig, _ = approval.Sign(s, tm.keys["fay"], d.Request)
	forged, _ = json.Marshal(d)
	refused("eve's name on fay's signature", forged, "eve's signature does not verify")

	// Expiry, and a request from the future.
	if _, err := approval.Check(tm.roster, good, "RotateKey", params, now.Add(2*time.Hour)); !errors.Is(err, approval.ErrRefused) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("after expiry: %v", err)
	}
	if _, err := approval.Check(tm.roster, good, "RotateKey", params, now.Add(-time.Hour)); !errors.Is(err, approval.ErrRefused) || !strings.Contains(err.Error(), "future") {
		t.Errorf("before creation: %v", err)
	}
	// Another operation or other parameters than approved.
	if _, err := approval.Check(tm.roster, good, "RetireKey", params, now); !errors.Is(err, approval.ErrRefused) {
		t.Errorf("another operation: %v", err)
	}
	if _, err := approval.Check(tm.roster, good, "RotateKey", []byte(`{"purpose":"audit"}`), now); !errors.Is(err, approval.ErrRefused) {
		t.Errorf("other parameters: %v", err)
	}
	// The request edited after signing: every signature fails.
	_ = json.Unmarshal(good, &d)
	d.Request = strings.Replace(d.Request, `"requester":"dan"`, `"requester":"ann"`, 1)
	edited, _ := json.Marshal(d)
	refused("edited after signing", edited, "signature does not verify")
	// Not canonical: spaces, or a duplicate key.
	_ = json.Unmarshal(good, &d)
	for _, bad := range []string{strings.Replace(d.Request, ",", ", ", 1), strings.Replace(d.Request, `{"created`, `{"op":"SetPolicy","created`, 1)} {
		d2 := d
		d2.Request = bad
		b, _ := json.Marshal(d2)
		if _, err := approval.Check(tm.roster, b, "RotateKey", params, now); !errors.Is(err, approval.ErrMalformed) {
			t.Errorf("non-canonical %q: %v", bad, err)
		}
	}

	// Break-glass: one security officer alone while armed; not by others.
	bg := newTeam(t, s, "breakGlass: {roles: [security-officer], armed: true, epoch: 3}\n")
	bgDoc := bg.doc(t, "eve", time.Hour, true)
	v, err = approval.Check(bg.roster, bgDoc, "RotateKey", params, now)
	if err != nil || !v.BreakGlass || v.Epoch != 3 {
		t.Fatalf("break-glass: %+v %v", v, err)
	}
	if _, err := approval.Check(bg.roster, bg.doc(t, "ann", time.Hour, true), "RotateKey", params, now); !errors.Is(err, approval.ErrRefused) {
		t.Errorf("break-glass by a key administrator not allowed to: %v", err)
	}
	if _, err := approval.Check(tm.roster, tm.doc(t, "eve", time.Hour, true), "RotateKey", params, now); !errors.Is(err, approval.ErrRefused) {
		t.Errorf("break-glass not armed: %v", err)
	}
}

func mustRequest(t *testing.T, requester string, ttl time.Duration) string {
	r, err := approval.NewRequest("RotateKey", params, requester, time.Now(), ttl, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRosterRefusals(t *testing.T) {
	tm := newTeam(t, suite.GM, "")
	key := func(name string) string {
		p, _ := tm.roster.Person(name)
		return fmt.Sprintf("%q", p.PublicKey)
	}
	for why, y := range map[string]string{
		"may not be both auditor and key-admin":         "suite: gm\npeople:\n- {name: a, roles: [auditor, key-admin], publicKey: " + key("ann") + "}\n",
		"may not be both security-officer and operator": "suite: gm\npeople:\n- {name: a, roles: [operator, security-officer], publicKey: " + key("ann") + "}\n",
		"cannot be met":            "suite: gm\npeople:\n- {name: a, roles: [key-admin], publicKey: " + key("ann") + "}\n- {name: b, roles: [key-admin], publicKey: " + key("bob") + "}\n- {name: c, roles: [security-officer], publicKey: " + key("eve") + "}\n",
		"fewer than 2":             "suite: gm\npeople:\n- {name: a, roles: [key-admin], publicKey: " + key("ann") + "}\ndefault: [{role: key-admin, count: 1}]\n",
		"not a gm key":             "suite: gm\npeople:\n- {name: a, roles: [key-admin], publicKey: " + fmt.Sprintf("%q", mustIntlKey(t)) + "}\n",
		"unknown role":             "suite: gm\npeople:\n- {name: a, roles: [root], publicKey: " + key("ann") + "}\n",
		"listed twice":             "suite: gm\npeople:\n- {name: a, roles: [key-admin], publicKey: " + key("ann") + "}\n- {name: a, roles: [key-admin], publicKey: " + key("bob") + "}\n",
		"unknown operation":        "suite: gm\npeople:\n- {name: a, roles: [key-admin], publicKey: " + key("ann") + "}\nrules: {Reboot: [{role: key-admin, count: 2}]}\n",
		"auditors approve nothing": "suite: gm\npeople:\n- {name: a, roles: [key-admin], publicKey: " + key("ann") + "}\ndefault: [{role: auditor, count: 2}]\n",
	} {
		if _, err := approval.ParseRoster([]byte(y)); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: got %v", why, err)
		}
	}
}

func mustIntlKey(t *testing.T) string {
	k, _ := suite.Intl.GenerateKey()
	p, err := approval.MarshalPublicKey(suite.Intl, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func FuzzParseDocument(f *testing.F) {
	tm := newTeam(f, suite.Intl, "")
	f.Add(tm.doc(f, "dan", time.Hour, false, "ann/key-admin"))
	f.Add([]byte(`{"request":"{}","signatures":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := approval.Check(tm.roster, b, "RotateKey", params, time.Now())
		if err != nil && !errors.Is(err, approval.ErrMalformed) && !errors.Is(err, approval.ErrRefused) {
			t.Fatalf("an error neither malformed nor refused: %v", err)
		}
	})
}
