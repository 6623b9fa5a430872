// Package approvaltest makes approval rosters of people with real keys
// and their signed request documents, for tests.
package approvaltest

import (
	"crypto"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/pkg/suite"
)

// Team is a roster with real keys: ann (key-admin, operator), bob and cat
// (key-admin), dan (operator), eve and fay (security-officer), gus
// (auditor). The default rule (2 key-admin + 1 security-officer) applies.
type Team struct {
	Suite  suite.Name
	Roster *approval.Roster
	YAML   []byte
	Keys   map[string]crypto.Signer
}

// New makes a team; extra is appended to the roster's YAML (rules,
// breakGlass).
func New(t testing.TB, s suite.Name, extra string) *Team {
	t.Helper()
	tm := &Team{Suite: s, Keys: map[string]crypto.Signer{}}
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
		tm.Keys[p.name] = k
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
	tm.Roster, tm.YAML = r, []byte(y.String())
	return tm
}

// Request makes a request of op with params by requester, valid for ttl.
func (tm *Team) Request(t testing.TB, op string, params []byte, requester string, ttl time.Duration, breakGlass bool) string {
	t.Helper()
	req, err := approval.NewRequest(op, params, requester, time.Now(), ttl, breakGlass)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// Sign signs req as each of who: "name/role" approves in role,
// "name/requester" signs as requester. A name outside the team signs with
// a key of its own.
func (tm *Team) Sign(t testing.TB, req string, who ...string) []byte {
	t.Helper()
	d := approval.Document{Request: req}
	for _, w := range who {
		name, role, _ := strings.Cut(w, "/")
		key := tm.Keys[name]
		if key == nil {
			key, _ = tm.Suite.GenerateKey()
		}
		sig, err := approval.Sign(tm.Suite, key, req)
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

// Doc is Request then Sign by the requester and approvals.
func (tm *Team) Doc(t testing.TB, op string, params []byte, requester string, approvals ...string) []byte {
	t.Helper()
	return tm.Sign(t, tm.Request(t, op, params, requester, time.Hour, false), append([]string{requester + "/requester"}, approvals...)...)
}
