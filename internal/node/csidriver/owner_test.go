package csidriver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/node/runas"
)

func ownerOf(t *testing.T, path string) (uid, gid uint32, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

// Each object's files get the owner and mode the class names, when the
// pod's security context allows that owner; other objects keep root and
// the pod's group; the directories open (0755) so that each owner reaches
// its file.
func TestObjectOwnersAndModes(t *testing.T) {
	h := newHarness(t)
	gid := uint32(os.Getgid())
	h.Pods = runas.Static{
		"payments/pay-uid-own":   {UID: "uid-own", Users: []int64{1001, 1002}, Groups: []int64{3000, int64(gid)}},
		"payments/pay-uid-wrong": {UID: "uid-wrong", Users: []int64{1001}, Groups: []int64{3000}},
		"payments/pay-uid-free":  {UID: "uid-free"},
		"payments/pay-uid-new":   {UID: "a-later-pod"},
	}
	h.D = h.NewDriver()
	ctx := context.Background()

	target := h.Target("uid-own")
	if _, err := h.D.NodePublishVolume(ctx, publishReq(target, "uid-own", "owned")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		file     string
		uid, gid uint32
		mode     os.FileMode
	}{{"for-app", 1001, gid, 0o400}, {"for-sidecar.json", 1002, 3000, 0o440}, {"card-key", 0, gid, 0o440}} {
		if u, g, m := ownerOf(t, filepath.Join(target, c.file)); u != c.uid || g != c.gid || m != c.mode {
			t.Errorf("%s: %d:%d %o, want %d:%d %o", c.file, u, g, m, c.uid, c.gid, c.mode)
		}
	}
	for _, dir := range []string{target, filepath.Join(target, "..data")} {
		if _, _, m := ownerOf(t, dir); m != 0o755 {
			t.Errorf("%s mode %o", dir, m)
		}
	}

	// The pod runs as none of the owners: refused before keyd is asked.
	records := h.AuditRecords()
	_, err := h.D.NodePublishVolume(ctx, publishReq(h.Target("uid-wrong"), "uid-wrong", "owned"))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "uid 1002 is not among") {
		t.Fatalf("owner outside the pod's users: %v", err)
	}
	if h.AuditRecords() != records {
		t.Fatal("keyd was asked for a pod whose owners are refused")
	}
	// A pod that says nothing of its users allows any owner.
	if _, err := h.D.NodePublishVolume(ctx, publishReq(h.Target("uid-free"), "uid-free", "owned")); err != nil {
		t.Fatal(err)
	}
	// The API server's pod of that name is another pod (recreated).
	if _, err := h.D.NodePublishVolume(ctx, publishReq(h.Target("uid-new"), "uid-new", "owned")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("pod recreated under the same name: %v", err)
	}
	// Without --object-owners a class naming owners is refused.
	h.Pods = nil
	h.D = h.NewDriver()
	if _, err := h.D.NodePublishVolume(ctx, publishReq(h.Target("uid-off"), "uid-off", "owned")); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--object-owners") {
		t.Fatalf("owners without the pod check: %v", err)
	}
}
