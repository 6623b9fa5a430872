package csidriver_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/csidriver/csidrivertest"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/suite"
)

// The driver's tests run on csidrivertest's harness; these names keep
// them short.
type harness struct{ *csidrivertest.Harness }

func newHarness(t *testing.T) *harness { return &harness{csidrivertest.New(t)} }

func newBenchHarness(b *testing.B) *harness { return &harness{csidrivertest.NewBench(b)} }

const objectsYAML = csidrivertest.ObjectsYAML

var (
	classes     = csidrivertest.Classes
	class       = csidrivertest.Class
	manySecrets = csidrivertest.ManySecrets
	publishReq  = csidrivertest.PublishReq
	token       = csidrivertest.Token
	read        = csidrivertest.Read
)

func TestPublishEveryKindThenRepublishIsNoop(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-a")
	req := publishReq(target, "uid-a", "payments")
	for i := 0; i < 2; i++ {
		if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	files, _ := volume.Current(target)
	want := "card-key,db-password,ledger-api.json,mtls.ca.crt,mtls.crt,mtls.key,podkey-metadata.json,svc-token"
	if strings.Join(files, ",") != want {
		t.Fatalf("files %v", files)
	}
	entries, _ := os.ReadDir(target)
	gens := 0
	for _, e := range entries {
		if e.IsDir() {
			gens++
		}
	}
	if gens != 1 {
		t.Fatalf("a republish that is not due wrote a new generation (%d)", gens)
	}
	var ak csidriver.APIKeyFile
	if err := json.Unmarshal(read(t, filepath.Join(target, "ledger-api.json")), &ak); err != nil {
		t.Fatal(err)
	}
	secret, _ := base64.RawURLEncoding.DecodeString(ak.SecretKey)
	msg := []byte("GET /ledger")
	v, err := h.Keyd.Keyd.Verify(ctx, &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyID, StringToSign: msg, Signature: accesskey.Sign(suite.Intl, secret, msg)})
	if err != nil || v.PodUid != "uid-a" {
		t.Fatalf("written API key does not verify: %v %v", v, err)
	}
	if string(read(t, filepath.Join(target, "db-password"))) != "db-password-Q7x" {
		t.Fatal("secret content")
	}
	if !bytes.Contains(read(t, filepath.Join(target, "mtls.key")), []byte("PRIVATE KEY")) {
		t.Fatal("certificate key")
	}
	fi, _ := os.Stat(filepath.Join(target, "db-password"))
	if fi.Mode().Perm() != 0o440 {
		t.Fatalf("mode %v", fi.Mode())
	}
	var meta csidriver.Metadata
	if err := json.Unmarshal(read(t, filepath.Join(target, volume.MetadataFile)), &meta); err != nil || len(meta.Objects) != 5 || meta.Pod.UID != "uid-a" {
		t.Fatalf("metadata %+v %v", meta, err)
	}
	if h.D.Volumes() != 1 {
		t.Fatalf("volumes %d", h.D.Volumes())
	}
}

// assertClean checks that a failed publish left nothing behind.
func (h *harness) assertClean(target string) {
	h.T.Helper()
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		h.T.Fatalf("target %s exists after a failed publish", target)
	}
	if mps, _ := h.Mounter.List(); len(mps) != 0 {
		h.T.Fatalf("mounts left: %v", mps)
	}
	states, _ := filepath.Glob(filepath.Join(h.Dir, "state", "volumes", "*"))
	if len(states) != 0 {
		h.T.Fatalf("state left: %v", states)
	}
}

