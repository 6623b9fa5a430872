package volume

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

func payload(gen int, names ...string) map[string]File {
	p := map[string]File{}
	for _, n := range names {
		p[n] = File{Data: []byte(fmt.Sprintf("gen-%d-%s", gen, n)), Mode: 0o440}
	}
	return p
}

func TestWriteLayoutAndReplace(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, payload(1, "a", "b"), -1); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "a"))
	if string(got) != "gen-1-a" {
		t.Fatalf("a = %q", got)
	}
	fi, _ := os.Stat(filepath.Join(dir, "a"))
	if fi.Mode().Perm() != 0o440 {
		t.Fatalf("mode %v", fi.Mode())
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := Write(dir, payload(2, "a", "c"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "b")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("dropped file still linked")
	}
	if _, err := os.Stat(filepath.Join(dir, old)); err != nil {
		t.Fatal("the generation just replaced must stay for readers still on it")
	}
	if err := Write(dir, payload(3, "a", "c"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, old)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("generation two writes old not removed")
	}
	files, _ := Current(dir)
	if strings.Join(files, ",") != "a,c" {
		t.Fatalf("current %v", files)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 5 { // 2 x ..ts, ..data, a, c
		t.Fatalf("entries %d", len(entries))
	}
}

func TestWriteRejectsBadNamesAndWritesNothing(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range []map[string]File{
		{"../escape": {Data: []byte("x")}},
		{"a/b": {Data: []byte("x")}},
		{"..data": {Data: []byte("x")}},
		{".hidden": {Data: []byte("x")}},
		{"": {Data: []byte("x")}},
		{"big": {Data: make([]byte, MaxFileSize+1)}},
		{"mode": {Data: []byte("x"), Mode: 0o4755}},
		{"caf\u00e9": {Data: []byte("x")}, "cafe\u0301": {Data: []byte("y")}},
		{"key": {Data: []byte("x")}, "KEY": {Data: []byte("y")}},
		{"key\u00a0": {Data: []byte("x")}},
		{},
	} {
		if err := Write(dir, bad, -1); !errors.Is(err, ErrBadPayload) {
			t.Fatalf("%v accepted: %v", bad, err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a refused payload left %d entries", len(entries))
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape")); err == nil {
		t.Fatal("escaped")
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "..", "../x", "a/b", ".x", "ok.json", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName(name) != nil {
			return
		}
		const dir = "/var/lib/kubelet/pods/uid/volumes/x"
		p := filepath.Join(dir, name)
		if filepath.Dir(p) != dir || filepath.Base(p) != name {
			t.Fatalf("accepted name %q escapes the directory", name)
		}
	})
}

// TestReadersNeverSeeAMix rewrites a volume as fast as it can while
// readers follow the documented protocol: resolve ..data once, read every
// file from that generation, then check the generation's directory is still
// there (destruction renames it away before zeroing). No accepted read may
// mix generations or contain zeroed data.
func TestReadersNeverSeeAMix(t *testing.T) {
	dir := t.TempDir()
	names := []string{"key", "cert", "ca", PodkeyMeta}
	if err := Write(dir, payload(0, names...), -1); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var reads, retries atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				gen, err := os.Readlink(filepath.Join(dir, "..data"))
				if err != nil {
					errc <- err
					return
				}
				var prefixes [][]byte
				ok := true
				for _, n := range names {
					b, err := os.ReadFile(filepath.Join(dir, gen, n))
					if err != nil { // generation removed under us: retry
						ok = false
						break
					}
					prefix, found := bytes.CutSuffix(b, []byte("-"+n))
					if !found {
						prefix = b // zeroed or damaged
					}
					prefixes = append(prefixes, prefix)
				}
				if ok {
					_, err = os.Stat(filepath.Join(dir, gen))
					ok = err == nil
				}
				if !ok {
					retries.Add(1) // destroyed while we read: discard and retry
					continue
				}
				for _, p := range prefixes {
					if !bytes.Equal(p, prefixes[0]) || !bytes.HasPrefix(p, []byte("gen-")) {
						errc <- fmt.Errorf("accepted a mixed or destroyed set: %q", prefixes)
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	for g := 1; g <= 300; g++ {
		if err := Write(dir, payload(g, names...), -1); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("readers completed no read")
	}
	t.Logf("%d consistent reads, %d retries after a generation was removed", reads.Load(), retries.Load())
}

// PodkeyMeta stands for the metadata file in tests.
const PodkeyMeta = MetadataFile

func TestFakeMounterTeardownIsIdempotent(t *testing.T) {
	target := filepath.Join(t.TempDir(), "target")
	m := NewMounter(mount.NewFakeMounter(nil))
	if err := m.Mount(target, DefaultSizeLimit, -1); err != nil {
		t.Fatal(err)
	}
	if err := Write(target, payload(1, "a"), -1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := m.Teardown(target); err != nil {
			t.Fatalf("teardown %d: %v", i, err)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("target remains")
	}
}

// TestRealTmpfs mounts a real tmpfs (the CI machine runs as root) and
// checks its options, the files' group, and zeroing on teardown.
func TestRealTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	target := filepath.Join(t.TempDir(), "target")
	m := NewMounter(nil)
	for i := 0; i < 2; i++ { // mounting twice is a no-op
		if err := m.Mount(target, 1<<20, 2000); err != nil {
			t.Fatal(err)
		}
	}
	defer m.Teardown(target)
	mounted, err := m.IsMounted(target)
	if err != nil || !mounted {
		t.Fatalf("mounted=%v %v", mounted, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&unix.ST_NOEXEC == 0 || st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
		t.Fatalf("mount flags %#x lack noexec/nosuid/nodev", st.Flags)
	}
	if size := int64(st.Blocks) * st.Bsize; size != 1<<20 {
		t.Fatalf("tmpfs size %d", size)
	}
	if err := Write(target, payload(1, "secret"), 2000); err != nil {
		t.Fatal(err)
	}
	var fst unix.Stat_t
	if err := unix.Stat(filepath.Join(target, "secret"), &fst); err != nil || fst.Gid != 2000 {
		t.Fatalf("gid %d %v", fst.Gid, err)
	}
	// Over the size limit: refused by the kernel, and the published
	// generation stays intact.
	big := map[string]File{}
	for i := 0; i < 8; i++ {
		big[fmt.Sprintf("f%d", i)] = File{Data: make([]byte, 200<<10), Mode: 0o440}
	}
	if err := Write(target, big, 2000); err == nil {
		t.Fatal("wrote more than the tmpfs holds")
	}
	if b, _ := os.ReadFile(filepath.Join(target, "secret")); string(b) != "gen-1-secret" {
		t.Fatalf("published generation damaged: %q", b)
	}
	if err := m.Teardown(target); err != nil {
		t.Fatal(err)
	}
	if mounted, _ := m.IsMounted(target); mounted {
		t.Fatal("still mounted")
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("target remains")
	}
}

// TestFullVolumeRecovers: a volume whose renewal once failed for want of
// space (the old generation kept beside the published one) is written
// again, because only the published generation is kept while writing: a
// volume that holds two generations always takes the next one.
func TestFullVolumeRecovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	target := filepath.Join(t.TempDir(), "target")
	m := NewMounter(nil)
	if err := m.Mount(target, 1<<20, -1); err != nil {
		t.Fatal(err)
	}
	defer m.Teardown(target)
	gen := func(n int) map[string]File {
		files := map[string]File{}
		for i := 0; i < 4; i++ { // 4 x 100 KiB: two generations fit in 1 MiB, three do not
			data := make([]byte, 100<<10)
			copy(data, fmt.Sprintf("gen-%d", n))
			files[fmt.Sprintf("s%d", i)] = File{Data: data, Mode: 0o440}
		}
		return files
	}
	for n := 1; n <= 5; n++ {
		if err := Write(target, gen(n), -1); err != nil {
			t.Fatalf("generation %d: %v", n, err)
		}
		if b, _ := os.ReadFile(filepath.Join(target, "s0")); !strings.HasPrefix(string(b), fmt.Sprintf("gen-%d", n)) {
			t.Fatalf("generation %d not published", n)
		}
	}
	// A failed write (too big) leaves the published generation, and the
	// next write of the usual size succeeds.
	big := map[string]File{"huge": {Data: make([]byte, 900<<10), Mode: 0o440}}
	if err := Write(target, big, -1); err == nil {
		t.Fatal("wrote more than the tmpfs holds")
	}
	if err := Write(target, gen(6), -1); err != nil {
		t.Fatalf("after a failed write: %v", err)
	}
}
