// Package diskfull fills the volume keyd's bbolt store lives on.
package diskfull

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

// When the store's volume (a real tmpfs) fills up, keyd refuses calls
// with Unavailable, saying its audit log is unavailable, and never
// answers one it could not record; once there is room again (the volume
// grown, keyd restarted) the audit chain verifies and holds a record of
// every call that was answered.
func TestFullStoreVolumeRefusesCleanly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts a tmpfs: needs root")
	}
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol")
	_ = os.MkdirAll(vol, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4608k", "tmpfs", vol).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", vol).Run() })
	e := keydtest.StartAt(t, filepath.Join(vol, "keyd.db"), nil)
	ctx := context.Background()
	var served, refused atomic.Int64
	var wg sync.WaitGroup
	var failure atomic.Value
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000 && refused.Load() < 20 && failure.Load() == nil; i++ {
				uid := fmt.Sprintf("%s-%d-%d", strings.Repeat("x", 100), w, i)
				_, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{
					Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p", PodUid: uid, NodeName: "node-1"},
					Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
				switch {
				case err == nil:
					served.Add(1)
				case status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "audit log unavailable"):
					refused.Add(1)
				default:
					failure.Store(err.Error())
				}
			}
		}()
	}
	wg.Wait()
	if f := failure.Load(); f != nil {
		t.Fatalf("after %d calls served: %v", served.Load(), f)
	}
	if refused.Load() == 0 {
		t.Fatalf("%d calls served and the volume never filled", served.Load())
	}
	t.Logf("%d calls served, then refused: the volume is full", served.Load())
	e.Stop()
	if out, err := exec.Command("mount", "-o", "remount,size=64m", vol).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	e.Run()
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact {
		t.Fatalf("the chain after the volume filled: %v %v", v, err)
	}
	issued := 0
	for _, line := range e.AuditLines() {
		var r struct{ Action, Result string }
		_ = json.Unmarshal([]byte(line), &r)
		if r.Action == "issue" && r.Result == "ok" {
			issued++
		}
	}
	if int64(issued) < served.Load() {
		t.Fatalf("%d calls were answered, %d recorded", served.Load(), issued)
	}
	if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{
		Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p", PodUid: "after", NodeName: "node-1"},
		Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}}); err != nil {
		t.Fatalf("keyd with room again: %v", err)
	}
}