func TestPublishErrorsLeaveNothing(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-e")
	mutate := func(f func(r *csi.NodePublishVolumeRequest)) *csi.NodePublishVolumeRequest {
		r := publishReq(target, "uid-e", "payments")
		f(r)
		return r
	}
	cases := []struct {
		name string
		req  *csi.NodePublishVolumeRequest
		code codes.Code
	}{
		{"no volume id", mutate(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }), codes.InvalidArgument},
		{"no target", mutate(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }), codes.InvalidArgument},
		{"relative target", mutate(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "pods/x" }), codes.InvalidArgument},
		{"no capability", mutate(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }), codes.InvalidArgument},
		{"block", mutate(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}), codes.InvalidArgument},
		{"not read-only", mutate(func(r *csi.NodePublishVolumeRequest) { r.Readonly = false }), codes.InvalidArgument},
		{"not ephemeral", mutate(func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, "csi.storage.k8s.io/ephemeral") }), codes.InvalidArgument},
		{"unknown attribute", mutate(func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["secretProviderClas"] = "x" }), codes.InvalidArgument},
		{"no class", mutate(func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, "secretProviderClass") }), codes.InvalidArgument},
		{"bad class name", mutate(func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["secretProviderClass"] = "../x" }), codes.InvalidArgument},
		{"no pod info", mutate(func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, "csi.storage.k8s.io/pod.uid") }), codes.InvalidArgument},
		{"no token", mutate(func(r *csi.NodePublishVolumeRequest) {
			delete(r.VolumeContext, "csi.storage.k8s.io/serviceAccount.tokens")
		}), codes.InvalidArgument},
		{"token for another audience", mutate(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = `{"vault":{"token":"x"}}`
		}), codes.InvalidArgument},
		{"tokens not JSON", mutate(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = "{"
		}), codes.InvalidArgument},
		{"bad mount group", mutate(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.GetMount().VolumeMountGroup = "wheel"
		}), codes.InvalidArgument},
		{"class not found", publishReq(target, "uid-e", "nope"), codes.NotFound},
		{"other provider", publishReq(target, "uid-e", "vault"), codes.InvalidArgument},
		{"path traversal in file", publishReq(target, "uid-e", "escape"), codes.InvalidArgument},
		{"colliding files", publishReq(target, "uid-e", "collide"), codes.InvalidArgument},
		{"secret not enrolled", publishReq(target, "uid-e", "missing"), codes.NotFound},
		{"policy denies", mutate(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "shop"
		}), codes.PermissionDenied},
	}
	for _, c := range cases {
		for i := 0; i < 2; i++ {
			_, err := h.D.NodePublishVolume(ctx, c.req)
			if status.Code(err) != c.code {
				t.Fatalf("%s (call %d): got %v, want %s", c.name, i+1, err, c.code)
			}
			if strings.Contains(status.Convert(err).Message(), "token-for-") {
				t.Fatalf("%s: error echoes the token", c.name)
			}
			h.assertClean(target)
		}
	}
	// keyd down: Unavailable, nothing left; back up: the retry succeeds.
	h.Keyd.Stop()
	for i := 0; i < 2; i++ {
		if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-e", "payments")); status.Code(err) != codes.Unavailable {
			t.Fatalf("keyd down: %v", err)
		}
		h.assertClean(target)
	}
	h.Keyd.Run()
	h.D = h.NewDriver() // reconnect through a fresh client
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-e", "payments")); err != nil {
		t.Fatalf("after keyd returned: %v", err)
	}
}

func TestPublishMountFailureRollsBack(t *testing.T) {
	h := newHarness(t)
	target := h.Target("uid-m")
	h.Mounter.MountCheckErrors = map[string]error{target: errors.New("injected stat failure")}
	if _, err := h.D.NodePublishVolume(context.Background(), publishReq(target, "uid-m", "payments")); status.Code(err) != codes.Internal {
		t.Fatalf("got %v", err)
	}
	h.Mounter.MountCheckErrors = nil
	h.assertClean(target)
}

func TestRotationOnRepublish(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-r")
	req := publishReq(target, "uid-r", "payments")
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	before := read(t, filepath.Join(target, "ledger-api.json"))
	h.Advance(41 * time.Second) // past two thirds of the 1m apiKey
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	after := read(t, filepath.Join(target, "ledger-api.json"))
	if bytes.Equal(before, after) {
		t.Fatal("credentials not renewed")
	}
	var meta csidriver.Metadata
	_ = json.Unmarshal(read(t, filepath.Join(target, volume.MetadataFile)), &meta)
	if !meta.RenewAt.After(h.Now().Add(-41 * time.Second)) {
		t.Fatalf("metadata renewAt not advanced: %v", meta.RenewAt)
	}
	// Renewal due while keyd is down: the volume keeps valid credentials.
	h.Advance(41 * time.Second)
	h.Keyd.Stop()
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("renewal failure with valid credentials must not fail the republish: %v", err)
	}
	if !bytes.Equal(after, read(t, filepath.Join(target, "ledger-api.json"))) {
		t.Fatal("files changed although renewal failed")
	}
	// Past expiry the failure is reported.
	h.Advance(time.Minute)
	if _, err := h.D.NodePublishVolume(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("expired and keyd down: %v", err)
	}
}

