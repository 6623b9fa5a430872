package accesskey

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/suite"
)

func sample() ID {
	return ID{Suite: suite.GM, Generation: 3, Expiry: time.Unix(1900000000, 0).UTC(),
		Namespace: "payments", ServiceAccount: "payments", PodUID: "1f0c5b2e-6a43-4d1e-9f3b-2b8a3d6e7c11", Object: "ledger-api"}
}

func TestRoundTripAndTag(t *testing.T) {
	id := sample()
	p, err := id.Payload()
	if err != nil {
		t.Fatal(err)
	}
	secret := suite.GM.MAC([]byte("k"), SecretInput(p))
	s := Encode(id.Suite, p, secret)
	got, payload, tag, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if got != id || !bytes.Equal(payload, p) {
		t.Fatalf("round trip: %+v", got)
	}
	if err := CheckTag(got.Suite, secret, tag); err != nil {
		t.Fatal(err)
	}
	other := suite.GM.MAC([]byte("other"), SecretInput(p))
	if err := CheckTag(got.Suite, other, tag); !errors.Is(err, ErrForged) {
		t.Fatal("tag accepted under another key")
	}
}

func TestParseRejects(t *testing.T) {
	id := sample()
	p, _ := id.Payload()
	good := Encode(id.Suite, p, []byte("s"))
	for _, bad := range []string{"", "PK1", "AK1" + good[3:], good + "!", good[:len(good)-30], "PK1" + string(make([]byte, 2000))} {
		if _, _, _, err := Parse(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := (ID{Generation: 1}).Payload(); err == nil {
		t.Error("empty fields accepted")
	}
}

func FuzzParse(f *testing.F) {
	id := sample()
	p, _ := id.Payload()
	f.Add(Encode(id.Suite, p, []byte("s")))
	f.Add("PK1AQEB")
	valid := Encode(id.Suite, p, []byte("s"))
	f.Add(valid[:len(valid)-1] + "B") // unused low bits set, for some lengths
	f.Add(valid[:8] + "\n" + valid[8:])
	f.Fuzz(func(t *testing.T, s string) {
		got, payload, tag, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to the same payload.
		p2, err := got.Payload()
		if err != nil {
			t.Fatalf("parsed id has no payload: %v", err)
		}
		if !bytes.Equal(p2, payload) || len(tag) != tagSize {
			t.Fatalf("payload not canonical for %q", s)
		}
		// And the id has one spelling: what parses is what encodes.
		if s[len(Prefix):] != base64.RawURLEncoding.EncodeToString(append(payload, tag...)) {
			t.Fatalf("%q parses but is not its own canonical spelling", s)
		}
	})
}

// TestIssueTimeRoundTrips: version 2 ids carry their issue time to the
// nanosecond under prefix PK2; an id without one takes version 1's form
// (PK1) and parses with a zero issue time.
func TestIssueTimeRoundTrips(t *testing.T) {
	secret := make([]byte, 32)
	for _, issued := range []time.Time{time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC), {}} {
		id := ID{Suite: suite.GM, Generation: 3, Expiry: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), IssuedAt: issued,
			Namespace: "ns", ServiceAccount: "sa", PodUID: "uid", Object: "k"}
		p, err := id.Payload()
		if err != nil {
			t.Fatal(err)
		}
		s := Encode(suite.GM, p, secret)
		wantPrefix := Prefix
		if issued.IsZero() {
			wantPrefix = PrefixV1
		}
		got, _, _, err := Parse(s)
		if err != nil || !strings.HasPrefix(s, wantPrefix) || !got.IssuedAt.Equal(issued) || got.PodUID != "uid" {
			t.Fatalf("%s: %+v %v", s, got, err)
		}
		// The prefix and the payload's version must agree.
		other := PrefixV1
		if wantPrefix == PrefixV1 {
			other = Prefix
		}
		if _, _, _, err := Parse(other + strings.TrimPrefix(s, wantPrefix)); err == nil {
			t.Fatalf("accepted %s with the other prefix", s)
		}
	}
}
