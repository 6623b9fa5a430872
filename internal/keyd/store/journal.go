package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/sys/unix"

	"github.com/podkey/podkey/internal/host/atomicfile"
)

// The journal is the bbolt store's write-ahead log for audit appends, the
// write every credential makes. An append is durable once its frame is
// written into the journal and the journal is fdatasynced: one sync of a
// few hundred bytes into blocks that were written when the file was made,
// so the sync flushes data and no file-system metadata. bbolt's own commit
// (pages, then the meta page, each synced) is paid once per many appends,
// when the journal's frames are applied to the file; the store stays a
// fully synced bbolt file at every moment, the journal only ever runs
// ahead of it, and opening the store applies what a crash left in the
// journal before anything reads it.
//
// File: a header (magic, the store's journal id) and then frames:
//
//	u32 body length, u32 CRC-32C of the body, body:
//	u64 first seq, u32 count, count x entry:
//	  u32 len, data, u8 flags (1 binding, 2 nonce),
//	  [u16 len, pod uid, u16 len, node, u64 until unix ns]
//	  [32 nonce key, u64 until unix ns]
//
// After the frames are applied the next frame starts again after the
// header; frames beyond it are older and hold only sequence numbers at or
// below the file's tail, so replay skips them, and it stops at the first
// frame that does not check (torn by a crash, zeroes, a gap).
const (
	journalMagic  = "PKJ1"
	journalIDSize = 16
	journalHeader = len(journalMagic) + journalIDSize
	// journalSize is preallocated (written with zeroes) when the journal
	// is made; a frame that does not fit makes the appender apply first.
	journalSize = 4 << 20
	frameHead   = 8
	maxFrame    = journalSize - journalHeader

	flagBind  = 1
	flagNonce = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errFrame is a frame that does not parse or check.
var errFrame = errors.New("journal frame does not check")

type journal struct {
	f   *os.File
	off int // where the next frame goes
	// err is a write or sync that failed: what the kernel holds for the
	// file is unknown from then on, so the journal takes nothing more
	// until the store is opened again (which replays what is on disk).
	err error
}

// JournalPath is where the journal of the store file at storePath lives:
// part of the store, as the file is (see Bolt).
func JournalPath(storePath string) string { return storePath + ".journal" }

// createJournal makes a fresh, preallocated journal for the store id at
// path, replacing any file there only once it is complete and synced.
func createJournal(path string, id []byte) (*journal, error) {
	err := atomicfile.WriteFrom(path, func(w io.Writer) error {
		buf := make([]byte, journalSize)
		copy(buf, journalMagic)
		copy(buf[len(journalMagic):], id)
		_, err := w.Write(buf)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: make journal %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("store: journal: %w", err)
	}
	return &journal{f: f, off: journalHeader}, nil
}

// fits reports whether a frame of n bytes fits after the last one.
func (j *journal) fits(n int) bool { return j.off+n <= journalSize }

// used is how many bytes of frames the journal holds.
func (j *journal) used() int { return j.off - journalHeader }

// write puts frame after the last one and syncs it: when it returns nil,
// the frame survives a crash of the process or the machine.
func (j *journal) write(frame []byte) error {
	if j.err != nil {
		return j.err
	}
	if _, err := j.f.WriteAt(frame, int64(j.off)); err != nil {
		j.err = fmt.Errorf("store: journal write: %w (keyd must be restarted)", err)
		return j.err
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		j.err = fmt.Errorf("store: journal sync: %w (keyd must be restarted)", err)
		return j.err
	}
	j.off += len(frame)
	return nil
}

// rewind starts the next frame after the header again: every frame is
// applied to the store file.
func (j *journal) rewind() { j.off = journalHeader }

func (j *journal) close() error { return j.f.Close() }

// appendFrame encodes entries (consecutive seqs) as one frame.
func appendFrame(dst []byte, entries []AuditEntry) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHead)...)
	dst = binary.BigEndian.AppendUint64(dst, entries[0].Seq)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(entries)))
	for _, e := range entries {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Data)))
		dst = append(dst, e.Data...)
		var flags byte
		if e.Bind != nil {
			flags |= flagBind
		}
		if e.Nonce != nil {
			flags |= flagNonce
		}
		dst = append(dst, flags)
		if e.Bind != nil {
			dst = binary.BigEndian.AppendUint16(dst, uint16(len(e.Bind.PodUID)))
			dst = append(dst, e.Bind.PodUID...)
			dst = binary.BigEndian.AppendUint16(dst, uint16(len(e.Bind.Node)))
			dst = append(dst, e.Bind.Node...)
			dst = binary.BigEndian.AppendUint64(dst, uint64(e.Bind.Until.UnixNano()))
		}
		if e.Nonce != nil {
			dst = append(dst, e.Nonce.Key[:]...)
			dst = binary.BigEndian.AppendUint64(dst, uint64(e.Nonce.Until.UnixNano()))
		}
	}
	body := dst[start+frameHead:]
	binary.BigEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(body, castagnoli))
	return dst
}