func TestUnpublishRevokesAndIsIdempotent(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-u")
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-u", "payments")); err != nil {
		t.Fatal(err)
	}
	keyID, secret := apiKeyAt(t, target)
	un := &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-uid-u", TargetPath: target}
	for i := 0; i < 2; i++ {
		if _, err := h.D.NodeUnpublishVolume(ctx, un); err != nil {
			t.Fatalf("unpublish %d: %v", i, err)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("target remains")
	}
	if err := h.VerifyKey(keyID, secret); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("key of an unpublished pod still verifies: %v", err)
	}
	if _, err := h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "never-seen", TargetPath: h.Target("never-seen")}); err != nil {
		t.Fatalf("unknown volume: %v", err)
	}
	for _, bad := range []*csi.NodeUnpublishVolumeRequest{{TargetPath: target}, {VolumeId: "v"}} {
		if _, err := h.D.NodeUnpublishVolume(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("bad unpublish: %v", err)
		}
	}
}

func TestUnpublishWithKeydDownQueuesRevocation(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-q")
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-q", "payments")); err != nil {
		t.Fatal(err)
	}
	keyID, secret := apiKeyAt(t, target)
	h.Keyd.Stop()
	if _, err := h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-uid-q", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if h.D.QueuedRevocations() != 1 {
		t.Fatalf("queued %d", h.D.QueuedRevocations())
	}
	// The plugin restarts while keyd is still down; the queue survives.
	h.Keyd.Run()
	h.D = h.NewDriver()
	if h.D.QueuedRevocations() != 1 {
		t.Fatal("queued revocation lost across restart")
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go h.D.Run(rctx)
	for i := 0; ; i++ {
		err := h.VerifyKey(keyID, secret)
		if status.Code(err) == codes.PermissionDenied && h.D.QueuedRevocations() == 0 {
			break
		}
		if i > 300 {
			t.Fatalf("queued revocation not delivered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRestartKeepsServingVolumes(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-s")
	req := publishReq(target, "uid-s", "payments")
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	before := read(t, filepath.Join(target, "ledger-api.json"))
	h.D = h.NewDriver() // restart: same state directory, volume still mounted
	if h.D.Volumes() != 1 {
		t.Fatalf("restarted driver sees %d volumes", h.D.Volumes())
	}
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, read(t, filepath.Join(target, "ledger-api.json"))) {
		t.Fatal("a not-due republish after restart rewrote the volume")
	}
	h.Advance(41 * time.Second)
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, read(t, filepath.Join(target, "ledger-api.json"))) {
		t.Fatal("rotation did not resume after restart")
	}
	// A volume whose tmpfs vanished (reboot) is forgotten on start.
	_ = h.Mounter.Unmount(target)
	h.D = h.NewDriver()
	if h.D.Volumes() != 0 {
		t.Fatal("volume without its mount kept")
	}
}

// TestNoSecretInLogsOrState collects every secret written into volumes
// and every pod token, then scans the plugin's logs and its state
// directory for them.
func TestNoSecretInLogsOrState(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	var secrets [][]byte
	for _, uid := range []string{"uid-1", "uid-2"} {
		target := h.Target(uid)
		req := publishReq(target, uid, "payments")
		if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
		h.Advance(41 * time.Second)
		if _, err := h.D.NodePublishVolume(ctx, req); err != nil { // a rotation
			t.Fatal(err)
		}
		secrets = append(secrets, []byte(token(uid)))
		for _, f := range []string{"db-password", "card-key", "svc-token", "mtls.key"} {
			secrets = append(secrets, read(t, filepath.Join(target, f)))
		}
		var ak csidriver.APIKeyFile
		_ = json.Unmarshal(read(t, filepath.Join(target, "ledger-api.json")), &ak)
		secrets = append(secrets, []byte(ak.SecretKey))
		_, _ = h.D.NodePublishVolume(ctx, publishReq(target+"x", uid, "missing")) // a failure, logged
	}
	h.Keyd.Stop()
	_, _ = h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-uid-1", TargetPath: h.Target("uid-1")})
	var state bytes.Buffer
	_ = filepath.WalkDir(filepath.Join(h.Dir, "state"), func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			state.Write(read(t, p))
		}
		return nil
	})
	logs := h.Logs.Bytes()
	if len(logs) == 0 || state.Len() == 0 {
		t.Fatal("nothing to scan")
	}
	for _, s := range secrets {
		for _, form := range [][]byte{s, []byte(base64.StdEncoding.EncodeToString(s)), []byte(base64.RawURLEncoding.EncodeToString(s))} {
			if bytes.Contains(logs, form) || bytes.Contains(state.Bytes(), form) {
				t.Fatalf("a secret (%d bytes) appears in the logs or state", len(s))
			}
		}
	}
}

