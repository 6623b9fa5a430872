package dbcred

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// engine is one database's login administration, over the admin
// connection an administrator enrolled. Every method is idempotent and
// bounded by callTimeout.
type engine interface {
	// Ensure makes role a login with password, a member of the
	// connection's group role only, valid until until where the engine
	// keeps a validity (PostgreSQL): created, or brought back to that.
	Ensure(ctx context.Context, role string, password []byte, until time.Time) error
	// Extend moves the login's validity (a no-op where the engine keeps
	// none: keyd's reaper is the expiry there).
	Extend(ctx context.Context, role string, until time.Time) error
	// Revoke ends role's access: no new login, every session of it ended,
	// the login dropped. A role that does not exist is revoked. It
	// returns the sessions it ended.
	Revoke(ctx context.Context, role string) (sessions int, err error)
	// Check proves the admin connection works and the group role exists.
	Check(ctx context.Context) error
	Close()
}

// callTimeout bounds every statement keyd sends a database.
const callTimeout = 5 * time.Second

// Errors callers test for with errors.Is.
var (
	// ErrUnavailable: the database did not answer in time or refused
	// the connection; the operation is retried.
	ErrUnavailable = errors.New("database unavailable")
	// ErrRefused: the database answered with an error.
	ErrRefused = errors.New("database refused")
)

// dbError is a database failure as keyd's callers see it: the
// connection's name, the step, the class and the server's error code.
// The server's own message is kept for keyd's log (Detail): it can name
// hosts and users, never a password (none is ever sent: see password.go),
// and is not sent to a caller.
type dbError struct {
	conn, step, code string
	class            error
	detail           string
}

func (e *dbError) Error() string {
	s := fmt.Sprintf("database %q: %s: %v", e.conn, e.step, e.class)
	if e.code != "" {
		s += " (" + e.code + ")"
	}
	return s
}
func (e *dbError) Unwrap() error { return e.class }

// Detail is the server's account of err for keyd's log, or "".
func Detail(err error) string {
	var d *dbError
	if errors.As(err, &d) {
		return d.detail
	}
	return ""
}
