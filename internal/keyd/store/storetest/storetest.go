// Package storetest is the conformance suite of store.Store: every
// implementation runs the same tests (internal/keyd/store runs them on bbolt).
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/pod"
)

// Opener makes stores for the suite.
type Opener struct {
	// Open returns an empty store, closed when the test ends.
	Open func(t *testing.T) store.Store
	// Reopen closes s and opens the same state again, as after a restart.
	Reopen func(t *testing.T, s store.Store) store.Store
}

// Run runs every conformance test against stores from o.
func Run(t *testing.T, o Opener) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, Opener)
	}{
		{"SecretsRoundTripAndListingsCarryNoValue", secretsRoundTripAndListingsCarryNoValue},
		{"RevocationsNeverShortenAndPrune", revocationsNeverShortenAndPrune},
		{"RenewalsRefuseTheirScopeAndAreFollowedBySeq", renewalsRefuseTheirScopeAndAreFollowedBySeq},
		{"AuditSequenceIsGapless", auditSequenceIsGapless},
		{"PodBindingsGoWithTheirAuditEntry", podBindingsGoWithTheirAuditEntry},
		{"PolicyUpdatesNeverLoseOneAnother", policyUpdatesNeverLoseOneAnother},
		{"NoncesAreRememberedUntilTheirTime", noncesAreRememberedUntilTheirTime},
		{"ANonceIsClaimedOnce", aNonceIsClaimedOnce},
		{"ConcurrentSealedAppendsChainOntoTheTrueTail", concurrentSealedAppendsChainOntoTheTrueTail},
		{"LeasesAreOnePerPodAndSwappedByVersion", leasesAreOnePerPodAndSwappedByVersion},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, o) })
	}
}