func TestIdentityAndCapabilities(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	info, _ := h.D.GetPluginInfo(ctx, nil)
	if info.Name != "csi.podkey.io" {
		t.Fatal(info)
	}
	caps, _ := h.D.NodeGetCapabilities(ctx, nil)
	if caps.Capabilities[0].GetRpc().Type != csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP {
		t.Fatal(caps)
	}
	ni, _ := h.D.NodeGetInfo(ctx, nil)
	if ni.NodeId != "node-1" {
		t.Fatal(ni)
	}
	if _, err := h.D.NodeStageVolume(ctx, nil); status.Code(err) != codes.Unimplemented {
		t.Fatal(err)
	}
}

// TestTokenFromRequestSecrets covers CSIDrivers that set
// serviceAccountTokenInSecrets: the token arrives in the request's secrets.
func TestTokenFromRequestSecrets(t *testing.T) {
	h := newHarness(t)
	target := h.Target("uid-t")
	req := publishReq(target, "uid-t", "payments")
	tokens := req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]
	delete(req.VolumeContext, "csi.storage.k8s.io/serviceAccount.tokens")
	req.Secrets = map[string]string{"csi.storage.k8s.io/serviceAccount.tokens": tokens}
	if _, err := h.D.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(target, "ledger-api.json")); err != nil {
		t.Fatal(err)
	}
}

// refusedBeforeKeyd publishes req, expects code, and checks that nothing
// was left on the node and keyd was not asked (its audit chain did not
// grow). It returns the error for further checks.
func (h *harness) refusedBeforeKeyd(req *csi.NodePublishVolumeRequest, code codes.Code) error {
	h.T.Helper()
	before := h.AuditRecords()
	_, err := h.D.NodePublishVolume(context.Background(), req)
	if status.Code(err) != code {
		h.T.Fatalf("publish: got %v, want %s", err, code)
	}
	h.assertClean(req.TargetPath)
	if after := h.AuditRecords(); after != before {
		h.T.Fatalf("keyd was asked: %d audit records, %d before", after, before)
	}
	return err
}

// TestFileLayoutRefusedBeforeIssue: a class whose files clash with each
// other or with the metadata file, or whose derived names are too long,
// is refused before keyd is asked for anything, on every retry.
func TestFileLayoutRefusedBeforeIssue(t *testing.T) {
	h := newHarness(t)
	for _, c := range []string{"collide", "meta", "cabundle", "case", "longname"} {
		for i := 0; i < 2; i++ {
			h.refusedBeforeKeyd(publishReq(h.Target("uid-l"), "uid-l", c), codes.InvalidArgument)
		}
	}
}

// TestPodSuppliedTokenRefused: where the kubelet passes tokens in the
// request's secrets, the same key in the volume context can only come from
// the pod's volumeAttributes; it is refused, not forwarded.
func TestPodSuppliedTokenRefused(t *testing.T) {
	h := newHarness(t)
	target := h.Target("uid-t")
	req := publishReq(target, "uid-t", "payments")
	req.Secrets = map[string]string{"csi.storage.k8s.io/serviceAccount.tokens": req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]}
	req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = `{"podkey":{"token":"eyJhbGciOiJSUzI1NiJ9.token-for-uid-other.c2ln"}}`
	if err := h.refusedBeforeKeyd(req, codes.InvalidArgument); strings.Contains(err.Error(), "token-for-") {
		t.Fatalf("the error echoes the token: %v", err)
	}
}

