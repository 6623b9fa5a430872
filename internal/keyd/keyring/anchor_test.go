package keyring_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
)

// Replicas share the token: one reads the newest anchor while another
// writes newer ones and destroys the older, the object read vanishing
// between its lookup and its read. The reader gets an anchor every time,
// never an error.
func TestAnchorReadWhileAnotherReplicaWrites(t *testing.T) {
	cfg := keyringtest.Token(t)
	open := func() audit.Anchors {
		tok, err := hsm.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tok.Close() })
		return keyring.TokenAuditAnchors(tok)
	}
	reader, writer := open(), open()
	ctx := context.Background()
	var stop atomic.Bool
	done := make(chan error, 1)
	go func() {
		for seq := uint64(1); !stop.Load(); seq++ {
			if err := writer.Save(ctx, audit.Anchor{Seq: seq, Head: []byte("head"), Time: time.Now(), Gen: 1, MAC: []byte("mac")}); err != nil {
				done <- fmt.Errorf("anchor %d: %w", seq, err)
				return
			}
		}
		done <- nil
	}()
	var loaded, last uint64
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		a, ok, err := reader.Load(ctx)
		if err != nil {
			stop.Store(true)
			<-done
			t.Fatalf("after %d anchors read: %v", loaded, err)
		}
		if ok {
			if a.Seq < last {
				t.Fatalf("anchor %d read after %d", a.Seq, last)
			}
			last = a.Seq
			loaded++
		}
	}
	stop.Store(true)
	if err := <-done; err != nil {
		t.Fatalf("the writer: %v", err)
	}
	if loaded == 0 || last < 2 {
		t.Fatalf("%d anchors read, the newest %d: the writer did not run", loaded, last)
	}
	t.Logf("%d anchors read while the other replica wrote up to %d", loaded, last)
}
