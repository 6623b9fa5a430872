// Package secmem holds key material that must not be paged out or dumped:
// buffers outside the Go heap, locked into RAM, excluded from core dumps
// and zeroed when closed.
package secmem

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Buffer is a fixed-size region of locked memory.
type Buffer struct {
	mu  sync.Mutex
	mem []byte // the whole mapping
	n   int
}

// New copies b into a new locked buffer and zeroes b.
func New(b []byte) (*Buffer, error) {
	size := len(b)
	if size == 0 {
		return nil, fmt.Errorf("secmem: empty buffer")
	}
	page := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("secmem: mmap: %w", err)
	}
	if err := unix.Mlock(mem); err != nil {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("secmem: mlock (needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK): %w", err)
	}
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	copy(mem, b)
	Zero(b)
	return &Buffer{mem: mem, n: size}, nil
}

// Bytes is the buffer's content. It must not be retained after Close.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return nil
	}
	return b.mem[:b.n]
}

// Close zeroes, unlocks and unmaps the buffer. Safe to call twice.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return nil
	}
	Zero(b.mem)
	_ = unix.Munlock(b.mem)
	err := unix.Munmap(b.mem)
	b.mem = nil
	return err
}

// Zero overwrites b with zeros.
func Zero(b []byte) {
	clear(b)
}

// HardenProcess keeps the process out of core dumps and ptrace by other
// users of the machine (PR_SET_DUMPABLE 0), for daemons holding keys.
func HardenProcess() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("secmem: prctl(PR_SET_DUMPABLE): %w", err)
	}
	return unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0})
}
