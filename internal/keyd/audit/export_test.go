package audit

import (
	"time"

	"github.com/podkey/podkey/internal/keyd/store"
)

// OpenWithKeyLifetime is Open with another batch key lifetime (tests).
func OpenWithKeyLifetime(st store.Store, keys Keys, d time.Duration) *Log {
	return open(st, keys, nil, d)
}
