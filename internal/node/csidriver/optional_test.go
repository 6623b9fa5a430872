package csidriver_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func metadataAt(t *testing.T, target string) csidriver.Metadata {
	t.Helper()
	var m csidriver.Metadata
	if err := json.Unmarshal(read(t, filepath.Join(target, volume.MetadataFile)), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func missingIn(m csidriver.Metadata, name string) string {
	for _, o := range m.Objects {
		if o.Name == name {
			return o.Missing
		}
	}
	return "not listed"
}

// An optional secret that is not enrolled yet leaves the pod with its
// required API key and a metadata entry saying why; once enrolled, the
// next republish adds it in one new generation, the API key unchanged.
func TestOptionalObjectMissingThenFilledIn(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-opt")
	req := publishReq(target, "uid-opt", "optional")
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	files, _ := volume.Current(target)
	if strings.Join(files, ",") != "ledger-api.json,podkey-metadata.json" {
		t.Fatalf("files %v", files)
	}
	if why := missingIn(metadataAt(t, target), "late"); !strings.Contains(why, "not found") && !strings.Contains(why, "not enrolled") {
		t.Fatalf("missing reason %q", why)
	}
	key := read(t, filepath.Join(target, "ledger-api.json"))

	// Still missing: a republish changes nothing.
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if m := metadataAt(t, target); missingIn(m, "late") == "" {
		t.Fatal("filled without a secret")
	}

	if _, err := h.Keyd.Admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "late", Value: []byte("late-value-9")}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got := string(read(t, filepath.Join(target, "late"))); got != "late-value-9" {
		t.Fatalf("late = %q", got)
	}
	if string(read(t, filepath.Join(target, "ledger-api.json"))) != string(key) {
		t.Fatal("filling an optional object changed the API key")
	}
	if why := missingIn(metadataAt(t, target), "late"); why != "" {
		t.Fatalf("still missing: %q", why)
	}
	fi, err := os.Stat(filepath.Join(target, "late"))
	if err != nil || fi.Mode().Perm() != 0o440 {
		t.Fatalf("mode %v %v", fi, err)
	}
}

// A pod whose objects are all optional starts while keyd is down, with
// the metadata file alone; the objects come at a republish once keyd is
// back.
func TestAllOptionalStartsWithoutKeyd(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if _, err := h.Keyd.Admin.PutSecret(ctx, &keydv1.PutSecretRequest{Namespace: "payments", Name: "later", Value: []byte("later-value")}); err != nil {
		t.Fatal(err)
	}
	target := h.Target("uid-allopt")
	req := publishReq(target, "uid-allopt", "all-optional")
	h.Keyd.Stop()
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("publish with keyd down: %v", err)
	}
	files, _ := volume.Current(target)
	if !slices.Equal(files, []string{"podkey-metadata.json"}) {
		t.Fatalf("files %v", files)
	}
	if why := missingIn(metadataAt(t, target), "later"); !strings.Contains(why, "unreachable") {
		t.Fatalf("missing reason %q", why)
	}
	// keyd still down: the republish is quiet.
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("republish with keyd down: %v", err)
	}
	h.Keyd.Run()
	// The kubelet republishes periodically; the client reconnects meanwhile.
	for i := 0; ; i++ {
		if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(target, "later")); err == nil {
			if string(b) != "later-value" {
				t.Fatalf("later = %q", b)
			}
			break
		}
		if i > 100 {
			t.Fatalf("not filled in once keyd is back: %+v", metadataAt(t, target))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Policy refusing an optional object is not an error: the pod starts.
// A required object refused, as before, fails the publish.
func TestOptionalObjectRefusedByPolicy(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	target := h.Target("uid-shop")
	req := publishReq(target, "uid-shop", "optional")
	req.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "shop"
	if _, err := h.D.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if why := missingIn(metadataAt(t, target), "ledger-api"); !strings.Contains(why, "policy does not allow") {
		t.Fatalf("missing reason %q", why)
	}
	if _, err := h.D.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
}
