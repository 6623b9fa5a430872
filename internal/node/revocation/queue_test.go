package revocation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/pod"
)

type fakeKeyd struct {
	mu    sync.Mutex
	up    bool
	calls []string
}

func (f *fakeKeyd) revoke(_ context.Context, p pod.Identity, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, p.UID)
	if !f.up {
		return errors.New("keyd unavailable")
	}
	return nil
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestQueueSurvivesRestartAndDelivers(t *testing.T) {
	dir := t.TempDir()
	k := &fakeKeyd{}
	q, err := Open(dir, k.revoke, quiet)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	q.now = func() time.Time { return clock }
	p := pod.Identity{Namespace: "payments", ServiceAccount: "payments", Name: "a", UID: "uid-a", Node: "n1"}
	if err := q.Enqueue(p, time.Now(), errors.New("down")); err != nil {
		t.Fatal(err)
	}
	_ = q.Enqueue(p, time.Now(), nil)
	if q.Len() != 1 {
		t.Fatalf("len %d", q.Len())
	}
	clock = clock.Add(2 * time.Second)
	q.deliverDue(context.Background()) // keyd down: stays, backs off
	if q.Len() != 1 || len(k.calls) != 1 {
		t.Fatalf("len %d calls %d", q.Len(), len(k.calls))
	}
	if w := q.deliverDue(context.Background()); w < time.Second {
		t.Fatalf("retried without backoff: %v", w)
	}

	// "Restart": a new queue over the same directory still has the entry.
	q2, err := Open(dir, k.revoke, quiet)
	if err != nil {
		t.Fatal(err)
	}
	q2.now = func() time.Time { return clock.Add(time.Hour) }
	if q2.Len() != 1 {
		t.Fatal("entry lost across restart")
	}
	k.up = true
	q2.deliverDue(context.Background())
	if q2.Len() != 0 {
		t.Fatal("not delivered")
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

func TestQueueHoldsNoSecretsAndRejectsBadUIDs(t *testing.T) {
	dir := t.TempDir()
	q, _ := Open(dir, (&fakeKeyd{}).revoke, quiet)
	if err := q.Enqueue(pod.Identity{UID: "../../etc/passwd"}, time.Now(), nil); err == nil {
		t.Fatal("path-like UID accepted")
	}
	_ = q.Enqueue(pod.Identity{Namespace: "n", UID: "u1"}, time.Now(), errors.New("rpc error: code = Unavailable"))
	data, _ := os.ReadFile(filepath.Join(dir, "u1.json"))
	for _, field := range []string{"token", "secret", "key"} {
		if strings.Contains(strings.ToLower(string(data)), field) {
			t.Fatalf("queue entry mentions %q: %s", field, data)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "junk.json"), []byte("{"), 0o600)
	q2, err := Open(dir, nil, quiet)
	if err != nil || q2.Len() != 1 {
		t.Fatalf("reopen with junk: %v %d", err, q2.Len())
	}
}

func TestRunDeliversWhenWoken(t *testing.T) {
	k := &fakeKeyd{up: true}
	q, _ := Open(t.TempDir(), k.revoke, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	_ = q.Enqueue(pod.Identity{UID: "u"}, time.Now(), nil)
	for i := 0; i < 500 && q.Len() > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if q.Len() != 0 {
		t.Fatal("Run did not deliver")
	}
}

// TestRefusedRevocationIsDropped: keyd's final refusal (it never served the
// pod through this node) is not retried for ever.
func TestRefusedRevocationIsDropped(t *testing.T) {
	dir := t.TempDir()
	calls := 0
	q, err := Open(dir, func(context.Context, pod.Identity, time.Time) error {
		calls++
		return fmt.Errorf("%w: not served through this node", ErrRefused)
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(pod.Identity{Namespace: "n", UID: "u1"}, time.Now(), errors.New("unavailable")); err != nil {
		t.Fatal(err)
	}
	q.now = func() time.Time { return time.Now().Add(time.Hour) } // the entry is due
	q.deliverDue(context.Background())
	if calls != 1 || q.Len() != 0 {
		t.Fatalf("%d calls, %d queued", calls, q.Len())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.json")); len(left) != 0 {
		t.Fatalf("entries left on disk: %v", left)
	}
}
