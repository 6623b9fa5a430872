package dbcred

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/pod"
)

// Keys is what the manager needs of the HSM: the KEK and its generator.
type Keys interface {
	Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Unwrap(ctx context.Context, blob, aad []byte) ([]byte, error)
	Random(ctx context.Context, n int) ([]byte, error)
}

// Options configure a Manager. Every field says its default.
type Options struct {
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Audit records each revocation. Default: none.
	Audit func(ctx context.Context, r audit.Record) error
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// ReapEvery is how often leases are checked for expiry and pending
	// revocations. Default 10s.
	ReapEvery time.Duration
	// ExpiryGrace is how long after its login's validity a lease that was
	// not renewed is revoked. Default 5s.
	ExpiryGrace time.Duration
	// PodGone, when set, reports a pod known not to exist any more (keyd's
	// pod informer): the reaper revokes its leases without waiting for
	// their expiry, once they are older than PodGoneAfter. Default: none.
	PodGone func(namespace, name, uid string) bool
	// PodGoneAfter keeps a lease younger than it from PodGone, whose
	// informer may not have seen a new pod yet. Default 1m.
	PodGoneAfter time.Duration
}

// Manager issues, renews and revokes pod database logins.
type Manager struct {
	keys Keys
	st   store.Store
	opts Options
	kick chan struct{}

	mu      sync.Mutex
	engines map[string]*cached // by connection name
	openMu  sync.Mutex         // one admin connection opened at a time
	// leaseMu serializes this replica's work on one lease (by a hash of
	// its key): publishes of one pod racing each other would otherwise
	// alter its login at once. Replicas are kept apart by the lease's
	// version, and a database's concurrent-update refusal is retried.
	leaseMu [64]sync.Mutex
}

func (m *Manager) lockLease(key string) func() {
	h := fnv.New32a()
	h.Write([]byte(key))
	mu := &m.leaseMu[h.Sum32()%uint32(len(m.leaseMu))]
	mu.Lock()
	return mu.Unlock
}

type cached struct {
	version int
	conn    Connection
	engine
	refs    int  // callers using it (Manager.mu)
	retired bool // replaced or forgotten: closed by its last caller
}

// New builds a Manager over the HSM's keys and keyd's store.
func New(keys Keys, st store.Store, o Options) *Manager {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Audit == nil {
		o.Audit = func(context.Context, audit.Record) error { return nil }
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReapEvery == 0 {
		o.ReapEvery = 10 * time.Second
	}
	if o.ExpiryGrace == 0 {
		o.ExpiryGrace = 5 * time.Second
	}
	if o.PodGoneAfter == 0 {
		o.PodGoneAfter = time.Minute
	}
	return &Manager{keys: keys, st: st, opts: o, kick: make(chan struct{}, 1), engines: map[string]*cached{}}
}

// Close closes every admin connection (one in use, when its last caller
// is done with it).
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, c := range m.engines {
		c.retire()
		delete(m.engines, n)
	}
}

func (m *Manager) forget(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.engines[name]; c != nil {
		c.retire()
		delete(m.engines, name)
	}
}

// retire closes c now or, while callers use it, when the last is done
// (m.mu held).
func (c *cached) retire() {
	c.retired = true
	if c.refs == 0 {
		c.Close()
	}
}

// release ends a caller's use of c.
func (m *Manager) release(c *cached) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c.refs--
	if c.retired && c.refs == 0 {
		c.Close()
	}
}

// inUse takes c for a caller (m.mu held) and returns its release.
func (m *Manager) inUse(c *cached) func() {
	c.refs++
	return func() { m.release(c) }
}

// engine returns the connection's definition and its open admin
// connection, opened again when the definition changed, and the release
// the caller calls when done with it: a connection replaced or deleted
// meanwhile is closed by its last caller, never under one. Concurrent
// first callers open it once.
func (m *Manager) engine(ctx context.Context, name string) (*cached, func(), error) {
	rec, err := m.st.Secret(ctx, DatabaseNamespace, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: %q", ErrUndefined, name)
	}
	if err != nil {
		return nil, nil, err
	}
	current := func() (*cached, func()) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if c := m.engines[name]; c != nil && c.version == rec.Version {
			return c, m.inUse(c)
		}
		return nil, nil
	}
	if c, release := current(); c != nil {
		return c, release, nil
	}
	m.openMu.Lock()
	defer m.openMu.Unlock()
	if c, release := current(); c != nil {
		return c, release, nil
	}
	conn, err := m.load(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	e, err := m.open(ctx, &conn)
	clear([]byte(conn.Admin)) // a copy; the engine keeps its own
	conn.Admin = ""
	if err != nil {
		return nil, nil, err
	}
	c := &cached{version: conn.Version, conn: conn, engine: e}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.engines[name]; old != nil {
		old.retire()
	}
	m.engines[name] = c
	return c, m.inUse(c), nil
}