// TestConfusedKubeletChangesNothing: a republish of a volume for another
// pod, and a second volume at an occupied target, are refused and leave
// the first pod's volume, files and state as they were.
func TestConfusedKubeletChangesNothing(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-a")
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-a", "payments")); err != nil {
		t.Fatal(err)
	}
	meta := read(t, filepath.Join(target, volume.MetadataFile))
	states, _ := filepath.Glob(filepath.Join(h.Dir, "state", "volumes", "*"))
	stateBefore := read(t, states[0])

	other := publishReq(target, "uid-b", "payments")
	other.VolumeId = "csi-uid-a" // the same volume, claimed for another pod
	h.Advance(2 * time.Minute)   // renewal due: a wrong republish would write
	if _, err := h.D.NodePublishVolume(ctx, other); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("republish for another pod: %v", err)
	}
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-b", "payments")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second volume at an occupied target: %v", err)
	}
	if !bytes.Equal(read(t, filepath.Join(target, volume.MetadataFile)), meta) {
		t.Fatal("the first pod's files changed")
	}
	if !bytes.Equal(read(t, states[0]), stateBefore) || h.D.Volumes() != 1 {
		t.Fatal("the first pod's state changed")
	}
	if mps, _ := h.Mounter.List(); len(mps) != 1 {
		t.Fatalf("mounts: %v", mps)
	}
}

