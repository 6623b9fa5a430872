package object

import (
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/suite"
)

const example = `
- name: ledger-api
  kind: apiKey
  file: ledger-api.json
  ttl: 1h
- name: mtls
  kind: certificate
  algorithm: sm2
  ttl: 24h
- name: card-token-key
  kind: derivedKey
  scope: serviceAccount
- name: legacy-db
  kind: secret
  file: db-password
`

func TestParseListExample(t *testing.T) {
	specs, err := ParseList([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 4 || specs[1].Suite != suite.GM || specs[1].TTL != 24*time.Hour ||
		specs[2].Length != 32 || specs[3].File != "db-password" || specs[0].Mode != "0440" {
		t.Fatalf("%+v", specs)
	}
}

func TestParseListRejects(t *testing.T) {
	for _, bad := range []string{
		``, `[]`, `- {name: a, kind: nope}`, `- {name: A, kind: apiKey}`,
		`- {name: a, kind: apiKey, file: ../etc/passwd}`, `- {name: a, kind: apiKey, file: a/b}`,
		`- {name: a, kind: apiKey, file: ..data}`, `- {name: a, kind: apiKey, ttl: 1s}`,
		`- {name: a, kind: apiKey, ttl: 9999h}`, `- {name: a, kind: apiKey, mode: "0666"}`,
		`- {name: a, kind: apiKey, scope: pod}`, `- {name: a, kind: derivedKey, length: 8}`,
		`- {name: a, kind: certificate, algorithm: rsa}`, `- {name: a, kind: apiKey, unknown: 1}`,
		"- {name: a, kind: apiKey}\n- {name: a, kind: token}",
		"- {name: a, kind: apiKey, file: f}\n- {name: b, kind: token, file: f}",
		`- {name: a, kind: certificate, algorithm: sm2, suite: intl}`,
	} {
		if _, err := ParseList([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if _, err := ParseList([]byte(strings.Repeat("#", 70<<10))); err == nil {
		t.Error("accepted oversized list")
	}
}

func FuzzParseList(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte(`- {name: a, kind: token, audience: [x]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, err := ParseList(data)
		if err != nil {
			return
		}
		for _, s := range specs {
			if !ValidFileName(s.File) || strings.Contains(s.File, "/") || s.TTL < MinTTL || s.TTL > MaxTTL {
				t.Fatalf("invalid spec accepted: %+v", s)
			}
		}
	})
}
