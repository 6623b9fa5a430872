// Package revocation is the node's durable queue of pod revocations that
// keyd has not yet acknowledged. An entry names a pod (namespace, service
// account, name, UID, node) and nothing secret; it survives restarts and is
// retried with exponential backoff until keyd accepts it.
package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/podkey/podkey/internal/host/atomicfile"
	"github.com/podkey/podkey/pkg/pod"
)

// Revoker delivers one revocation to keyd: the pod's credentials issued
// until the time given, or until keyd takes it when that is zero. An
// error wrapping ErrRefused is final: keyd will never take that
// revocation, and it is dropped.
type Revoker func(ctx context.Context, p pod.Identity, issuedBefore time.Time) error

// ErrRefused marks a revocation keyd refuses for good (it never served the
// pod through this node); retrying cannot succeed.
var ErrRefused = errors.New("revocation refused")

type entry struct {
	Pod      pod.Identity `json:"pod"`
	Enqueued time.Time    `json:"enqueued"`
	// Before is the revocation's cutoff, in keyd's clock: what the pod
	// obtained until then is revoked. Zero: until keyd takes it.
	Before   time.Time `json:"before,omitempty"`
	Attempts int       `json:"attempts"`
	Next     time.Time `json:"next"`
	LastErr  string    `json:"lastError,omitempty"`
}

// Backoff bounds.
const (
	MinBackoff = time.Second
	MaxBackoff = 5 * time.Minute
)

var uidRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// Queue is the durable queue.
type Queue struct {
	dir    string
	revoke Revoker
	log    *slog.Logger
	now    func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
	wake    chan struct{}
}

// Open loads the queue kept in dir (created 0700 if missing).
func Open(dir string, revoke Revoker, log *slog.Logger) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("revocation queue: %w", err)
	}
	q := &Queue{dir: dir, revoke: revoke, log: log, now: time.Now, entries: map[string]*entry{}, wake: make(chan struct{}, 1)}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var e entry
		if err := json.Unmarshal(data, &e); err != nil || !uidRE.MatchString(e.Pod.UID) {
			log.Warn("dropping unreadable revocation queue entry", "file", filepath.Base(f))
			_ = os.Remove(f)
			continue
		}
		q.entries[e.Pod.UID] = &e
	}
	return q, nil
}

// Len is the number of undelivered revocations.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.entries)
}

// Pending lists the queued pods' UIDs, sorted.
func (q *Queue) Pending() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []string
	for uid := range q.entries {
		out = append(out, uid)
	}
	sort.Strings(out)
	return out
}

// Enqueue durably records a revocation of the pod's credentials issued
// until before (zero: until keyd takes it); it returns once the entry is
// on disk. Enqueuing a pod already queued keeps the one entry, with the
// later cutoff.
func (q *Queue) Enqueue(p pod.Identity, before time.Time, cause error) error {
	if !uidRE.MatchString(p.UID) {
		return fmt.Errorf("revocation queue: invalid pod UID %q", p.UID)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, ok := q.entries[p.UID]; ok {
		if e.Before.IsZero() || !before.IsZero() && !before.After(e.Before) {
			return nil
		}
		e.Before = before
		return q.persist(e)
	}
	now := q.now()
	e := &entry{Pod: p, Enqueued: now, Before: before, Next: now.Add(MinBackoff)}
	if cause != nil {
		e.LastErr = cause.Error()
	}
	if err := q.persist(e); err != nil {
		return err
	}
	q.entries[p.UID] = e
	q.signal()
	return nil
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// persist writes an entry atomically: temp file, fsync, rename, fsync dir.
func (q *Queue) persist(e *entry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(q.dir, e.Pod.UID+".json"), data)
}

// Run delivers due entries until ctx ends.
func (q *Queue) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-q.wake:
		}
		next := q.deliverDue(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// deliverDue tries every due entry once and returns the wait until the
// next one is due.
func (q *Queue) deliverDue(ctx context.Context) time.Duration {
	q.mu.Lock()
	var due []*entry
	now := q.now()
	wait := MaxBackoff
	for _, e := range q.entries {
		if !e.Next.After(now) {
			due = append(due, e)
		} else if d := e.Next.Sub(now); d < wait {
			wait = d
		}
	}
	q.mu.Unlock()
	for _, e := range due {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := q.revoke(cctx, e.Pod, e.Before)
		cancel()
		q.mu.Lock()
		if errors.Is(err, ErrRefused) {
			q.log.Error("queued revocation refused for good; dropped", "podUID", e.Pod.UID, "namespace", e.Pod.Namespace, "error", err)
		}
		if err == nil || errors.Is(err, ErrRefused) {
			delete(q.entries, e.Pod.UID)
			if rerr := os.Remove(filepath.Join(q.dir, e.Pod.UID+".json")); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				q.log.Warn("revocation delivered but its queue entry could not be removed", "podUID", e.Pod.UID, "error", rerr)
			}
			if err == nil {
				q.log.Info("queued revocation delivered", "podUID", e.Pod.UID, "namespace", e.Pod.Namespace, "attempts", e.Attempts+1)
			}
		} else {
			e.Attempts++
			backoff := MinBackoff << min(e.Attempts, 20)
			if backoff > MaxBackoff {
				backoff = MaxBackoff
			}
			e.Next, e.LastErr = q.now().Add(backoff), strings.TrimSpace(err.Error())
			if perr := q.persist(e); perr != nil {
				q.log.Error("revocation queue entry not updated", "podUID", e.Pod.UID, "error", perr)
			}
			q.log.Warn("revocation still undelivered", "podUID", e.Pod.UID, "attempts", e.Attempts, "retryIn", backoff, "error", err)
			wait = min(wait, backoff)
		}
		q.mu.Unlock()
	}
	return wait
}
