package store_test

import (
	"path/filepath"
	"testing"

	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/internal/keyd/store/storetest"
)

// TestBolt runs the store conformance suite on bbolt files.
func TestBolt(t *testing.T) {
	paths := map[store.Store]string{}
	open := func(t *testing.T, path string) store.Store {
		t.Helper()
		s, err := store.OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		paths[s] = path
		return s
	}
	storetest.Run(t, storetest.Opener{
		Open: func(t *testing.T) store.Store { return open(t, filepath.Join(t.TempDir(), "keyd.db")) },
		Reopen: func(t *testing.T, s store.Store) store.Store {
			s.Close()
			return open(t, paths[s])
		},
	})
}

// A second keyd on the same file is refused while the first holds it.
func TestBoltRefusesASecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyd.db")
	s, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := store.OpenBolt(path); err == nil {
		s2.Close()
		t.Fatal("a second opener got the file")
	}
}