// TestTargetsAreConfined: targets outside the kubelet's pods directory or
// through a symbolic link are refused before anything happens, and an
// unpublish only ever zeroes and removes a volume the plugin recorded at
// that target; anything else is left as it is.
func TestTargetsAreConfined(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "precious"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(h.Dir, "pods", "uid-link")
	_ = os.MkdirAll(filepath.Dir(link), 0o755)
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/", "/etc", "/proc/1/root/etc", filepath.Join(h.Dir, "pods"), filepath.Join(h.Dir, "podsx", "a"),
		filepath.Join(link, "volumes", "creds"), link} {
		if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-link", "payments")); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("publish at %s: %v", target, err)
		}
		if _, err := h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-uid-link", TargetPath: target}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("unpublish at %s: %v", target, err)
		}
	}
	// An unknown volume, or a known one at another target, is not torn down.
	stranger := h.Target("uid-stranger")
	_ = os.MkdirAll(stranger, 0o755)
	_ = os.WriteFile(filepath.Join(stranger, "data"), []byte("not ours"), 0o600)
	mine := h.Target("uid-a")
	if _, err := h.D.NodePublishVolume(ctx, publishReq(mine, "uid-a", "payments")); err != nil {
		t.Fatal(err)
	}
	for _, un := range []*csi.NodeUnpublishVolumeRequest{{VolumeId: "csi-uid-stranger", TargetPath: stranger}, {VolumeId: "csi-uid-a", TargetPath: stranger}} {
		if _, err := h.D.NodeUnpublishVolume(ctx, un); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(stranger, "data")); err != nil || string(b) != "not ours" {
		t.Fatalf("an unknown target was touched: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "precious")); err != nil || string(b) != "keep" {
		t.Fatalf("a directory outside the pods directory was touched: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(mine, "ledger-api.json")); err != nil || h.D.Volumes() != 1 {
		t.Fatalf("the known volume was torn down by an unpublish at another target: %v", err)
	}
}

// TestClassTooBigForTwoGenerations: a class whose objects could outgrow a
// volume that holds the published generation and the next one is refused
// with ResourceExhausted and the figures, before keyd issues anything.
func TestClassTooBigForTwoGenerations(t *testing.T) {
	h := newHarness(t)
	err := h.refusedBeforeKeyd(publishReq(h.Target("uid-big"), "uid-big", "big"), codes.ResourceExhausted)
	if !strings.Contains(err.Error(), "--tmpfs-size") || !strings.Contains(err.Error(), "4194304") {
		t.Fatalf("the message lacks the figures: %v", err)
	}
}

// TestNodeVolumeBytesAreBounded: tmpfs pages count against podkey-csi's
// memory cgroup, so the node's volumes together may hold no more than
// MaxVolumeBytes; beyond it a publish is ResourceExhausted before keyd is
// asked, and an unpublish frees its share, also across a restart.
func TestNodeVolumeBytesAreBounded(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.MaxVolumeBytes = 2*221184 + 1000 // two volumes of the test class at their fullest
	h.D = h.NewDriver()
	for _, uid := range []string{"uid-1", "uid-2"} {
		if _, err := h.D.NodePublishVolume(ctx, publishReq(h.Target(uid), uid, "payments")); err != nil {
			t.Fatal(err)
		}
	}
	h.D = h.NewDriver() // the reservations survive a restart
	before := h.AuditRecords()
	_, err := h.D.NodePublishVolume(ctx, publishReq(h.Target("uid-3"), "uid-3", "payments"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-volume-bytes") {
		t.Fatalf("third volume: %v", err)
	}
	if _, err := os.Stat(h.Target("uid-3")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("the refused volume's target exists")
	}
	if h.AuditRecords() != before {
		t.Fatal("keyd was asked")
	}
	if _, err := h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-uid-1", TargetPath: h.Target("uid-1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.D.NodePublishVolume(ctx, publishReq(h.Target("uid-3"), "uid-3", "payments")); err != nil {
		t.Fatalf("after an unpublish freed its share: %v", err)
	}
}

// apiKeyAt reads the API key file at target.
func apiKeyAt(t *testing.T, target string) (string, []byte) {
	t.Helper()
	var ak csidriver.APIKeyFile
	if err := json.Unmarshal(read(t, filepath.Join(target, "ledger-api.json")), &ak); err != nil {
		t.Fatal(err)
	}
	secret, _ := base64.RawURLEncoding.DecodeString(ak.SecretKey)
	return ak.AccessKeyID, secret
}

// TestVanishedVolumeComesBackFreshAndOldRevoked: after a reboot (the tmpfs
// and its files gone, podkey-csi restarted) the kubelet's publish gets
// fresh credentials, and what the vanished volume held is revoked, also
// when the revocation reaches keyd after the new publish.
func TestVanishedVolumeComesBackFreshAndOldRevoked(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-b")
	req := publishReq(target, "uid-b", "payments")
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	oldID, oldSecret := apiKeyAt(t, target)
	_ = h.Mounter.Unmount(target) // the reboot: tmpfs and files gone
	_ = os.RemoveAll(target)
	h.Advance(2 * time.Second)
	h.D = h.NewDriver() // podkey-csi starts again
	if h.D.Volumes() != 0 || h.D.QueuedRevocations() != 1 {
		t.Fatalf("after restart: %d volumes, %d queued revocations", h.D.Volumes(), h.D.QueuedRevocations())
	}
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil { // the kubelet, before the revocation is delivered
		t.Fatal(err)
	}
	newID, newSecret := apiKeyAt(t, target)
	if newID == oldID {
		t.Fatal("the new publish did not get fresh credentials")
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go h.D.Run(rctx)
	for deadline := time.Now().Add(10 * time.Second); h.D.QueuedRevocations() != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the queued revocation was not delivered")
		}
	}
	if err := h.VerifyKey(oldID, oldSecret); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the vanished volume's key: %v", err)
	}
	if err := h.VerifyKey(newID, newSecret); err != nil {
		t.Fatalf("the fresh key: %v", err)
	}
}

