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
	if at, _ := s.RevokedAt(ctx, "ns", "sa", "u", now.Add(30*time.Minute)); !at.Equal(now) {
		t.Fatalf("revocation was shortened or moved back: %v", at)
	}
	if at, _ := s.RevokedAt(ctx, "ns", "sa", "other", now); !at.IsZero() {
		t.Fatal("unknown pod revoked")
	}
	n, _ := s.PruneRevocations(ctx, now.Add(2*time.Hour))
	if n != 1 {
		t.Fatalf("pruned %d", n)
	}
}

func TestRenewalsRefuseTheirScopeAndAreFollowedBySeq(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	now := time.Now()
	pod, _ := s.AddRenewal(ctx, store.Renewal{PodUID: "u1", At: now, Until: now.Add(time.Hour)})
	sa, _ := s.AddRenewal(ctx, store.Renewal{Namespace: "pay", ServiceAccount: "api", At: now.Add(time.Second), Until: now.Add(time.Hour)})
	ns, _ := s.AddRenewal(ctx, store.Renewal{Namespace: "shop", At: now.Add(2 * time.Second), Until: now.Add(2 * time.Hour)})
	if pod.Seq != 1 || sa.Seq != 2 || ns.Seq != 3 {
		t.Fatalf("seqs %d %d %d", pod.Seq, sa.Seq, ns.Seq)
	}
	for _, c := range []struct {
		ns, sa, uid string
		want        time.Time
	}{
		{"pay", "web", "u1", now},                       // its pod
		{"pay", "api", "u2", now.Add(time.Second)},      // its service account
		{"shop", "any", "u3", now.Add(2 * time.Second)}, // its namespace
		{"pay", "web", "u4", time.Time{}},               // none of them
		{"payx", "api", "u5", time.Time{}},              // a namespace is matched whole
	} {
		if at, err := s.RevokedAt(ctx, c.ns, c.sa, c.uid, now); err != nil || !at.Equal(c.want) {
			t.Errorf("%s/%s %s: %v %v, want %v", c.ns, c.sa, c.uid, at, err, c.want)
		}
	}
	// The latest of a pod's revocation and its renewals counts.
	_ = s.Revoke(ctx, store.Revocation{PodUID: "u2", Revoked: now.Add(time.Minute), Until: now.Add(time.Hour)})
	if at, _ := s.RevokedAt(ctx, "pay", "api", "u2", now); !at.Equal(now.Add(time.Minute)) {
		t.Fatalf("revocation after renewal: %v", at)
	}
	after, _ := s.Renewals(ctx, 1, now)
	if len(after) != 2 || after[0].Seq != 2 || after[1].Seq != 3 {
		t.Fatalf("renewals after 1: %+v", after)
	}
	// Renewals survive a restart and are pruned once past.
	s.Close()
	s2, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n, _ := s2.PruneRevocations(ctx, now.Add(90*time.Minute)); n != 3 {
		t.Fatalf("pruned %d, want the revocation and two renewals", n)
	}
	if left, _ := s2.Renewals(ctx, 0, now); len(left) != 1 || left[0].Namespace != "shop" {
		t.Fatalf("left %+v", left)
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
