package provider_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/podkey/podkey/internal/node/csidriver/csidrivertest"
	"github.com/podkey/podkey/internal/node/provider"
	"github.com/podkey/podkey/pkg/podfiles"
)

var (
	newHarness = csidrivertest.New
	publishReq = csidrivertest.PublishReq
)

const objectsYAML = csidrivertest.ObjectsYAML

// newProvider serves the provider API on the harness's driver, as
// podkey-csi --mode both does.
func newProvider(h *csidrivertest.Harness, rotationPoll time.Duration) (*provider.Provider, error) {
	return provider.New(provider.Options{Node: h.D, StateDir: h.StateDir(), RotationPoll: rotationPoll, Now: h.Now,
		Logger: slog.New(slog.NewJSONHandler(h.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
}

// mountReq is a Mount request as the upstream driver (v1.5.4) makes it:
// the class's parameters and the kubelet's volume attributes merged into
// one JSON object, the file permission as JSON, the current versions.
func mountReq(t *testing.T, target, uid, class string, withToken bool, current []*v1alpha1.ObjectVersion) *v1alpha1.MountRequest {
	t.Helper()
	attrs := map[string]string{"objects": objectsYAML}
	for k, v := range publishReq(target, uid, class).VolumeContext {
		attrs[k] = v
	}
	if !withToken {
		delete(attrs, "csi.storage.k8s.io/serviceAccount.tokens")
	}
	a, _ := json.Marshal(attrs)
	return &v1alpha1.MountRequest{Attributes: string(a), Secrets: "{}", TargetPath: target, Permission: "420", CurrentObjectVersion: current}
}

// rotationReq is req as the driver's rotation reconciler makes it: without
// the volume's secretProviderClass attribute.
func rotationReq(t *testing.T, req *v1alpha1.MountRequest) *v1alpha1.MountRequest {
	t.Helper()
	var attrs map[string]string
	if err := json.Unmarshal([]byte(req.Attributes), &attrs); err != nil {
		t.Fatal(err)
	}
	delete(attrs, "secretProviderClass")
	a, _ := json.Marshal(attrs)
	req.Attributes = string(a)
	return req
}

func files(resp *v1alpha1.MountResponse) map[string]*v1alpha1.File {
	m := map[string]*v1alpha1.File{}
	for _, f := range resp.Files {
		m[f.Path] = f
	}
	return m
}

// TestProviderMountAndRepublish: Mount returns every object's files with
// podkey's modes and versions that say nothing about a secret; the API key
// verifies; the driver's rotation poll with the current versions mints
// nothing until renewal is due, then mints afresh.
func TestProviderMountAndRepublish(t *testing.T) {
	h := newHarness(t)
	p, err := newProvider(h, rotationPoll)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	target := h.Target("uid-p")
	v, err := p.Version(ctx, &v1alpha1.VersionRequest{Version: "v1alpha1"})
	if err != nil || v.RuntimeName != "podkey" {
		t.Fatalf("version: %v %v", v, err)
	}
	first, err := p.Mount(ctx, mountReq(t, target, "uid-p", "payments", true, nil))
	if err != nil {
		t.Fatal(err)
	}
	fs := files(first)
	for _, name := range []string{"ledger-api.json", "mtls.key", "mtls.crt", "mtls.ca.crt", "card-key", "db-password", "podkey-metadata.json"} {
		if fs[name] == nil {
			t.Fatalf("Mount returned no %s: %v", name, first.Files)
		}
	}
	if fs["mtls.key"].Mode != 0o440 {
		t.Fatalf("key mode %o", fs["mtls.key"].Mode)
	}
	var ak podfiles.APIKeyFile
	if err := json.Unmarshal(fs["ledger-api.json"].Contents, &ak); err != nil {
		t.Fatal(err)
	}
	secret, _ := base64.RawURLEncoding.DecodeString(ak.SecretKey)
	if err := h.VerifyKey(ak.AccessKeyID, secret); err != nil {
		t.Fatalf("the provider's API key does not verify: %v", err)
	}
	for _, ov := range first.ObjectVersion {
		for _, f := range first.Files {
			if len(f.Contents) >= 8 && strings.Contains(ov.Version, string(f.Contents[:8])) {
				t.Fatalf("object version %q carries file content", ov.Version)
			}
		}
	}
	// The rotation poll, not due: no files, same versions, keyd not called.
	audits := h.AuditRecords()
	again, err := p.Mount(ctx, mountReq(t, target, "uid-p", "payments", true, first.ObjectVersion))
	if err != nil || len(again.Files) != 0 || !equalVersions(again.ObjectVersion, first.ObjectVersion) {
		t.Fatalf("a republish not due: %d files, %v, %v", len(again.Files), again.ObjectVersion, err)
	}
	if h.AuditRecords() != audits {
		t.Fatal("a republish not due reached keyd")
	}
	// Due (the API key's one-minute life two-thirds gone): new credentials.
	// The driver's rotation names no class (it sends the class's
	// parameters and the pod's fields): the target's own is used.
	h.Advance(45 * time.Second)
	due, err := p.Mount(ctx, rotationReq(t, mountReq(t, target, "uid-p", "payments", true, first.ObjectVersion)))
	if err != nil || len(due.Files) == 0 || equalVersions(due.ObjectVersion, first.ObjectVersion) {
		t.Fatalf("a republish due: %d files, %v", len(due.Files), err)
	}
	if string(files(due)["ledger-api.json"].Contents) == string(fs["ledger-api.json"].Contents) {
		t.Fatal("the renewal returned the same API key")
	}
}

func equalVersions(a, b []*v1alpha1.ObjectVersion) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Id != b[i].Id || a[i].Version != b[i].Version {
			return false
		}
	}
	return true
}

// TestProviderRefusals: each refusal says what to change, with the code
// the upstream driver turns into the pod's event, before keyd is asked.
func TestProviderRefusals(t *testing.T) {
	h := newHarness(t)
	p, err := newProvider(h, rotationPoll)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	audits := h.AuditRecords()
	for name, c := range map[string]struct {
		req  *v1alpha1.MountRequest
		code codes.Code
		want string
	}{
		"no podkey token":          {mountReq(t, h.Target("u1"), "u1", "payments", false, nil), codes.FailedPrecondition, "tokenRequests: [{audience: podkey}]"},
		"not JSON":                 {&v1alpha1.MountRequest{Attributes: "{", TargetPath: h.Target("u2")}, codes.InvalidArgument, "JSON"},
		"relative target":          {mountReq(t, "pods/u3", "u3", "payments", true, nil), codes.InvalidArgument, "absolute"},
		"another provider":         {mountReq(t, h.Target("u4"), "u4", "vault", true, nil), codes.InvalidArgument, `provider "vault"`},
		"class with secrets":       {mountReq(t, h.Target("u5"), "u5", "synced", true, nil), codes.FailedPrecondition, "secretObjects"},
		"no class, unknown target": {rotationReq(t, mountReq(t, h.Target("u8"), "u8", "payments", true, nil)), codes.InvalidArgument, "secretProviderClass is required"},
	} {
		_, err := p.Mount(ctx, c.req)
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %s saying %q", name, err, c.code, c.want)
		}
	}
	// The driver's rotation off, or polling less often than the one-minute
	// API key's 20 s renewal window: the key would expire in the pod.
	for poll, want := range map[time.Duration]string{
		0:                "the secrets-store driver's rotation is off",
		30 * time.Second: "must be renewed within its last 20s, but the secrets-store driver's rotation polls every 30s: give it a ttl of at least 2m0s",
	} {
		slow, err := newProvider(h, poll)
		if err != nil {
			t.Fatal(err)
		}
		_, err = slow.Mount(ctx, mountReq(t, h.Target("u7"), "u7", "payments", true, nil))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `object "ledger-api"`) {
			t.Errorf("rotation every %s: %v, want a refusal saying %q", poll, err, want)
		}
	}
	if h.AuditRecords() != audits {
		t.Fatal("a refused mount reached keyd")
	}
}

