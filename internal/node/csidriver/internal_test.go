package csidriver

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/pkg/object"
)

func TestConcurrentCallsOnOneVolumeAbort(t *testing.T) {
	d := &Driver{}
	unlock, err := d.Lock("v1", "/t1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Lock("v1", "/t9"); status.Code(err) != codes.Aborted {
		t.Fatalf("second lock: %v", err)
	}
	// Another volume at the same target waits too, and takes nothing.
	if _, err := d.Lock("v2", "/t1"); status.Code(err) != codes.Aborted {
		t.Fatalf("same target: %v", err)
	}
	if u2, err := d.Lock("v2", "/t2"); err != nil {
		t.Fatal("other volumes must not wait")
	} else {
		u2()
	}
	unlock()
	if u, err := d.Lock("v1", "/t1"); err != nil {
		t.Fatal(err)
	} else {
		u()
	}
}

func baseRequest() *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId: "v", TargetPath: "/var/lib/kubelet/pods/u/volumes/x", Readonly: true,
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}},
		VolumeContext: map[string]string{
			AttrClass: "payments", attrPodName: "p", attrPodNamespace: "payments", AttrPodUID: "u",
			attrServiceAccount: "sa", attrEphemeral: "true", AttrTokens: `{"podkey":{"token":"t"}}`,
		},
	}
}

// TestMountGroup: fsGroup 0 is group root, as no fsGroup leaves files
// (see docs/node.md); a mount group that is not a GID is refused.
func TestMountGroup(t *testing.T) {
	for group, want := range map[string]int{"": -1, "0": 0, "2000": 2000} {
		r := baseRequest()
		r.VolumeCapability.GetMount().VolumeMountGroup = group
		p, err := parsePublish(r, "podkey", DefaultPodsDir)
		if err != nil || p.gid != want {
			t.Fatalf("group %q: gid %v, %v", group, p, err)
		}
	}
	for _, bad := range []string{"-1", "root", "2147483647", " 1"} {
		r := baseRequest()
		r.VolumeCapability.GetMount().VolumeMountGroup = bad
		if _, err := parsePublish(r, "podkey", DefaultPodsDir); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("group %q: %v", bad, err)
		}
	}
}

// FuzzParsePublish feeds arbitrary attribute values and paths to the
// request validation: whatever it accepts must be safe to use as a class
// name, pod identity and target.
func FuzzParsePublish(f *testing.F) {
	f.Add("payments", "u", "payments", "/var/lib/kubelet/pods/u/volumes/x", `{"podkey":{"token":"t"}}`, "2000")
	f.Add("../x", "a/b", "ns", "/a/../b", `{"podkey":{}}`, "-1")
	f.Fuzz(func(t *testing.T, class, uid, ns, target, tokens, group string) {
		r := baseRequest()
		r.TargetPath = target
		r.VolumeContext[AttrClass], r.VolumeContext[AttrPodUID], r.VolumeContext[attrPodNamespace] = class, uid, ns
		r.VolumeContext[AttrTokens] = tokens
		r.VolumeCapability.GetMount().VolumeMountGroup = group
		p, err := parsePublish(r, "podkey", DefaultPodsDir)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error with code %s", status.Code(err))
			}
			return
		}
		if !strings.HasPrefix(p.target, DefaultPodsDir+"/") || !object.ValidName(p.class) || strings.ContainsAny(p.pod.UID+p.pod.Namespace, "/\x00") ||
			strings.Contains(p.target, "..") && strings.Contains(p.target, "/../") || p.token == "" {
			t.Fatalf("unsafe request accepted: %+v", p)
		}
		var m map[string]any
		if json.Unmarshal([]byte(tokens), &m) != nil {
			t.Fatal("non-JSON tokens accepted")
		}
	})
}
