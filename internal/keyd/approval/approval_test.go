package approval_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/approval/approvaltest"
	"github.com/podkey/podkey/pkg/suite"
)

type team struct{ *approvaltest.Team }

func newTeam(t testing.TB, s suite.Name, extra string) *team {
	return &team{approvaltest.New(t, s, extra)}
}

var params = []byte(`{"purpose":"kek"}`)

func (tm *team) doc(t testing.TB, requester string, ttl time.Duration, breakGlass bool, approvals ...string) []byte {
	t.Helper()
	req := tm.Request(t, "RotateKey", params, requester, ttl, breakGlass)
	return tm.sign(t, req, append([]string{requester + "/requester"}, approvals...)...)
}

func (tm *team) sign(t testing.TB, req string, who ...string) []byte { return tm.Sign(t, req, who...) }

func TestQuorum(t *testing.T) {
	for _, s := range suite.All {
		t.Run(string(s), func(t *testing.T) { quorum(t, s) })
	}
}

func quorum(t *testing.T, s suite.Name) {
	tm := newTeam(t, s, "")
	now := time.Now()
	check := func(doc []byte) error {
		_, err := approval.Check(tm.Roster, doc, "RotateKey", params, now)
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
	v, err := approval.Check(tm.Roster, good, "RotateKey", params, now)
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
	d.Signatures[3].Sig, _ = approval.Sign(s, tm.Keys["fay"], d.Request)
	forged, _ = json.Marshal(d)
	refused("eve's name on fay's signature", forged, "eve's signature does not verify")

	// Expiry, and a request from the future.
	if _, err := approval.Check(tm.Roster, good, "RotateKey", params, now.Add(2*time.Hour)); !errors.Is(err, approval.ErrRefused) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("after expiry: %v", err)
	}
	if _, err := approval.Check(tm.Roster, good, "RotateKey", params, now.Add(-time.Hour)); !errors.Is(err, approval.ErrRefused) || !strings.Contains(err.Error(), "future") {
		t.Errorf("before creation: %v", err)
	}
	// Another operation or other parameters than approved.
	if _, err := approval.Check(tm.Roster, good, "RetireKey", params, now); !errors.Is(err, approval.ErrRefused) {
		t.Errorf("another operation: %v", err)
	}
	if _, err := approval.Check(tm.Roster, good, "RotateKey", []byte(`{"purpose":"audit"}`), now); !errors.Is(err, approval.ErrRefused) {
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
		if _, err := approval.Check(tm.Roster, b, "RotateKey", params, now); !errors.Is(err, approval.ErrMalformed) {
			t.Errorf("non-canonical %q: %v", bad, err)
		}
	}

	// Break-glass: one security officer alone while armed; not by others.
	bg := newTeam(t, s, "breakGlass: {roles: [security-officer], armed: true, epoch: 3}\n")
	bgDoc := bg.doc(t, "eve", time.Hour, true)
	v, err = approval.Check(bg.Roster, bgDoc, "RotateKey", params, now)
	if err != nil || !v.BreakGlass || v.Epoch != 3 {
		t.Fatalf("break-glass: %+v %v", v, err)
	}
	if _, err := approval.Check(bg.Roster, bg.doc(t, "ann", time.Hour, true), "RotateKey", params, now); !errors.Is(err, approval.ErrRefused) {
		t.Errorf("break-glass by a key administrator not allowed to: %v", err)
	}
	if _, err := approval.Check(tm.Roster, tm.doc(t, "eve", time.Hour, true), "RotateKey", params, now); !errors.Is(err, approval.ErrRefused) {
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
		p, _ := tm.Roster.Person(name)
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
		_, err := approval.Check(tm.Roster, b, "RotateKey", params, time.Now())
		if err != nil && !errors.Is(err, approval.ErrMalformed) && !errors.Is(err, approval.ErrRefused) {
			t.Fatalf("an error neither malformed nor refused: %v", err)
		}
	})
}