// TestProviderTargetsAreConfined: the upstream driver's target path obeys
// NodePublishVolume's rule: below the kubelet's pods directory, reached
// without a symbolic link. Anything else is refused before keyd is asked,
// and nothing is recorded for it.
func TestProviderTargetsAreConfined(t *testing.T) {
	h := newHarness(t)
	p, err := newProvider(h, rotationPoll)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.MkdirAll(h.PodsDir(), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(h.PodsDir(), "uid-link")); err != nil {
		t.Fatal(err)
	}
	audits := h.AuditRecords()
	for name, c := range map[string]struct{ target, want string }{
		"/etc":                      {"/etc", "not below the kubelet's pods directory"},
		"the pods directory itself": {h.PodsDir(), "not below the kubelet's pods directory"},
		"a sibling of the pods dir": {h.PodsDir() + "-x/uid-s/volumes/creds", "not below the kubelet's pods directory"},
		"through a symbolic link":   {filepath.Join(h.PodsDir(), "uid-link", "volumes", "creds"), "symbolic link"},
		"with dot-dot":              {h.PodsDir() + "/uid-d/../../etc", "absolute and clean"},
		"relative":                  {"pods/uid-r", "absolute and clean"},
	} {
		_, err := p.Mount(context.Background(), mountReq(t, c.target, "uid-t", "payments", true, nil))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want InvalidArgument saying %q", name, err, c.want)
		}
	}
	if h.AuditRecords() != audits {
		t.Fatal("a refused mount reached keyd")
	}
	if n := len(p.Pods()); n != 0 {
		t.Fatalf("%d pods recorded for refused mounts", n)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("the link's destination was written: %v", entries)
	}
}

