package object

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/podfiles"
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
		`- {name: a, kind: certificate, format: der}`, `- {name: a, kind: certificate, format: [pem, pem]}`,
		`- {name: a, kind: apiKey, mode: "4440"}`, `- {name: a, kind: apiKey, mode: "1440"}`,
		`- {name: a, kind: apiKey, owner: {}}`, `- {name: a, kind: apiKey, owner: {uid: -1}}`,
		`- {name: a, kind: apiKey, owner: {gid: 4294967295}}`, `- {name: a, kind: apiKey, owner: {user: 1}}`,
		`- {name: a, kind: apiKey, optional: yes-please}`,
		`- {name: a, kind: certificate, format: {pem: 1}}`, `- {name: a, kind: token, format: pem}`,
		`- {name: a, kind: certificate, algorithm: sm2, format: pkcs12}`, `- {name: a, kind: certificate, suite: gm, format: [truststore]}`,
		"- {name: a, kind: certificate, format: jks}\n- {name: b, kind: secret, file: a.pass}",
		"- {name: a, kind: certificate, format: pkcs12}\n- {name: b, kind: secret, file: A.P12}",
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
	for _, objects := range hostile(f) {
		f.Add([]byte(objects))
	}
	f.Add([]byte(`- {name: a, kind: token, audience: [x]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, err := ParseList(data)
		if err != nil {
			return
		}
		seen := map[string]bool{strings.ToLower(podfiles.MetadataFile): true}
		for _, s := range specs {
			if !ValidFileName(s.File) || strings.Contains(s.File, "/") || s.TTL < MinTTL || s.TTL > MaxTTL {
				t.Fatalf("invalid spec accepted: %+v", s)
			}
			for _, f := range s.Files() {
				if podfiles.ValidName(f) != nil || seen[podfiles.FoldName(f)] {
					t.Fatalf("file %q accepted twice or invalid: %+v", f, specs)
				}
				seen[podfiles.FoldName(f)] = true
			}
		}
	})
}

// hostile reads testdata/hostile-objects.txt: reason -> objects parameter.
func hostile(t testing.TB) map[string]string {
	data, err := os.ReadFile("testdata/hostile-objects.txt")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var reason string
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "=== "):
			reason = strings.TrimPrefix(line, "=== ")
		case reason != "" && line != "":
			out[reason] += line + "\n"
		}
	}
	if len(out) < 20 {
		t.Fatalf("corpus holds %d entries", len(out))
	}
	return out
}

// TestParseListRefusesHostileCorpus: every class in the corpus is refused
// by the parser, before anything reaches keyd, with a message that names
// the object or field at fault.
func TestParseListRefusesHostileCorpus(t *testing.T) {
	for reason, objects := range hostile(t) {
		if specs, err := ParseList([]byte(objects)); err == nil {
			t.Errorf("%s: accepted %+v", reason, specs)
		}
	}
}

func TestFiles(t *testing.T) {
	c := Spec{Name: "mtls", Kind: Certificate, File: "tls"}
	if got := strings.Join(c.Files(), ","); got != "tls.key,tls.crt,tls.ca.crt" {
		t.Fatal(got)
	}
	specs, err := ParseList([]byte("- {name: web, kind: certificate, format: [pkcs12, pem, jks, truststore]}\n- {name: j, kind: certificate, format: jks}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(specs[0].Files(), ","); got != "web.key,web.crt,web.ca.crt,web.p12,web.jks,web.truststore.p12,web.pass" {
		t.Fatal(got)
	}
	if got := strings.Join(specs[1].Files(), ","); got != "j.jks,j.pass" {
		t.Fatal(got)
	}
	if gm, err := ParseList([]byte("- {name: g, kind: certificate, algorithm: sm2, format: pem}\n")); err != nil || !gm[0].Format.Has(FormatPEM) {
		t.Fatalf("gm certificate as pem: %v", err)
	}
	k := Spec{Name: "k", Kind: APIKey, File: "k.json"}
	if got := strings.Join(k.Files(), ","); got != "k.json" {
		t.Fatal(got)
	}
	// Unicode that only looks unusual is a valid name.
	if _, err := ParseList([]byte("- {name: a, kind: apiKey, file: 密钥.json}\n")); err != nil {
		t.Fatal(err)
	}
}
