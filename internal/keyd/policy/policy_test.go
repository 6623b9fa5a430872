package policy

import (
	"testing"

	"github.com/podkey/podkey/pkg/object"
)

const doc = `
version: v1
rules:
- namespace: payments
  serviceAccount: payments
  objects: [ledger-api, mtls]
  kinds: [apiKey, certificate]
- namespace: "*"
  serviceAccount: monitor
  objects: ["*"]
  kinds: [token]
`

func TestAllowedIsDefaultDeny(t *testing.T) {
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ns, sa, obj string
		kind        object.Kind
		want        bool
	}{
		{"payments", "payments", "ledger-api", object.APIKey, true},
		{"payments", "payments", "ledger-api", object.Secret, false},
		{"payments", "other", "ledger-api", object.APIKey, false},
		{"shop", "payments", "ledger-api", object.APIKey, false},
		{"payments", "payments", "legacy", object.APIKey, false},
		{"any", "monitor", "x", object.Token, true},
		{"any", "monitor", "x", object.APIKey, false},
	} {
		if got := p.Allowed(c.ns, c.sa, c.obj, c.kind); got != c.want {
			t.Errorf("%+v: got %v", c, got)
		}
	}
	if Empty().Allowed("a", "b", "c", object.APIKey) {
		t.Fatal("empty policy allows")
	}
}

func TestAddRemove(t *testing.T) {
	p := Empty()
	r := Rule{Namespace: "a", ServiceAccount: "b", Objects: []string{"c"}}
	if err := p.Add(r); err != nil {
		t.Fatal(err)
	}
	_ = p.Add(r)
	if len(p.Rules) != 1 {
		t.Fatal("duplicate rule added")
	}
	if err := p.Add(Rule{Namespace: "A B", ServiceAccount: "b", Objects: []string{"c"}}); err == nil || len(p.Rules) != 1 {
		t.Fatal("invalid rule added")
	}
	if n := p.Remove(r); n != 1 || len(p.Rules) != 0 {
		t.Fatalf("removed %d", n)
	}
}

func TestParseRejects(t *testing.T) {
	for _, bad := range []string{
		"version: v2\n", "rules: []\n", "version: v1\nrules: [{namespace: a, serviceAccount: b}]\n",
		"version: v1\nrules: [{namespace: a, serviceAccount: b, objects: [x], kinds: [nope]}]\n",
		"version: v1\nrules: [{namespace: 'a/b', serviceAccount: b, objects: [x]}]\n",
		"version: v1\nextra: true\n",
		"version: v1\nrules: []\nimageRules: [{nodes: [a]}]\n",
		"version: v1\nrules: []\nimageRules: [{nodes: ['[a'], imageKeys: [k]}]\n",
		"version: v1\nrules: []\nimageRules: [{nodes: ['*'], imageKeys: [Bad_Key]}]\n",
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestImageRules(t *testing.T) {
	p, err := Parse([]byte(`version: v1
rules: []
imageRules:
- nodes: ["pool-a-*", edge-1]
  imageKeys: [cluster-a]
- nodes: ["*"]
  imageKeys: [public-base]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		node, key string
		want      bool
	}{
		{"pool-a-3", "cluster-a", true}, {"edge-1", "cluster-a", true}, {"pool-b-1", "cluster-a", false},
		{"pool-b-1", "public-base", true}, {"pool-a-3", "other", false},
	} {
		if got := p.AllowedImageKey(c.node, c.key); got != c.want {
			t.Errorf("%s may unwrap %s: %v, want %v", c.node, c.key, got, c.want)
		}
	}
	if Empty().AllowedImageKey("n", "k") {
		t.Fatal("the empty policy allows an image key")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(doc))
	f.Add([]byte(`{"version":"v1","rules":[{"namespace":"*","serviceAccount":"*","objects":["*"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		out, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Parse(out)
		if err != nil {
			t.Fatalf("round trip of an accepted policy fails: %v\n%s", err, out)
		}
		if len(q.Rules) != len(p.Rules) || len(q.ImageRules) != len(p.ImageRules) {
			t.Fatal("round trip changed the rules")
		}
	})
}
