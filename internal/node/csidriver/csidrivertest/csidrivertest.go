// Package csidrivertest runs a real CSI driver for tests: a real keyd on a
// fresh SoftHSM2 token (package keydtest) with one enrolled secret, a
// driver with its own state and pods directories, a clock the test moves,
// and SecretProviderClasses for every case the tests need (Classes). The
// provider's tests share it with the driver's.
package csidrivertest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mount "k8s.io/mount-utils"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/suite"
)

// ObjectsYAML is the payments class's objects: one of every kind.
const ObjectsYAML = `
- name: ledger-api
  kind: apiKey
  file: ledger-api.json
  ttl: 1m
- name: mtls
  kind: certificate
  algorithm: sm2
- name: card-key
  kind: derivedKey
  scope: serviceAccount
- name: svc-token
  kind: token
- name: legacy-db
  kind: secret
  file: db-password
`

// Class is a SecretProviderClass of provider with objects.
func Class(ns, name, provider, objects string) *sscsi.SecretProviderClass {
	c := &sscsi.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	c.Spec.Provider = sscsi.Provider(provider)
	c.Spec.Parameters = map[string]string{"objects": objects}
	return c
}

// Classes are the classes the driver finds, by namespace/name.
var Classes = spc.Static{
	"payments/payments": Class("payments", "payments", "podkey", ObjectsYAML),
	"payments/vault":    Class("payments", "vault", "vault", ObjectsYAML),
	"payments/escape":   Class("payments", "escape", "podkey", "- {name: a, kind: apiKey, file: ../../../etc/cron.d/x}"),
	"payments/collide":  Class("payments", "collide", "podkey", "- {name: a, kind: apiKey, file: m.key}\n- {name: m, kind: certificate}"),
	"payments/missing":  Class("payments", "missing", "podkey", "- {name: absent-secret, kind: secret}"),
	"payments/meta":     Class("payments", "meta", "podkey", "- {name: a, kind: apiKey, file: podkey-metadata.json}"),
	"payments/cabundle": Class("payments", "cabundle", "podkey", "- {name: a, kind: certificate, file: x}\n- {name: b, kind: certificate, file: x.ca}"),
	"payments/case":     Class("payments", "case", "podkey", "- {name: a, kind: apiKey, file: Key}\n- {name: b, kind: token, file: key}"),
	"payments/big":      Class("payments", "big", "podkey", ManySecrets(32)),
	"payments/longname": Class("payments", "longname", "podkey", "- {name: a, kind: certificate, file: "+strings.Repeat("f", 248)+"}"),
	"shop/payments":     Class("shop", "payments", "podkey", ObjectsYAML),
	"payments/synced":   syncedClass(),
	"payments/optional": Class("payments", "optional", "podkey",
		"- {name: ledger-api, kind: apiKey, file: ledger-api.json}\n- {name: late, kind: secret, optional: true}"),
	"payments/owned": Class("payments", "owned", "podkey",
		"- {name: legacy-db, kind: secret, file: for-app, mode: \"0400\", owner: {uid: 1001}}\n"+
			"- {name: ledger-api, kind: apiKey, file: for-sidecar.json, mode: \"0440\", owner: {uid: 1002, gid: 3000}}\n"+
			"- {name: card-key, kind: derivedKey}"),
	"payments/all-optional": Class("payments", "all-optional", "podkey", "- {name: later, kind: secret, optional: true}"),
	"shop/optional":         Class("shop", "optional", "podkey", "- {name: ledger-api, kind: apiKey, optional: true}"),
	"payments/tlcp":         Class("payments", "tlcp", "podkey", "- {name: link, kind: tlcp, ttl: 2h}"),
	"payments/keystores": Class("payments", "keystores", "podkey",
		"- {name: web, kind: certificate, format: [pem, pkcs12, jks, truststore]}\n- {name: java-only, kind: certificate, format: jks}"),
}

// syncedClass would copy its objects into a Kubernetes Secret.
func syncedClass() *sscsi.SecretProviderClass {
	c := Class("payments", "synced", "podkey", ObjectsYAML)
	c.Spec.SecretObjects = []*sscsi.SecretObject{{SecretName: "copy", Type: "Opaque"}}
	return c
}

// ManySecrets is the objects of a class of n enrolled secrets.
func ManySecrets(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "- {name: s%d, kind: secret}\n", i)
	}
	return b.String()
}

// Harness is a driver on a real keyd.
type Harness struct {
	T       testing.TB
	Keyd    *keydtest.Env
	Mounter *mount.FakeMounter // nil: the host's mount(8), real tmpfs
	Dir     string
	Logs    *keydtest.SyncBuffer
	D       *csidriver.Driver
	// MaxVolumeBytes is the node's bound (0: the default).
	MaxVolumeBytes int64
	// SizeLimit is each volume's tmpfs size (0: the default).
	SizeLimit int64
	// Classes, when set, replaces the package's Classes in NewDriver.
	Classes spc.Source
	// Pods, when set, is the driver's view of pods' security contexts.
	Pods csidriver.PodSecurity

	mu    sync.Mutex
	clock time.Time
}