// TestForcedRenewalRenewsAtTheNextRepublish: an operator's renewal of one
// pod reaches the running driver, whose next republish of that pod's
// volume writes fresh credentials; the old API key is refused from the
// renewal on, and another pod's volume stays as it was.
func TestForcedRenewalRenewsAtTheNextRepublish(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.D.Run(ctx)
	renewed, kept := h.Target("uid-r1"), h.Target("uid-r2")
	reqR, reqK := publishReq(renewed, "uid-r1", "payments"), publishReq(kept, "uid-r2", "payments")
	for _, r := range []*csi.NodePublishVolumeRequest{reqR, reqK} {
		if _, err := h.D.NodePublishVolume(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	oldID, oldSecret := apiKeyAt(t, renewed)
	keptID, keptSecret := apiKeyAt(t, kept)
	h.Advance(2 * time.Second)
	if _, err := h.Keyd.Admin.ForceRenewal(ctx, &keydv1.ForceRenewalRequest{PodUid: "uid-r1"}); err != nil {
		t.Fatal(err)
	}
	if err := h.VerifyKey(oldID, oldSecret); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the renewed pod's old key right after the order: %v", err)
	}
	h.Advance(2 * time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := h.D.NodePublishVolume(ctx, reqR); err != nil { // the kubelet's republish
			t.Fatal(err)
		}
		if id, _ := apiKeyAt(t, renewed); id != oldID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the renewal never reached the driver's republish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	newID, newSecret := apiKeyAt(t, renewed)
	if err := h.VerifyKey(newID, newSecret); err != nil {
		t.Fatalf("the renewed volume's key: %v", err)
	}
	// Renewed once: the next republish is a no-op again.
	if _, err := h.D.NodePublishVolume(ctx, reqR); err != nil {
		t.Fatal(err)
	}
	if id, _ := apiKeyAt(t, renewed); id != newID {
		t.Fatal("a renewed volume renewed again")
	}
	if _, err := h.D.NodePublishVolume(ctx, reqK); err != nil {
		t.Fatal(err)
	}
	if id, _ := apiKeyAt(t, kept); id != keptID {
		t.Fatal("a pod outside the renewal's scope was renewed")
	}
	if err := h.VerifyKey(keptID, keptSecret); err != nil {
		t.Fatalf("a pod outside the renewal's scope: %v", err)
	}
}

// A class that syncs into Kubernetes Secrets is refused by podkey-csi too:
// it would copy credentials into etcd under another driver.
func TestSecretObjectsRefusedOnPublish(t *testing.T) {
	h := newHarness(t)
	_, err := h.D.NodePublishVolume(context.Background(), publishReq(h.Target("u6"), "u6", "synced"))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "secretObjects") {
		t.Fatalf("publish of a class with secretObjects: %v", err)
	}
	h.assertClean(h.Target("u6"))
}

// TestWhatIsAdmittedCanBeRenewed: on a real tmpfs of every size in a
// range, a class of API keys with long file names is either refused at
// publish, before keyd is asked, or published and renewed again and
// again: the room check counts everything the writer creates, the
// per-file symbolic links included (tmpfs keeps a link target of 128
// bytes or more in a page of its own).
func TestWhatIsAdmittedCanBeRenewed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts tmpfs: needs root")
	}
	var objs strings.Builder
	for i := range 24 {
		fmt.Fprintf(&objs, "- {name: k%d, kind: apiKey, ttl: 1m, file: %s%02d}\n", i, strings.Repeat("n", 230), i)
	}
	h := &harness{csidrivertest.Start(t, nil)}
	h.Classes = spc.Static{"payments/long": class("payments", "long", "podkey", objs.String())}
	admitted, refused := 0, 0
	for pages := int64(40); pages <= 120; pages += 4 {
		h.SizeLimit = pages * 4096
		h.D = h.NewDriver()
		uid := fmt.Sprintf("uid-%d", pages)
		target := h.Target(uid)
		t.Cleanup(func() { _ = exec.Command("umount", target).Run() })
		before := h.AuditRecords()
		_, err := h.D.NodePublishVolume(context.Background(), publishReq(target, uid, "long"))
		if status.Code(err) == codes.ResourceExhausted {
			refused++
			if h.AuditRecords() != before {
				t.Fatalf("%d pages: refused after keyd was asked", pages)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%d pages: %v", pages, err)
		}
		admitted++
		for range 3 {
			h.Advance(50 * time.Second) // past the 1m keys' renewal point
			if _, err := h.D.NodePublishVolume(context.Background(), publishReq(target, uid, "long")); err != nil {
				t.Fatalf("%d pages: republish: %v", pages, err)
			}
		}
		if strings.Contains(h.Logs.String(), "renewal failed") {
			t.Fatalf("a tmpfs of %d pages admitted the class, then a renewal failed:\n%s", pages, h.Logs.String())
		}
		if _, err := h.D.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uid, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if admitted == 0 || refused == 0 {
		t.Fatalf("the sizes tried admitted %d and refused %d: the boundary lies outside them", admitted, refused)
	}
}