// Login is what a pod gets: its own user and password, and where to
// connect. Password must be zeroed by whoever drops it.
type Login struct {
	Engine, User string
	Password     []byte
	Host         string
	Port         int
	Database     string
	Params       string
	// Since is when the login's validity was last set; Expiry when it
	// ends unless renewed.
	Since, Expiry time.Time
	Role          string
}

// roleName is a login name unique to the pod: the prefix, the
// namespace's letters and digits (up to 8), the pod UID's first 8 hex
// digits and 8 random ones: at most 32 characters (MySQL's limit), only
// [a-z0-9_], so no engine needs it quoted (it is quoted anyway).
func roleName(prefix string, id pod.Identity) (string, error) {
	var ns strings.Builder
	for _, r := range id.Namespace {
		if ns.Len() == 8 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			ns.WriteRune(r)
		}
	}
	uid := strings.ReplaceAll(id.UID, "-", "")
	if len(uid) > 8 {
		uid = uid[:8]
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s%s_%s_%s", prefix, ns.String(), strings.ToLower(uid), hex.EncodeToString(b)), nil
}

// Issue returns the pod's login for the connection named object: the
// lease's, when the pod has one (every publish, rotation poll or node
// restart gets the same login); a new one otherwise. At its renewal time
// the login's validity is extended, up to the password's MaxTTL, after
// which (or when the pod's credentials were revoked or renewed by an
// operator since the password was set: cutoff) a renewal sets a new
// password. ttl caps the connection's TTL.
func (m *Manager) Issue(ctx context.Context, id pod.Identity, object string, ttl time.Duration, cutoff time.Time) (Login, error) {
	c, release, err := m.engine(ctx, object)
	if err != nil {
		return Login{}, err
	}
	defer release()
	period := min(ttl, c.conn.TTL)
	key := store.LeaseKey(id.UID, object)
	defer m.lockLease(key)()
	for attempt := 0; attempt < 8; attempt++ {
		now := m.opts.Now().UTC().Truncate(time.Second)
		l, err := m.st.Lease(ctx, key)
		switch {
		case errors.Is(err, store.ErrNotFound):
			login, err := m.create(ctx, c, id, object, period, now)
			if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrChanged) {
				continue // another publish of the pod came first: take its lease
			}
			return login, err
		case err != nil:
			return Login{}, err
		}
		if l.State == store.LeaseRevoking {
			// The pod's volume went and came back: end the old login
			// now, then start a new lease.
			if err := m.revoke(ctx, c, l, "the pod asked again after a revocation"); err != nil {
				return Login{}, err
			}
			continue
		}
		login, err := m.renew(ctx, c, l, period, now, cutoff)
		if errors.Is(err, store.ErrChanged) || errors.Is(err, store.ErrNotFound) {
			continue
		}
		return login, err
	}
	return Login{}, fmt.Errorf("%w: the pod's lease of %q kept changing", ErrUnavailable, object)
}

// create records a pending lease (one publish wins), then makes the login.
func (m *Manager) create(ctx context.Context, c *cached, id pod.Identity, object string, period time.Duration, now time.Time) (Login, error) {
	role, err := roleName(c.conn.UserPrefix, id)
	if err != nil {
		return Login{}, err
	}
	pw, err := newPassword(ctx, m.keys.Random)
	if err != nil {
		return Login{}, err
	}
	defer clear(pw)
	key := store.LeaseKey(id.UID, object)
	wrapped, err := m.keys.Wrap(ctx, pw, keyring.LeaseAAD(key, role))
	if err != nil {
		return Login{}, err
	}
	l := store.Lease{Key: key, Object: object, Connection: c.conn.Name, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount,
		Pod: id.Name, PodUID: id.UID, Role: role, Wrapped: wrapped, State: store.LeasePending,
		Created: now, PasswordAt: now, Expiry: now.Add(period)}
	if err := m.st.CreateLease(ctx, l); err != nil {
		return Login{}, err
	}
	l.Version = 1
	return m.activate(ctx, c, l, period)
}

