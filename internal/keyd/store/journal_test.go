package store_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/podkey/podkey/internal/keyd/store"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func entry(seq uint64, size int) store.AuditEntry {
	e := store.AuditEntry{Seq: seq, Data: bytes.Repeat([]byte{byte('a' + seq%26)}, size)}
	e.Bind = &store.PodBinding{PodUID: fmt.Sprintf("pod-%d", seq), Node: fmt.Sprintf("node-%d", seq%3), Until: t0.Add(time.Hour)}
	if seq%2 == 0 {
		e.Nonce = &store.Nonce{Key: [32]byte{byte(seq), byte(seq >> 8), 7}, Until: t0.Add(time.Minute)}
	}
	return e
}

func appendRange(t testing.TB, s store.Store, from, to uint64, size int) {
	t.Helper()
	var batch []store.AuditEntry
	for seq := from; seq <= to; seq++ {
		batch = append(batch, entry(seq, size))
	}
	if err := s.AppendAudit(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
}

// checkEntries asserts that the store holds exactly 1..last, each with the
// data, binding and nonce entry() gave it.
func checkEntries(t *testing.T, s store.Store, last uint64, size int) {
	t.Helper()
	ctx := context.Background()
	if l, err := s.LastAudit(ctx); err != nil || l.Seq != last {
		t.Fatalf("last audit %d (%v), want %d", l.Seq, err, last)
	}
	want := uint64(1)
	err := s.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
		if e.Seq != want || !bytes.Equal(e.Data, entry(e.Seq, size).Data) {
			return fmt.Errorf("entry %d (%d bytes) where %d was due", e.Seq, len(e.Data), want)
		}
		want++
		return nil
	})
	if err != nil || want != last+1 {
		t.Fatalf("scan ended before %d (%v), want 1..%d", want, err, last)
	}
	for seq := uint64(1); seq <= last; seq++ {
		e := entry(seq, size)
		if node, _, _ := s.PodNode(ctx, e.Bind.PodUID, t0); node != e.Bind.Node {
			t.Fatalf("pod of entry %d on %q, want %q", seq, node, e.Bind.Node)
		}
		if e.Nonce != nil {
			if seen, _ := s.NonceSeen(ctx, e.Nonce.Key, t0); !seen {
				t.Fatalf("nonce of entry %d forgotten", seq)
			}
		}
	}
	if node, _, _ := s.PodNode(ctx, fmt.Sprintf("pod-%d", last+1), t0); node != "" {
		t.Fatalf("a binding past the log's end: %q", node)
	}
}

// fileAudit reads the bbolt file itself, journal aside: how many audit
// entries it holds.
func fileAudit(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	_ = db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket([]byte("audit")).Stats().KeyN
		return nil
	})
	return n
}

func openBolt(t *testing.T, path string) *store.Bolt {
	t.Helper()
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Appends are durable in the journal before the bbolt file has them; a
// crash before the apply loses none of them, their bindings or nonces.
func TestJournalReplaysWhatACrashLeft(t *testing.T) {
	defer store.HoldJournal()()
	path := filepath.Join(t.TempDir(), "keyd.db")
	s := openBolt(t, path)
	appendRange(t, s, 1, 1, 300)
	appendRange(t, s, 2, 9, 300)
	appendRange(t, s, 10, 30, 300)
	checkEntries(t, s, 30, 300) // read from the journal's side
	s.Crash()
	if n := fileAudit(t, path); n != 0 {
		t.Fatalf("the bbolt file has %d entries before any apply: the journal was not used", n)
	}
	s = openBolt(t, path)
	checkEntries(t, s, 30, 300)
	s.Crash()
	if n := fileAudit(t, path); n != 30 {
		t.Fatalf("the bbolt file has %d entries after the reopen applied the journal, want 30", n)
	}
	s = openBolt(t, path)
	defer s.Close()
	appendRange(t, s, 31, 31, 300)
	checkEntries(t, s, 31, 300)
}

// A clean close applies the journal and removes it.
func TestJournalCloseAppliesAndRemoves(t *testing.T) {
	defer store.HoldJournal()()
	path := filepath.Join(t.TempDir(), "keyd.db")
	s := openBolt(t, path)
	appendRange(t, s, 1, 5, 100)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".journal"); !os.IsNotExist(err) {
		t.Fatalf("journal left after a clean close: %v", err)
	}
	if n := fileAudit(t, path); n != 5 {
		t.Fatalf("file has %d entries, want 5", n)
	}
}

// journalFrames lists where the frames in a journal file end.
func journalFrames(t *testing.T, buf []byte) []int {
	var ends []int
	for off := store.JournalHeader; ; {
		_, n, err := store.ParseFrame(buf[off:])
		if err != nil {
			return ends
		}
		off += n
		ends = append(ends, off)
	}
}