// New starts a harness whose mounts are recorded, not made.
func New(t *testing.T) *Harness { return Start(t, mount.NewFakeMounter(nil)) }

// NewBench starts a harness that drives real tmpfs mounts.
func NewBench(b *testing.B) *Harness { return Start(b, nil) }

// Start starts keyd (sharing the harness's clock, so a renewal after
// Advance mints credentials with a later expiry), enrolls the secret
// payments/legacy-db and starts a driver.
func Start(t testing.TB, fake *mount.FakeMounter) *Harness {
	h := &Harness{T: t, Mounter: fake, Dir: t.TempDir(), Logs: &keydtest.SyncBuffer{}, clock: time.Now()}
	h.Keyd = keydtest.Start(t, func(o *service.Options) { o.Now = h.Now })
	if _, err := h.Keyd.Admin.PutSecret(context.Background(), &keydv1.PutSecretRequest{Namespace: "payments", Name: "legacy-db", Value: []byte("db-password-Q7x")}); err != nil {
		t.Fatal(err)
	}
	h.D = h.NewDriver()
	return h
}

// Now is the harness's clock.
func (h *Harness) Now() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clock
}

// Advance moves the clock on.
func (h *Harness) Advance(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clock = h.clock.Add(d)
}

// NewDriver starts a driver on the harness's state directory, as a
// restarted podkey-csi would.
func (h *Harness) NewDriver() *csidriver.Driver {
	var classes spc.Source = Classes
	if h.Classes != nil {
		classes = h.Classes
	}
	d, err := csidriver.New(csidriver.Options{
		NodeID: "node-1", StateDir: h.StateDir(), PodsDir: h.PodsDir(), MaxVolumeBytes: h.MaxVolumeBytes, SizeLimit: h.SizeLimit,
		Issuer: h.Keyd.Keyd, Revoker: h.Keyd.Keyd, Classes: classes,
		Renewals: h.Keyd.Keyd, RenewalPoll: 20 * time.Millisecond, Pods: h.Pods,
		Volumes: h.VolumeMounter(), Now: h.Now,
		Logger: slog.New(slog.NewJSONHandler(h.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		h.T.Fatal(err)
	}
	return d
}

// StateDir is the driver's state directory.
func (h *Harness) StateDir() string { return filepath.Join(h.Dir, "state") }

// PodsDir stands for the kubelet's pods directory.
func (h *Harness) PodsDir() string { return filepath.Join(h.Dir, "pods") }

// VolumeMounter mounts through the fake mounter, or the host's mount(8).
func (h *Harness) VolumeMounter() *volume.Mounter {
	if h.Mounter == nil {
		return volume.NewMounter(nil)
	}
	return volume.NewMounter(h.Mounter)
}

// Target is the pod's volume target below the pods directory.
func (h *Harness) Target(uid string) string {
	return filepath.Join(h.PodsDir(), uid, "volumes", "creds")
}

// AuditRecords is the length of keyd's audit chain, which must verify:
// a call that keyd answered, even with a refusal, makes it grow.
func (h *Harness) AuditRecords() uint64 {
	h.T.Helper()
	r, err := h.Keyd.Admin.VerifyAudit(context.Background(), &keydv1.VerifyAuditRequest{})
	if err != nil || !r.Intact {
		h.T.Fatalf("audit: %v %v", r, err)
	}
	return r.Records
}

// VerifyKey asks keyd to verify a signature made with an API key.
func (h *Harness) VerifyKey(keyID string, secret []byte) error {
	msg := []byte("GET /ledger")
	_, err := h.Keyd.Keyd.Verify(context.Background(), &keydv1.VerifyRequest{AccessKeyId: keyID, StringToSign: msg,
		Signature: accesskey.Sign(suite.Intl, secret, msg)})
	return err
}

// Token is the pod token the kubelet passes for the pod.
func Token(uid string) string { return "eyJhbGciOiJSUzI1NiJ9.token-for-" + uid + ".c2ln" }

// PublishReq is the kubelet's NodePublishVolume for the pod's volume of
// class, at target.
func PublishReq(target, uid, class string) *csi.NodePublishVolumeRequest {
	tok, _ := json.Marshal(map[string]any{"podkey": map[string]string{"token": Token(uid), "expirationTimestamp": "2030-01-01T00:00:00Z"}})
	return &csi.NodePublishVolumeRequest{
		VolumeId:   "csi-" + uid,
		TargetPath: target,
		Readonly:   true,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{VolumeMountGroup: fmt.Sprint(os.Getgid())}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{
			"secretProviderClass":                      class,
			"csi.storage.k8s.io/pod.name":              "pay-" + uid,
			"csi.storage.k8s.io/pod.namespace":         "payments",
			"csi.storage.k8s.io/pod.uid":               uid,
			"csi.storage.k8s.io/serviceAccount.name":   "payments",
			"csi.storage.k8s.io/ephemeral":             "true",
			"csi.storage.k8s.io/serviceAccount.tokens": string(tok),
		},
	}
}

// Read is a file's content, or the test fails.
func Read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