// activate makes the database match a pending lease (the login exists
// with its password and validity), then marks it active.
func (m *Manager) activate(ctx context.Context, c *cached, l store.Lease, period time.Duration) (Login, error) {
	pw, err := m.keys.Unwrap(ctx, l.Wrapped, keyring.LeaseAAD(l.Key, l.Role))
	if err != nil {
		return Login{}, err
	}
	if err := c.Ensure(ctx, l.Role, pw, l.Expiry); err != nil {
		clear(pw)
		return Login{}, err // the lease stays pending: the next publish, or the reaper, goes on
	}
	l.State = store.LeaseActive
	if l, err = m.st.UpdateLease(ctx, l); err != nil {
		clear(pw)
		return Login{}, err
	}
	return m.login(c, l, pw, period), nil
}

func (m *Manager) login(c *cached, l store.Lease, pw []byte, period time.Duration) Login {
	return Login{Engine: c.conn.Engine, User: l.Role, Password: pw, Host: c.conn.Host, Port: c.conn.Port,
		Database: c.conn.Database, Params: c.conn.Params, Since: l.Expiry.Add(-period), Expiry: l.Expiry, Role: l.Role}
}

// renew answers from an existing lease: as it is before its renewal
// time; extended, or with a new password, after.
func (m *Manager) renew(ctx context.Context, c *cached, l store.Lease, period time.Duration, now, cutoff time.Time) (Login, error) {
	if l.State == store.LeasePending {
		return m.activate(ctx, c, l, period)
	}
	renewAt := l.Expiry.Add(-period / 3)
	rotate := !cutoff.IsZero() && !l.PasswordAt.After(cutoff) ||
		now.Add(period).After(l.PasswordAt.Add(c.conn.MaxTTL)) && !now.Before(renewAt)
	switch {
	case rotate:
		pw, err := newPassword(ctx, m.keys.Random)
		if err != nil {
			return Login{}, err
		}
		defer clear(pw)
		wrapped, err := m.keys.Wrap(ctx, pw, keyring.LeaseAAD(l.Key, l.Role))
		if err != nil {
			return Login{}, err
		}
		// The new password is recorded first, pending: if the database
		// does not take it now, whoever comes next sets it.
		l.Wrapped, l.PasswordAt, l.Expiry, l.State = wrapped, now, now.Add(period), store.LeasePending
		if l, err = m.st.UpdateLease(ctx, l); err != nil {
			return Login{}, err
		}
		return m.activate(ctx, c, l, period)
	case !now.Before(renewAt):
		until := now.Add(period)
		if max := l.PasswordAt.Add(c.conn.MaxTTL); until.After(max) {
			until = max
		}
		if err := c.Extend(ctx, l.Role, until); err != nil {
			return Login{}, err
		}
		l.Expiry = until
		var err error
		if l, err = m.st.UpdateLease(ctx, l); err != nil {
			return Login{}, err
		}
	}
	pw, err := m.keys.Unwrap(ctx, l.Wrapped, keyring.LeaseAAD(l.Key, l.Role))
	if err != nil {
		return Login{}, err
	}
	return m.login(c, l, pw, period), nil
}

// RevokePod marks every lease of the pod for revocation after its
// connection's grace and wakes the reaper: the Revoke call that brings it
// returns at once, whether or not the databases answer.
func (m *Manager) RevokePod(ctx context.Context, podUID string) (int, error) {
	leases, err := m.st.ListLeases(ctx, podUID)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range leases {
		if l.State == store.LeaseRevoking {
			continue
		}
		grace := time.Duration(0)
		if c, release, err := m.engine(ctx, l.Connection); err == nil {
			grace = c.conn.RevokeGrace
			release()
		}
		full, err := m.st.Lease(ctx, l.Key)
		if err != nil {
			continue // gone or changed meanwhile: the reaper sees it
		}
		full.State, full.RevokeAt = store.LeaseRevoking, m.opts.Now().UTC().Add(grace)
		if _, err := m.st.UpdateLease(ctx, full); err == nil {
			n++
		}
	}
	if n > 0 {
		m.Kick()
	}
	return n, nil
}

