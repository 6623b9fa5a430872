package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// acquire takes an idle session or opens a new one while the pool is below
// MaxSessions; otherwise it waits for one to be returned.
func (t *Token) acquire(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case <-t.closed:
		return 0, ErrClosed
	case sh := <-t.idle:
		return sh, nil
	default:
	}
	select {
	case t.slots <- struct{}{}:
		sh, err := t.p.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			<-t.slots
			return 0, fmt.Errorf("hsm: open session: %w", err)
		}
		return sh, nil
	case sh := <-t.idle:
		return sh, nil
	case <-t.closed:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (t *Token) release(sh pkcs11.SessionHandle) {
	select {
	case <-t.closed:
		_ = t.p.CloseSession(sh)
	case t.idle <- sh:
	}
}

// discard frees a broken session's place in the pool, closing it unless
// the module said its handle is already dead: a module hands a dead
// handle's number to the next session opened, which closing it would end.
func (t *Token) discard(sh pkcs11.SessionHandle, dead bool) {
	if !dead {
		_ = t.p.CloseSession(sh)
	}
	<-t.slots
}

// discardIdle discards every idle session: what broke one (the module
// restarted, the token left) broke them all, and retrying on each in
// turn would spend the retries on dead sessions.
func (t *Token) discardIdle(dead bool) {
	for {
		select {
		case sh := <-t.idle:
			t.discard(sh, dead)
		default:
			return
		}
	}
}

// failure says how do should recover from a PKCS#11 error.
type failure int

const (
	fatal         failure = iota // give up, return the error
	brokenSession                // drop the session, retry on another
	loggedOut                    // log in again, retry
	staleHandle                  // forget cached object handles, retry
)

func classify(err error) failure {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return fatal
	}
	switch uint(e) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return brokenSession
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return loggedOut
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return staleHandle
	}
	return fatal
}

// Stats are a token's failure counts since Open, for metrics.
type Stats struct {
	// Errors are operations that failed after recovery was tried (a
	// refused input, such as a wrapped value that fails authentication,
	// counts too; a cancelled wait for a session does not).
	Errors uint64
	// Relogins are logins after the first: the token had lost the login
	// or the device.
	Relogins uint64
}

// Stats returns the token's failure counts.
func (t *Token) Stats() Stats {
	return Stats{Errors: t.errors.Load(), Relogins: t.relogins.Load()}
}

// do runs fn on a pooled session, recovering once from a broken session, a
// lost login or stale object handles. fn must be safe to run twice.
func (t *Token) do(ctx context.Context, fn func(sh pkcs11.SessionHandle) error) (err error) {
	defer func() {
		if err != nil && ctx.Err() == nil {
			t.errors.Add(1)
		}
	}()
	for attempt := 0; attempt < 3; attempt++ {
		var sh pkcs11.SessionHandle
		sh, err = t.acquire(ctx)
		if err != nil {
			return err
		}
		err = fn(sh)
		if err == nil {
			t.release(sh)
			return nil
		}
		switch classify(err) {
		case brokenSession:
			dead := isCode(err, pkcs11.CKR_SESSION_HANDLE_INVALID) || isCode(err, pkcs11.CKR_SESSION_CLOSED)
			t.discard(sh, dead)
			t.discardIdle(dead)
			t.forgetLogin()
			t.flushHandles()
			if isCode(err, pkcs11.CKR_DEVICE_REMOVED) || isCode(err, pkcs11.CKR_TOKEN_NOT_PRESENT) {
				t.relogins.Add(1)
				if lerr := t.login(); lerr != nil {
					return fmt.Errorf("%w (re-login failed: %v)", err, lerr)
				}
			}
		case loggedOut:
			t.release(sh)
			t.relogins.Add(1)
			if lerr := t.login(); lerr != nil {
				return fmt.Errorf("%w (re-login failed: %v)", err, lerr)
			}
		case staleHandle:
			t.release(sh)
			t.flushHandles()
		default:
			t.release(sh)
			return err
		}
	}
	return err
}