// rotationPoll is the upstream driver's rotation interval the tests'
// providers are told: well inside the 20 s renewal window of objectsYAML's
// one-minute API key.
const rotationPoll = 5 * time.Second

// apiKeyOf reads the API key a Mount returned.
func apiKeyOf(t *testing.T, resp *v1alpha1.MountResponse) (string, []byte) {
	t.Helper()
	var ak podfiles.APIKeyFile
	if err := json.Unmarshal(files(resp)["ledger-api.json"].Contents, &ak); err != nil {
		t.Fatal(err)
	}
	secret, _ := base64.RawURLEncoding.DecodeString(ak.SecretKey)
	return ak.AccessKeyID, secret
}

// TestProviderRevokesDeletedPods: a deleted pod's credentials are revoked
// when the watch reports it, the other pod's are not; a provider started
// again remembers what it obtained and revokes, for pods gone meanwhile,
// only what it obtained before the list it is given.
func TestProviderRevokesDeletedPods(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	p, err := newProvider(h, rotationPoll)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][2]any{}
	for _, uid := range []string{"uid-a", "uid-b", "uid-c"} {
		resp, err := p.Mount(ctx, mountReq(t, h.Target(uid), uid, "payments", true, nil))
		if err != nil {
			t.Fatal(err)
		}
		id, secret := apiKeyOf(t, resp)
		keys[uid] = [2]any{id, secret}
	}
	verify := func(uid string) error { return h.VerifyKey(keys[uid][0].(string), keys[uid][1].([]byte)) }
	if err := p.PodGone(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	if err := verify("uid-a"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a deleted pod's key: %v", err)
	}
	if err := verify("uid-b"); err != nil {
		t.Fatalf("another pod's key: %v", err)
	}
	// A restart: the state directory says what was obtained for b and c.
	again, err := newProvider(h, rotationPoll)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(again.Pods()); n != 2 {
		t.Fatalf("%d pods remembered after a restart, want 2", n)
	}
	// b was deleted while nobody watched; c is alive.
	h.Advance(time.Second)
	if err := again.Reconcile(ctx, map[string]bool{"uid-c": true}, h.Now()); err != nil {
		t.Fatal(err)
	}
	if err := verify("uid-b"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a pod deleted while the provider was down: %v", err)
	}
	if err := verify("uid-c"); err != nil {
		t.Fatalf("a live pod's key after reconcile: %v", err)
	}
	// Served after the list began: not taken for deleted.
	if err := again.Reconcile(ctx, map[string]bool{}, h.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := verify("uid-c"); err != nil {
		t.Fatalf("a pod served after the list was revoked: %v", err)
	}
}
