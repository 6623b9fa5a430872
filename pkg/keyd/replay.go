package keyd

import (
	"crypto/sha256"
	"sync"
	"time"
)

// replayCache remembers (access key id, nonce) pairs of accepted signed
// requests until their date leaves the freshness window, so a request can
// be accepted once. It is per keyd process; replicas behind one Service
// each keep their own (see the README).
type replayCache struct {
	mu    sync.Mutex
	seen  map[[32]byte]time.Time // -> forget after
	sweep time.Time
}

func newReplayCache() *replayCache { return &replayCache{seen: map[[32]byte]time.Time{}} }

// first records the pair and reports whether it was new.
func (c *replayCache) first(keyID, nonce string, forgetAfter, now time.Time) bool {
	k := sha256.Sum256([]byte(keyID + "\x00" + nonce))
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.After(c.sweep) {
		for key, t := range c.seen {
			if now.After(t) {
				delete(c.seen, key)
			}
		}
		c.sweep = now.Add(time.Minute)
	}
	if t, ok := c.seen[k]; ok && !now.After(t) {
		return false
	}
	c.seen[k] = forgetAfter
	return true
}
