package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/podkey/podkey/pkg/store"
)

func open(t *testing.T) (*store.Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyd.db")
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestSecretsRoundTripAndListingsCarryNoValue(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	if err := s.PutSecret(ctx, store.Secret{Namespace: "a", Name: "db", Wrapped: []byte{1, 2}, Size: 2}); err != nil {
		t.Fatal(err)
	}
	_ = s.PutSecret(ctx, store.Secret{Namespace: "ab", Name: "x", Wrapped: []byte{3}})
	got, err := s.Secret(ctx, "a", "db")
	if err != nil || string(got.Wrapped) != "\x01\x02" {
		t.Fatalf("%+v %v", got, err)
	}
	list, _ := s.Secrets(ctx, "a")
	if len(list) != 1 || list[0].Wrapped != nil {
		t.Fatalf("list %+v", list)
	}
	if all, _ := s.Secrets(ctx, ""); len(all) != 2 {
		t.Fatalf("all %+v", all)
	}
	if err := s.DeleteSecret(ctx, "a", "db"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Secret(ctx, "a", "db"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.DeleteSecret(ctx, "a", "db"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
}

func TestRevocationsNeverShortenAndPrune(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	now := time.Now()
	_ = s.Revoke(ctx, store.Revocation{PodUID: "u", Until: now.Add(time.Hour), Revoked: now})
	_ = s.Revoke(ctx, store.Revocation{PodUID: "u", Until: now.Add(time.Minute), Revoked: now.Add(-time.Hour)})
	if at, _ := s.RevokedAt(ctx, "u", now.Add(30*time.Minute)); !at.Equal(now) {
		t.Fatalf("revocation was shortened or moved back: %v", at)
	}
	if at, _ := s.RevokedAt(ctx, "other", now); !at.IsZero() {
		t.Fatal("unknown pod revoked")
	}
	n, _ := s.PruneRevocations(ctx, now.Add(2*time.Hour))
	if n != 1 {
		t.Fatalf("pruned %d", n)
	}
}

func TestAuditSequenceIsGapless(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	if err := s.AppendAudit(ctx, []store.AuditEntry{{Seq: 1, Data: []byte("a")}, {Seq: 2, Data: []byte("b")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(ctx, []store.AuditEntry{{Seq: 4, Data: []byte("d")}}); !errors.Is(err, store.ErrAuditSeq) {
		t.Fatalf("gap accepted: %v", err)
	}
	last, _ := s.LastAudit(ctx)
	if last.Seq != 2 || string(last.Data) != "b" {
		t.Fatalf("last %+v", last)
	}
	s.Close()
	// Reopen: everything is durable; a second opener is refused while open.
	s2, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var seqs []uint64
	_ = s2.ScanAudit(ctx, 2, func(e store.AuditEntry) error { seqs = append(seqs, e.Seq); return nil })
	if len(seqs) != 1 || seqs[0] != 2 {
		t.Fatalf("scan %v", seqs)
	}
}

// A pod binding is written with its audit entry, or not at all.
func TestPodBindingsGoWithTheirAuditEntry(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	now := time.Now()
	if n, _, _ := s.PodNode(ctx, "u", now); n != "" {
		t.Fatal("unknown pod has a node")
	}
	bind := func(seq uint64, uid, node string) error {
		return s.AppendAudit(ctx, []store.AuditEntry{{Seq: seq, Data: []byte("r"),
			Bind: &store.PodBinding{PodUID: uid, Node: node, Until: now.Add(time.Hour)}}})
	}
	if err := bind(1, "u", "node-1"); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := s.PodNode(ctx, "u", now); n != "node-1" {
		t.Fatalf("node %q", n)
	}
	if n, _, _ := s.PodNode(ctx, "u", now.Add(2*time.Hour)); n != "" {
		t.Fatal("binding outlived its credentials")
	}
	if err := bind(5, "v", "node-2"); !errors.Is(err, store.ErrAuditSeq) {
		t.Fatalf("gap accepted: %v", err)
	}
	if n, _, _ := s.PodNode(ctx, "v", now); n != "" {
		t.Fatalf("a refused audit entry left its binding (%q)", n)
	}
}
