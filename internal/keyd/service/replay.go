package service

import (
	"sync"
	"time"
)

// replayCache remembers (access key id, nonce) pairs of signed requests
// being verified in this process until their date leaves the freshness
// window, so two copies of a request in flight at once are not both
// accepted. The store's record of accepted nonces is what refuses a
// replay after a restart.
type replayCache struct {
	mu    sync.Mutex
	seen  map[[32]byte]time.Time // -> forget after
	sweep time.Time
}

func newReplayCache() *replayCache { return &replayCache{seen: map[[32]byte]time.Time{}} }

// first records the pair's hash k and reports whether it was new.
func (c *replayCache) first(k [32]byte, forgetAfter, now time.Time) bool {
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
