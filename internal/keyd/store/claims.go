package store

import (
	"sync"
	"time"
)

// claims remembers the nonces this process granted until they leave the
// freshness window: a bbolt store's claims are atomic under its lock,
// before the audit record that makes each durable is journalled.
type claims struct {
	mu    sync.Mutex
	seen  map[[32]byte]time.Time // -> forget after
	sweep time.Time
}

func newClaims() *claims { return &claims{seen: map[[32]byte]time.Time{}} }

// first records the key k and reports whether it was new.
func (c *claims) first(k [32]byte, forgetAfter, now time.Time) bool {
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