// Kick makes the reaper run now.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// revoke ends a lease's login and deletes the lease, audited.
func (m *Manager) revoke(ctx context.Context, c *cached, l store.Lease, why string) error {
	if !strings.HasPrefix(l.Role, c.conn.UserPrefix) {
		return fmt.Errorf("database %q: lease %s names login %q outside the prefix %q: not dropped", c.conn.Name, l.Key, l.Role, c.conn.UserPrefix)
	}
	sessions, err := c.Revoke(ctx, l.Role)
	if err != nil {
		return err
	}
	switch err := m.st.DeleteLease(ctx, l.Key, l.Version); {
	case errors.Is(err, store.ErrChanged):
		// A publish of the pod renewed the lease meanwhile: the login it
		// was handed is gone, so the lease goes back to pending and the
		// next publish makes the login again.
		if cur, rerr := m.st.Lease(ctx, l.Key); rerr == nil && cur.State != store.LeaseRevoking {
			cur.State = store.LeasePending
			_, _ = m.st.UpdateLease(ctx, cur)
		}
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return err
	}
	return m.opts.Audit(ctx, audit.Record{Action: audit.ActionDatabaseRevoke, Result: audit.ResultOK,
		Reason:    fmt.Sprintf("%s; %d session(s) ended", why, sessions),
		Namespace: l.Namespace, ServiceAccount: l.ServiceAccount, Pod: l.Pod, PodUID: l.PodUID,
		Objects: []string{fmt.Sprintf("%s/database/login:%s", l.Object, l.Role)}})
}

// Run reaps until ctx ends: every ReapEvery, and at once when kicked.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.opts.ReapEvery)
	defer t.Stop()
	for {
		if _, err := m.Reap(ctx); err != nil && ctx.Err() == nil {
			m.opts.Logger.Warn("database lease reaper", "error", err, "detail", Detail(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.kick:
		}
	}
}

// backoff is how long a failed revocation waits before its next try.
func backoff(attempts int) time.Duration {
	d := time.Second << min(attempts, 5)
	return min(d, 30*time.Second)
}

// Reap revokes the leases that are due: marked for revocation and past
// their grace, or not renewed past their validity (the pod's node missed
// its deletion, or the pod is gone). A database that does not answer
// leaves its leases for a later pass, with a growing wait; nothing is
// lost. It returns how many logins it dropped.
func (m *Manager) Reap(ctx context.Context) (int, error) {
	leases, err := m.st.ListLeases(ctx, "")
	if err != nil {
		return 0, err
	}
	now := m.opts.Now().UTC()
	n := 0
	var errs []error
	due := func(l store.Lease) string {
		switch {
		case l.State == store.LeaseRevoking && !now.Before(l.RevokeAt):
			return "its pod is gone"
		case l.State != store.LeaseRevoking && now.After(l.Expiry.Add(m.opts.ExpiryGrace)):
			return "not renewed before its expiry"
		case l.State != store.LeaseRevoking && m.opts.PodGone != nil && now.Sub(l.Created) > m.opts.PodGoneAfter &&
			m.opts.PodGone(l.Namespace, l.Pod, l.PodUID):
			return "its pod no longer exists (the pod informer)"
		}
		return ""
	}
	for _, l := range leases {
		if due(l) == "" {
			continue
		}
		dropped, err := m.reapOne(ctx, l.Key, due)
		if dropped {
			n++
		}
		if err == nil {
			continue
		}
		errs = append(errs, fmt.Errorf("lease %s: %w", l.Key, err))
		m.opts.Logger.Warn("database login not revoked yet; retrying", "connection", l.Connection, "login", l.Role,
			"podUID", l.PodUID, "error", err, "detail", Detail(err))
		if full, rerr := m.st.Lease(ctx, l.Key); rerr == nil {
			full.State, full.Attempts = store.LeaseRevoking, full.Attempts+1
			full.RevokeAt = now.Add(backoff(full.Attempts))
			_, _ = m.st.UpdateLease(ctx, full)
		}
	}
	return n, errors.Join(errs...)
}

// reapOne revokes the lease at key if it is still due, as read under its
// lock: a renewal that came meanwhile keeps it.
func (m *Manager) reapOne(ctx context.Context, key string, due func(store.Lease) string) (bool, error) {
	defer m.lockLease(key)()
	l, err := m.st.Lease(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	why := due(l)
	if why == "" {
		return false, nil
	}
	c, release, err := m.engine(ctx, l.Connection)
	if err != nil {
		return false, err
	}
	defer release()
	if err := m.revoke(ctx, c, l, why); err != nil {
		return false, err
	}
	return true, nil
}
