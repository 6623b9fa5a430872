package store

import "time"

// HoldJournal keeps journalled entries out of the bbolt file (no
// background apply) until the returned function restores the interval.
func HoldJournal() (restore func()) {
	old := applyEvery
	applyEvery = time.Hour
	return func() { applyEvery = old }
}

// Crash abandons the store as a killed process would: no apply, no
// removal of the journal; the file lock is released.
func (b *Bolt) Crash() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	close(b.done)
	b.wg.Wait()
	b.j.close()
	b.db.Close()
}

// Flush applies the journal to the bbolt file now.
func (b *Bolt) Flush() error { return b.flush(nil) }

// ParseFrame and AppendFrame expose the journal's frame format to the fuzzer.
var (
	ParseFrame  = parseFrame
	AppendFrame = appendFrame
)

const JournalHeader = journalHeader