func copyFile(t *testing.T, from, to string, edit func([]byte)) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(b)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A frame torn by a crash (its tail never reached the disk, or a byte of
// it is wrong) is never applied, wherever the tear is; the frames before
// it are.
func TestJournalTornFrameIsNeverApplied(t *testing.T) {
	defer store.HoldJournal()()
	dir := t.TempDir()
	path := filepath.Join(dir, "keyd.db")
	s := openBolt(t, path)
	appendRange(t, s, 1, 3, 40)
	appendRange(t, s, 4, 5, 40)
	s.Crash()
	journal, _ := os.ReadFile(path + ".journal")
	ends := journalFrames(t, journal)
	if len(ends) != 2 {
		t.Fatalf("%d frames in the journal, want 2", len(ends))
	}
	start, end := ends[0], ends[1]
	try := func(name string, edit func([]byte)) {
		t.Helper()
		d := t.TempDir()
		copyFile(t, path, filepath.Join(d, "keyd.db"), nil)
		copyFile(t, path+".journal", filepath.Join(d, "keyd.db.journal"), edit)
		s := openBolt(t, filepath.Join(d, "keyd.db"))
		defer s.Close()
		if l, _ := s.LastAudit(context.Background()); l.Seq != 3 {
			t.Fatalf("%s: last %d, want 3 (the torn frame applied?)", name, l.Seq)
		}
		checkEntries(t, s, 3, 40)
	}
	for cut := start; cut < end; cut++ {
		if !bytes.ContainsFunc(journal[cut:end], func(r rune) bool { return r != 0 }) {
			continue // zeroes already: nothing torn
		}
		try(fmt.Sprintf("cut at %d", cut-start), func(b []byte) { clear(b[cut:end]) })
	}
	for _, at := range []int{start, start + 5, start + 9, (start + end) / 2, end - 1} {
		try(fmt.Sprintf("byte %d flipped", at-start), func(b []byte) { b[at] ^= 0x40 })
	}
}

// After an apply the journal starts again at its head; the older frames
// behind the new ones, whole or cut, are never applied again.
func TestJournalOlderFramesAfterRewind(t *testing.T) {
	for _, c := range []struct {
		name          string
		oldSize, size int
	}{{"same size", 60, 60}, {"shorter", 200, 10}, {"longer", 10, 200}} {
		t.Run(c.name, func(t *testing.T) {
			defer store.HoldJournal()()
			path := filepath.Join(t.TempDir(), "keyd.db")
			s := openBolt(t, path)
			for seq := uint64(1); seq <= 10; seq++ {
				appendRange(t, s, seq, seq, c.oldSize)
			}
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			appendRange(t, s, 11, 11, c.size)
			appendRange(t, s, 12, 12, c.size)
			s.Crash()
			s = openBolt(t, path)
			defer s.Close()
			ctx := context.Background()
			var seqs []uint64
			_ = s.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
				want := c.oldSize
				if e.Seq > 10 {
					want = c.size
				}
				if len(e.Data) != want {
					t.Errorf("entry %d has %d bytes, want %d", e.Seq, len(e.Data), want)
				}
				seqs = append(seqs, e.Seq)
				return nil
			})
			if len(seqs) != 12 || seqs[11] != 12 {
				t.Fatalf("entries %v, want 1..12", seqs)
			}
		})
	}
}

// Another store's journal beside a file (a file put back by hand) is
// moved aside, never applied.
func TestJournalOfAnotherStoreIsNotApplied(t *testing.T) {
	defer store.HoldJournal()()
	dir := t.TempDir()
	a := openBolt(t, filepath.Join(dir, "a.db"))
	appendRange(t, a, 1, 4, 50)
	a.Crash()
	b := openBolt(t, filepath.Join(dir, "b.db"))
	appendRange(t, b, 1, 2, 50)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(dir, "a.db.journal"), filepath.Join(dir, "b.db.journal"), nil)
	b = openBolt(t, filepath.Join(dir, "b.db"))
	defer b.Close()
	checkEntries(t, b, 2, 50)
	if aside, _ := filepath.Glob(filepath.Join(dir, "b.db.journal.foreign-*")); len(aside) != 1 {
		t.Fatalf("the foreign journal was not kept aside: %v", aside)
	}
}