func secretsRoundTripAndListingsCarryNoValue(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
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
	// A rewrap applies only to the value it was computed from.
	if err := s.RewrapSecret(ctx, "a", "db", []byte{9}, []byte{7}); !errors.Is(err, store.ErrChanged) {
		t.Fatalf("rewrap of another value: %v", err)
	}
	if err := s.RewrapSecret(ctx, "a", "db", []byte{1, 2}, []byte{5, 6, 7}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Secret(ctx, "a", "db"); !bytes.Equal(got.Wrapped, []byte{5, 6, 7}) || got.Size != 2 {
		t.Fatalf("after rewrap: %+v", got)
	}
	if err := s.RewrapSecret(ctx, "a", "nope", nil, []byte{1}); !errors.Is(err, store.ErrChanged) {
		t.Fatalf("rewrap of a missing secret: %v", err)
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

func revocationsNeverShortenAndPrune(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
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

func renewalsRefuseTheirScopeAndAreFollowedBySeq(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
	now := time.Now()
	forPod, _ := s.AddRenewal(ctx, store.Renewal{Scope: pod.Scope{UID: "u1"}, At: now, Until: now.Add(time.Hour)})
	sa, _ := s.AddRenewal(ctx, store.Renewal{Scope: pod.Scope{Namespace: "pay", ServiceAccount: "api"}, At: now.Add(time.Second), Until: now.Add(time.Hour)})
	ns, _ := s.AddRenewal(ctx, store.Renewal{Scope: pod.Scope{Namespace: "shop"}, At: now.Add(2 * time.Second), Until: now.Add(2 * time.Hour)})
	if forPod.Seq != 1 || sa.Seq != 2 || ns.Seq != 3 {
		t.Fatalf("seqs %d %d %d", forPod.Seq, sa.Seq, ns.Seq)
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
	s2 := o.Reopen(t, s)
	if n, _ := s2.PruneRevocations(ctx, now.Add(90*time.Minute)); n != 3 {
		t.Fatalf("pruned %d, want the revocation and two renewals", n)
	}
	if left, _ := s2.Renewals(ctx, 0, now); len(left) != 1 || left[0].Namespace != "shop" {
		t.Fatalf("left %+v", left)
	}
}

func auditSequenceIsGapless(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
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
	// Reopen: everything is durable.
	s2 := o.Reopen(t, s)
	var seqs []uint64
	_ = s2.ScanAudit(ctx, 2, func(e store.AuditEntry) error { seqs = append(seqs, e.Seq); return nil })
	if len(seqs) != 1 || seqs[0] != 2 {
		t.Fatalf("scan %v", seqs)
	}
}

// A pod binding is written with its audit entry, or not at all.
func podBindingsGoWithTheirAuditEntry(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
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

// Concurrent read-modify-write updates of the policy all land.
func policyUpdatesNeverLoseOneAnother(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
	if _, err := s.Policy(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("policy of an empty store: %v", err)
	}
	const writers = 16
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.UpdatePolicy(ctx, func(cur []byte) ([]byte, error) {
				return append(append([]byte(nil), cur...), fmt.Sprintf("rule-%02d\n", i)...), nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	doc, err := s.Policy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < writers; i++ {
		if !strings.Contains(string(doc), fmt.Sprintf("rule-%02d\n", i)) {
			t.Fatalf("update %d was lost:\n%s", i, doc)
		}
	}
	// An update that fails changes nothing.
	if err := s.UpdatePolicy(ctx, func([]byte) ([]byte, error) { return nil, errors.New("no") }); err == nil {
		t.Fatal("a failed update reported success")
	}
	if again, _ := s.Policy(ctx); string(again) != string(doc) {
		t.Fatal("a failed update changed the policy")
	}
}

// Of many concurrent claims of one nonce exactly one is granted; a claim
// is refused while the nonce is remembered (claimed, or recorded with an
// audit entry, also after a restart) and granted again past its time.
func aNonceIsClaimedOnce(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
	now := time.Now()
	n := store.Nonce{Key: [32]byte{9, 9}, Until: now.Add(5 * time.Minute)}
	var granted atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, err := s.ClaimNonce(ctx, n, now); err != nil {
				t.Error(err)
			} else if ok {
				granted.Add(1)
			}
		}()
	}
	wg.Wait()
	if g := granted.Load(); g != 1 {
		t.Fatalf("32 concurrent claims of one nonce: %d granted", g)
	}
	if err := s.AppendAudit(ctx, []store.AuditEntry{{Seq: 1, Data: []byte("v"), Nonce: &n}}); err != nil {
		t.Fatal(err)
	}
	s = o.Reopen(t, s)
	if ok, err := s.ClaimNonce(ctx, n, now.Add(time.Minute)); err != nil || ok {
		t.Fatalf("a recorded nonce claimed again after a restart: %v %v", ok, err)
	}
	later := now.Add(6 * time.Minute)
	if ok, err := s.ClaimNonce(ctx, store.Nonce{Key: n.Key, Until: later.Add(5 * time.Minute)}, later); err != nil || !ok {
		t.Fatalf("a nonce past its time was not granted again: %v %v", ok, err)
	}
}

// A nonce recorded with its audit entry is seen until its time, also
// after a restart, and pruned after it.
func noncesAreRememberedUntilTheirTime(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
	now := time.Now()
	key := [32]byte{1, 2, 3}
	if seen, _ := s.NonceSeen(ctx, key, now); seen {
		t.Fatal("an unrecorded nonce was seen")
	}
	if err := s.AppendAudit(ctx, []store.AuditEntry{{Seq: 1, Data: []byte("v"), Nonce: &store.Nonce{Key: key, Until: now.Add(5 * time.Minute)}}}); err != nil {
		t.Fatal(err)
	}
	s = o.Reopen(t, s)
	if seen, err := s.NonceSeen(ctx, key, now); err != nil || !seen {
		t.Fatalf("a recorded nonce after a restart: %v %v", seen, err)
	}
	if seen, _ := s.NonceSeen(ctx, key, now.Add(6*time.Minute)); seen {
		t.Fatal("a nonce was seen past its time")
	}
	if n, err := s.PruneNonces(ctx, now.Add(6*time.Minute)); err != nil || n != 1 {
		t.Fatalf("pruned %d: %v", n, err)
	}
}

// Writers that seal onto the tail they are given never conflict: every
// batch lands, the sequence is gapless, each entry names the one before
// it; a seal that fails writes nothing.
func concurrentSealedAppendsChainOntoTheTrueTail(t *testing.T, o Opener) {
	ctx := context.Background()
	s := o.Open(t)
	const writers, batches = 4, 10
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				err := s.AppendAuditAfter(ctx, func(last store.AuditEntry) ([]store.AuditEntry, error) {
					return []store.AuditEntry{
						{Seq: last.Seq + 1, Data: []byte(fmt.Sprintf("after %d", last.Seq))},
						{Seq: last.Seq + 2, Data: []byte(fmt.Sprintf("after %d", last.Seq+1))},
					}, nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := s.AppendAuditAfter(ctx, func(store.AuditEntry) ([]store.AuditEntry, error) { return nil, errors.New("no") }); err == nil {
		t.Fatal("a failed seal reported success")
	}
	want := uint64(1)
	err := s.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
		if e.Seq != want || string(e.Data) != fmt.Sprintf("after %d", want-1) {
			return fmt.Errorf("entry %d: %q, want seq %d", e.Seq, e.Data, want)
		}
		want++
		return nil
	})
	if err != nil || want != 1+writers*batches*2 {
		t.Fatalf("chain: %v, %d entries", err, want-1)
	}
}
