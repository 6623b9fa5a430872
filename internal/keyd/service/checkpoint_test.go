package service_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// lines is an exported chain, scanned as a store would be.
type lines []string

func (l lines) ScanAudit(_ context.Context, from uint64, fn func(store.AuditEntry) error) error {
	for i := from; i <= uint64(len(l)); i++ {
		if err := fn(store.AuditEntry{Seq: i, Data: []byte(l[i-1])}); err != nil {
			return err
		}
	}
	return nil
}

// TestSignedCheckpoints: keyd signs checkpoints inside the module (SM2 on
// the SM module, ECDSA on SoftHSM2); anyone holding the exported chain and
// the public key detects an edit, a removal and a reordering of a covered
// record, without the HSM's audit MAC key.
func TestSignedCheckpoints(t *testing.T) { hsmtest.Each(t, testSignedCheckpoints) }

func testSignedCheckpoints(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	e := keydtest.StartOnModule(t, m, nil)
	issue := func(n int) {
		for range n {
			if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkpoint := func() audit.Checkpoint {
		r, err := e.Admin.CheckpointAudit(ctx, &keydv1.CheckpointAuditRequest{})
		if err != nil || len(r.Json) == 0 {
			t.Fatalf("checkpoint: %v %v", r, err)
		}
		var c audit.Checkpoint
		_ = json.Unmarshal(r.Json, &c)
		return c
	}
	issue(6)
	first := checkpoint()
	if r, _ := e.Admin.CheckpointAudit(ctx, &keydv1.CheckpointAuditRequest{}); len(r.GetJson()) != 0 {
		t.Fatal("a checkpoint with nothing new to cover")
	}
	issue(5)
	second := checkpoint()
	wantAlg := map[string]string{"softhsm2": audit.CheckpointSHA256, "sm": audit.CheckpointSM3}[m.Name]
	if first.Alg != wantAlg || second.Seq <= first.Seq {
		t.Fatalf("checkpoints %+v %+v (want %s)", first, second, wantAlg)
	}
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact || v.Checkpoints != 2 || v.NewestCheckpoint != second.Seq {
		t.Fatalf("verify: %v %v", v, err)
	}

	// Offline: the exported chain and the public key pinned out of band.
	chain := lines(e.AuditLines())
	s := suite.Intl
	if first.Alg == audit.CheckpointSM3 {
		s = suite.GM
	}
	pub, err := approval.ParsePublicKey(s, []byte(first.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	trust := func(kid string) (*ecdsa.PublicKey, bool) { return pub, kid == first.KeyID }
	if n, newest, err := audit.VerifyCheckpoints(ctx, chain, trust); err != nil || n != 2 || newest != second.Seq {
		t.Fatalf("offline verification of the intact chain: %d %d %v", n, newest, err)
	}
	tampered := func(what string, c lines, at uint64) {
		t.Helper()
		_, _, err := audit.VerifyCheckpoints(ctx, c, trust)
		var te *audit.TamperError
		if !errors.As(err, &te) || at != 0 && te.Seq != at {
			t.Errorf("%s: %v (want a tamper error at %d)", what, err, at)
		}
	}
	edit := slices.Clone(chain)
	edit[2] = strings.Replace(edit[2], `"payments"`, `"paymentz"`, 1)
	tampered("an edited record", edit, first.Seq)
	del := slices.Delete(slices.Clone(chain), 3, 4)
	tampered("a removed record", renumber(del), 0)
	re := slices.Clone(chain)
	re[2], re[3] = re[3], re[2]
	tampered("two records swapped", re, first.Seq)
	sig := slices.Clone(chain)
	sig[first.Seq] = strings.Replace(sig[first.Seq], `"keyd":"`, `"keyd":"x`, 1)
	tampered("a checkpoint's text edited", sig, first.Seq+1)
	other := func(kid string) (*ecdsa.PublicKey, bool) {
		k, _ := s.GenerateKey()
		return k.Public().(*ecdsa.PublicKey), true
	}
	if _, _, err := audit.VerifyCheckpoints(ctx, chain, other); err == nil {
		t.Error("checkpoints verified with another key")
	}
}

// renumber rewrites each record's seq to its position (what someone
// removing a record would do to hide the gap).
func renumber(l lines) lines {
	out := make(lines, len(l))
	for i, s := range l {
		var m map[string]any
		_ = json.Unmarshal([]byte(s), &m)
		m["seq"] = i + 1
		b, _ := json.Marshal(m)
		out[i] = string(b)
	}
	return out
}

// TestCheckpointsOnTheirOwn: keyd checkpoints on its interval when records
// were added, into the checkpoint directory and onto the token; after a
// restart it resumes the content hash from the token.
func TestCheckpointsOnTheirOwn(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := keydtest.Start(t, func(o *service.Options) { o.CheckpointInterval, o.CheckpointDir = 50*time.Millisecond, dir })
	files := func() []string {
		f, _ := filepath.Glob(filepath.Join(dir, "checkpoint-*.json"))
		return f
	}
	issueOne := func() {
		if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: podA, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFiles := func(n int) {
		for i := 0; len(files()) < n; i++ {
			if i > 400 {
				t.Fatalf("%d checkpoint files, want %d", len(files()), n)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	issueOne()
	waitFiles(1)
	e.Stop()
	e.Run()
	issueOne()
	waitFiles(2)
	v, err := e.Admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil || !v.Intact || v.Checkpoints < 2 {
		t.Fatalf("verify after a restart: %v %v", v, err)
	}
	b, _ := os.ReadFile(files()[len(files())-1])
	var c audit.Checkpoint
	if err := json.Unmarshal(b, &c); err != nil || c.Seq != v.NewestCheckpoint {
		t.Fatalf("the newest checkpoint file: %+v %v (verify says %d)", c, err, v.NewestCheckpoint)
	}
}
