package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
)

const imagePolicy = keydtest.PolicyYAML + `imageRules:
- nodes: ["pool-a-*"]
  imageKeys: [site-a, site-a-gm]
`

// sealFor encrypts one layer's options for the listed image keys, from
// their exported recipient files only.
func sealFor(t *testing.T, keys map[string]*keydv1.ImageKey, kids ...string) (*imagecrypt.Blob, []byte) {
	t.Helper()
	var rs []imagecrypt.Recipient
	for _, kid := range kids {
		r, err := imagecrypt.ParseRecipient(keys[kid].RecipientPem)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	s, err := imagecrypt.NewSealer(rs)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	opts := []byte(`{"cipher":"AES_256_CTR_HMAC_SHA256","key":"bGF5ZXIta2V5"}`)
	blob, err := s.Seal(opts)
	if err != nil {
		t.Fatal(err)
	}
	bl, err := imagecrypt.Parse(blob)
	if err != nil {
		t.Fatal(err)
	}
	return bl, opts
}

func unwrapRequest(bl *imagecrypt.Blob, node string) *keydv1.UnwrapImageKeyRequest {
	req := &keydv1.UnwrapImageKeyRequest{Suite: string(bl.Suite), NodeName: node}
	for _, e := range bl.Entries {
		req.Entries = append(req.Entries, &keydv1.ImageKeyEntry{KeyId: e.KeyID, Wrapped: e.Wrapped})
	}
	return req
}

func TestUnwrapImageKeyFollowsPolicyAndIsAudited(t *testing.T) {
	hsmtest.Each(t, testUnwrapImageKeyFollowsPolicyAndIsAudited)
}

func testUnwrapImageKeyFollowsPolicyAndIsAudited(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	if _, err := e.Admin.SetPolicy(ctx, &keydv1.PolicyDocument{Yaml: []byte(imagePolicy)}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct{ id, suite string }{{"site-a", "intl"}, {"site-b", "intl"}, {"site-a-gm", "gm"}} {
		if _, err := e.Admin.CreateImageKey(ctx, &keydv1.CreateImageKeyRequest{KeyId: k.id, Suite: k.suite}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Admin.CreateImageKey(ctx, &keydv1.CreateImageKeyRequest{KeyId: "site-a", Suite: "intl"}); code(err) != codes.AlreadyExists {
		t.Fatalf("second site-a: %v", err)
	}
	if _, err := e.Admin.CreateImageKey(ctx, &keydv1.CreateImageKeyRequest{KeyId: "Site_A"}); code(err) != codes.InvalidArgument {
		t.Fatalf("bad id: %v", err)
	}
	list, err := e.Keyd.ImageKeys(ctx, &keydv1.ImageKeysRequest{})
	if err != nil || len(list.Keys) != 3 {
		t.Fatalf("image keys %v, %v", list, err)
	}
	keys := map[string]*keydv1.ImageKey{}
	for _, k := range list.Keys {
		keys[k.KeyId] = k
	}

	// 20 recipients, the node's key last; the others are keys this keyd
	// does not hold (other sites') or may not use.
	var foreign []imagecrypt.Recipient
	for i := range 18 {
		r, err := imagecrypt.ParseRecipient(keys["site-b"].RecipientPem)
		if err != nil {
			t.Fatal(err)
		}
		r.KeyID = fmt.Sprintf("other-site-%02d", i)
		foreign = append(foreign, r)
	}
	for _, kid := range []string{"site-b", "site-a"} {
		r, _ := imagecrypt.ParseRecipient(keys[kid].RecipientPem)
		foreign = append(foreign, r)
	}
	s, err := imagecrypt.NewSealer(foreign)
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := s.Seal([]byte(`{"key":"bGFzdA=="}`))
	s.Close()
	bl, _ := imagecrypt.Parse(blob)
	resp, err := e.Keyd.UnwrapImageKey(ctx, unwrapRequest(bl, "pool-a-1"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.KeyId != "site-a" || resp.KeySet == "" {
		t.Fatalf("unwrapped %q (key set %q)", resp.KeyId, resp.KeySet)
	}
	if opts, err := imagecrypt.Open(bl, resp.Cek); err != nil || string(opts) != `{"key":"bGFzdA=="}` {
		t.Fatalf("opened %q, %v", opts, err)
	}

	// Both suites.
	gmBlob, gmOpts := sealFor(t, keys, "site-a-gm")
	resp, err = e.Keyd.UnwrapImageKey(ctx, unwrapRequest(gmBlob, "pool-a-2"))
	if err != nil {
		t.Fatal(err)
	}
	if opts, err := imagecrypt.Open(gmBlob, resp.Cek); err != nil || !bytes.Equal(opts, gmOpts) {
		t.Fatalf("gm: %q, %v", opts, err)
	}

	// A node the policy does not name, a key it does not allow.
	onlyB, _ := sealFor(t, keys, "site-b")
	for _, c := range []struct {
		bl   *imagecrypt.Blob
		node string
		want codes.Code
	}{
		{bl, "pool-b-1", codes.PermissionDenied},
		{onlyB, "pool-a-1", codes.PermissionDenied},
	} {
		_, err := e.Keyd.UnwrapImageKey(ctx, unwrapRequest(c.bl, c.node))
		if code(err) != c.want || !strings.Contains(err.Error(), c.node) {
			t.Fatalf("%s: %v", c.node, err)
		}
	}
	// Allowed but not held here.
	if _, err := e.Admin.SetPolicy(ctx, &keydv1.PolicyDocument{Yaml: []byte(imagePolicy + "- {nodes: ['*'], imageKeys: ['*']}\n")}); err != nil {
		t.Fatal(err)
	}
	notHeld := unwrapRequest(bl, "pool-a-1")
	notHeld.Entries = notHeld.Entries[:18]
	if _, err := e.Keyd.UnwrapImageKey(ctx, notHeld); code(err) != codes.NotFound {
		t.Fatalf("keys not held: %v", err)
	}
	// A tampered entry is the caller's error, and says so.
	tampered := unwrapRequest(gmBlob, "pool-a-1")
	tampered.Entries[0].Wrapped[len(tampered.Entries[0].Wrapped)-1] ^= 1
	if _, err := e.Keyd.UnwrapImageKey(ctx, tampered); code(err) != codes.InvalidArgument {
		t.Fatalf("tampered: %v", err)
	}
	if _, err := e.Keyd.UnwrapImageKey(ctx, &keydv1.UnwrapImageKeyRequest{Suite: "intl", NodeName: "pool-a-1"}); code(err) != codes.InvalidArgument {
		t.Fatalf("no entries: %v", err)
	}

	// Audit: every unwrap and refusal, naming node, key and key set, never
	// a key.
	stream, err := e.Admin.ExportAudit(ctx, &keydv1.ExportAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ok, denied int
	for {
		rec, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var r audit.Record
		if err := json.Unmarshal(rec.Json, &r); err != nil {
			t.Fatal(err)
		}
		if r.Action != audit.ActionImageUnwrap {
			continue
		}
		switch r.Result {
		case audit.ResultOK:
			ok++
			if !strings.HasPrefix(r.Node, "pool-a-") || len(r.Objects) != 2 || !strings.HasPrefix(r.Objects[1], "key-set/") {
				t.Fatalf("unwrap record %+v", r)
			}
		case audit.ResultDenied:
			denied++
		}
		if bytes.Contains(rec.Json, resp.Cek) {
			t.Fatal("a content key in the audit log")
		}
	}
	if ok != 2 || denied != 3 {
		t.Fatalf("audit: %d unwraps, %d refusals", ok, denied)
	}
	if strings.Contains(e.Logs.String(), string(resp.Cek)) {
		t.Fatal("a content key in the log")
	}
}
