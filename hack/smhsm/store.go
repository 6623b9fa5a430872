package main

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/emmansun/gmsm/sm3"
)

// A token lives in ROOT/slot-N: token.json (label, serial, the PINs'
// salted PBKDF2-SM3 hashes, never the PINs) and objects/HANDLE.json, one
// file per token object. Every process reads the directory afresh, so
// replicas on one host share a token the way they would share an HSM.
type tokenFile struct {
	Label    string   `json:"label"`
	Serial   string   `json:"serial"`
	SO       *pinHash `json:"so"`
	User     *pinHash `json:"user,omitempty"`
	Failures int      `json:"failures,omitempty"`
}

type pinHash struct {
	Salt []byte `json:"salt"`
	Hash []byte `json:"hash"`
}

// pinIterations costs a PIN guess about 10 ms here: a stolen token
// directory does not give its PINs cheaply.
const pinIterations = 20000

func hashPIN(pin []byte) (*pinHash, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	h, err := pbkdf2.Key(sm3.New, string(pin), salt, pinIterations, 32)
	if err != nil {
		return nil, err
	}
	return &pinHash{Salt: salt, Hash: h}, nil
}

func (p *pinHash) matches(pin []byte) bool {
	if p == nil {
		return false
	}
	h, err := pbkdf2.Key(sm3.New, string(pin), p.Salt, pinIterations, 32)
	return err == nil && subtle.ConstantTimeCompare(h, p.Hash) == 1
}

// slotDirs lists the initialised tokens by slot id.
func slotDirs(root string) (map[uint64]string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	out := map[uint64]string{}
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "slot-")
		if !ok || !e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(n, 10, 32)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, e.Name(), "token.json")); err == nil {
			out[id] = filepath.Join(root, e.Name())
		}
	}
	return out, nil
}

func readToken(dir string) (*tokenFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "token.json"))
	if err != nil {
		return nil, err
	}
	var t tokenFile
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return &t, nil
}

func writeToken(dir string, t *tokenFile) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "token.json"), b)
}

// writeAtomic replaces path with data, durably: a crash leaves the old
// file or the new one.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// storedObject is a token object on disk: its attributes as PKCS#11
// holds them (native byte order), keyed by attribute type.
type storedObject struct {
	Attrs map[uint64][]byte `json:"attrs"`
}

func objectPath(dir string, h uint64) string {
	return filepath.Join(dir, "objects", strconv.FormatUint(h, 10)+".json")
}

func readObject(dir string, h uint64) (attrs, error) {
	b, err := os.ReadFile(objectPath(dir, h))
	if err != nil {
		return nil, err
	}
	var o storedObject
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, err
	}
	return o.Attrs, nil
}

// createObjectFile stores a new token object under a fresh handle; the
// exclusive create makes a handle one process's even when two create
// at once.
func createObjectFile(dir string, a attrs) (uint64, error) {
	b, err := json.Marshal(storedObject{Attrs: a})
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "objects"), 0o700); err != nil {
		return 0, err
	}
	for range 16 {
		h := newHandle()
		tmp, err := os.CreateTemp(filepath.Join(dir, "objects"), ".tmp-*")
		if err != nil {
			return 0, err
		}
		_, werr := tmp.Write(b)
		serr := tmp.Sync()
		cerr := tmp.Close()
		if err := errors.Join(werr, serr, cerr); err != nil {
			os.Remove(tmp.Name())
			return 0, err
		}
		// A hard link fails when the name exists: the handle is taken.
		err = os.Link(tmp.Name(), objectPath(dir, h))
		os.Remove(tmp.Name())
		if err == nil {
			return h, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, err
		}
	}
	return 0, errors.New("no free object handle")
}

func listObjects(dir string) ([]uint64, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "objects"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var hs []uint64
	for _, e := range entries {
		n, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		if h, err := strconv.ParseUint(n, 10, 32); err == nil {
			hs = append(hs, h)
		}
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i] < hs[j] })
	return hs, nil
}

// newHandle is a random non-zero 31-bit handle: handles of token objects
// are unique across the processes sharing the directory, and session
// objects' never collide with them in practice (checked on creation).
func newHandle() uint64 {
	var b [4]byte
	for {
		_, _ = rand.Read(b[:])
		h := uint64(b[0]&0x7f)<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		if h != 0 {
			return h
		}
	}
}