// Readers racing with appends and applies always see a gapless log that
// reaches at least as far as the appends acknowledged before they began.
func TestJournalReadsDuringApplies(t *testing.T) {
	defer store.HoldJournal()()
	s := openBolt(t, filepath.Join(t.TempDir(), "keyd.db"))
	defer s.Close()
	ctx := context.Background()
	const total = 600
	var (
		mu    sync.Mutex
		acked uint64
		wg    sync.WaitGroup
	)
	done := make(chan struct{})
	wg.Add(2)
	go func() { // appender
		defer wg.Done()
		defer close(done)
		for seq := uint64(1); seq <= total; seq++ {
			appendRange(t, s, seq, seq, 80)
			mu.Lock()
			acked = seq
			mu.Unlock()
		}
	}()
	go func() { // applier, far more often than keyd's
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := s.Flush(); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	for scans := 0; ; scans++ {
		mu.Lock()
		floor := acked
		mu.Unlock()
		next := uint64(1)
		if err := s.ScanAudit(ctx, 1, func(e store.AuditEntry) error {
			if e.Seq != next {
				return fmt.Errorf("entry %d where %d was due", e.Seq, next)
			}
			next++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if next-1 < floor {
			t.Fatalf("scan saw 1..%d, %d were acknowledged before it began", next-1, floor)
		}
		if floor > 0 {
			e := entry(floor, 80)
			if node, _, _ := s.PodNode(ctx, e.Bind.PodUID, t0); node != e.Bind.Node {
				t.Fatalf("binding of acknowledged entry %d not seen", floor)
			}
		}
		if floor == total {
			break
		}
	}
	wg.Wait()
	checkEntries(t, s, total, 80)
}

const childEnv = "PODKEY_JOURNAL_CHILD"

// The child of TestJournalSurvivesSIGKILL: appends from four goroutines,
// printing each acknowledged sequence number, until it is killed.
func TestJournalChild(t *testing.T) {
	path := os.Getenv(childEnv)
	if path == "" {
		t.Skip("run by TestJournalSurvivesSIGKILL")
	}
	s, err := store.OpenBolt(path)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	out := make(chan uint64, 1024)
	for range 4 {
		go func() {
			for {
				var seq uint64
				err := s.AppendAuditAfter(context.Background(), func(last store.AuditEntry) ([]store.AuditEntry, error) {
					seq = last.Seq + 1
					return []store.AuditEntry{entry(seq, 120)}, nil
				})
				if err != nil {
					fmt.Println("error", err)
					os.Exit(1)
				}
				out <- seq
			}
		}()
	}
	w := bufio.NewWriter(os.Stdout)
	for seq := range out {
		fmt.Fprintln(w, "acked", seq)
		if len(out) == 0 {
			w.Flush()
		}
	}
}

// A keyd killed at any moment loses no acknowledged entry: the child
// appends (the background apply running as in keyd) and is killed with
// SIGKILL three times; every sequence number it printed is in the store,
// with its binding and nonce, and the log is gapless.
func TestJournalSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	path := filepath.Join(t.TempDir(), "keyd.db")
	var acked uint64
	for round, after := range []time.Duration{150 * time.Millisecond, 400 * time.Millisecond, 900 * time.Millisecond} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestJournalChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stuck := time.AfterFunc(time.Minute, func() { cmd.Process.Signal(syscall.SIGKILL) }) // a child that never starts
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			var seq uint64
			if _, err := fmt.Sscanf(sc.Text(), "acked %d", &seq); err != nil {
				t.Fatalf("child: %s", sc.Text())
			}
			if n == 0 { // counted from its first acknowledgement, however slow its start
				stuck.Stop()
				time.AfterFunc(after, func() { cmd.Process.Signal(syscall.SIGKILL) })
			}
			acked = max(acked, seq)
			n++
		}
		_ = cmd.Wait()
		if n == 0 {
			t.Fatalf("round %d: the child acknowledged nothing", round)
		}
		s := openBolt(t, path)
		l, err := s.LastAudit(context.Background())
		if err != nil || l.Seq < acked {
			t.Fatalf("round %d: store ends at %d (%v), %d were acknowledged", round, l.Seq, err, acked)
		}
		checkEntries(t, s, l.Seq, 120)
		t.Logf("round %d: killed after %v, %d acknowledged, store ends at %d", round, after, acked, l.Seq)
		acked = l.Seq
		s.Crash() // leave the (empty) fresh journal as a killed keyd would
	}
}

// FuzzJournalFrame: the frame parser never panics, never over-allocates,
// and a frame it accepts encodes back to the same bytes.
func FuzzJournalFrame(f *testing.F) {
	f.Add(store.AppendFrame(nil, []store.AuditEntry{entry(1, 20), entry(2, 0), {Seq: 3, Data: []byte("x")}}))
	f.Add(store.AppendFrame(nil, []store.AuditEntry{{Seq: 1 << 40, Data: []byte("only")}}))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, n, err := store.ParseFrame(b)
		if err != nil {
			return
		}
		if n > len(b) || len(entries) == 0 {
			t.Fatalf("accepted %d of %d bytes, %d entries", n, len(b), len(entries))
		}
		if again := store.AppendFrame(nil, entries); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoded frame differs")
		}
	})
}