// frameFits reports whether entries can be journalled: lengths the frame
// format holds.
func frameFits(entries []AuditEntry) bool {
	for _, e := range entries {
		if uint64(len(e.Data)) > 1<<31 {
			return false
		}
		if e.Bind != nil && (len(e.Bind.PodUID) > 0xffff || len(e.Bind.Node) > 0xffff) {
			return false
		}
	}
	return true
}

// parseFrame reads the frame at the start of b: its entries (which do not
// alias b) and its length. Anything that does not check is errFrame.
func parseFrame(b []byte) ([]AuditEntry, int, error) {
	if len(b) < frameHead {
		return nil, 0, errFrame
	}
	n := binary.BigEndian.Uint32(b)
	if n == 0 || uint64(n) > uint64(len(b)-frameHead) {
		return nil, 0, errFrame
	}
	body := b[frameHead : frameHead+int(n)]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
		return nil, 0, errFrame
	}
	s := cryptobyte.String(body)
	var (
		first uint64
		count uint32
	)
	if !s.ReadUint64(&first) || !s.ReadUint32(&count) || count == 0 || first == 0 || first+uint64(count) < first {
		return nil, 0, errFrame
	}
	// Every entry takes at least 5 bytes: never trust count for a size.
	if uint64(count) > uint64(len(s))/5 {
		return nil, 0, errFrame
	}
	entries := make([]AuditEntry, 0, count)
	for i := range uint64(count) {
		e := AuditEntry{Seq: first + i}
		var (
			dlen  uint32
			data  []byte
			flags uint8
		)
		if !s.ReadUint32(&dlen) || !s.ReadBytes(&data, int(dlen)) || !s.ReadUint8(&flags) || flags&^(flagBind|flagNonce) != 0 {
			return nil, 0, errFrame
		}
		e.Data = bytes.Clone(data)
		if e.Data == nil {
			e.Data = []byte{}
		}
		if flags&flagBind != 0 {
			var pod, node cryptobyte.String
			var until uint64
			if !s.ReadUint16LengthPrefixed(&pod) || !s.ReadUint16LengthPrefixed(&node) || !s.ReadUint64(&until) {
				return nil, 0, errFrame
			}
			e.Bind = &PodBinding{PodUID: string(pod), Node: string(node), Until: time.Unix(0, int64(until))}
		}
		if flags&flagNonce != 0 {
			n := &Nonce{}
			var until uint64
			if !s.CopyBytes(n.Key[:]) || !s.ReadUint64(&until) {
				return nil, 0, errFrame
			}
			n.Until = time.Unix(0, int64(until))
			e.Nonce = n
		}
		entries = append(entries, e)
	}
	if !s.Empty() {
		return nil, 0, errFrame
	}
	return entries, frameHead + int(n), nil
}

// replayJournal reads the journal at path and returns the entries that
// follow last, in order: the frames a crash left unapplied. A journal
// that belongs to another store (an id that is not this store's) is moved
// aside, never applied; a missing one holds nothing.
func replayJournal(path string, id []byte, last uint64) ([]AuditEntry, error) {
	buf, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read journal: %w", err)
	}
	if len(buf) < journalHeader || string(buf[:len(journalMagic)]) != journalMagic || !bytes.Equal(buf[len(journalMagic):journalHeader], id) {
		aside := fmt.Sprintf("%s.foreign-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.Rename(path, aside); err != nil {
			return nil, fmt.Errorf("store: %s is not this store's journal and cannot be moved aside: %w", path, err)
		}
		return nil, nil
	}
	var out []AuditEntry
	next := last + 1
frames:
	for off := journalHeader; off < len(buf); {
		entries, n, err := parseFrame(buf[off:])
		if err != nil {
			break
		}
		off += n
		first, end := entries[0].Seq, entries[len(entries)-1].Seq
		switch {
		case end < next:
			// An older frame, applied before the journal rewound.
		case first == next:
			out = append(out, entries...)
			next = end + 1
		default:
			break frames
		}
	}
	return out, nil
}
