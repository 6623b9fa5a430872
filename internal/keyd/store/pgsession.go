package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"
)

// How keyd's PostgreSQL sessions fail instead of hanging. A replica that
// loses its path to the database (a frozen process, a partition that
// sends no FIN or RST) must not keep the audit chain's lock, or the other
// replicas stop; a database that stalls must make calls fail Unavailable
// in seconds, so clients retry another replica.
const (
	// CallTimeout bounds one store call (a scan of the audit log: one
	// page) when its caller set no earlier deadline.
	CallTimeout = 5 * time.Second
	// idleInTransaction: the server ends a session that holds a
	// transaction open and sends nothing for this long, releasing its
	// locks. keyd holds no transaction open across anything but the
	// database's own calls.
	idleInTransaction = 3 * time.Second
	// lockTimeout: a statement waiting this long for a lock fails.
	lockTimeout = 4 * time.Second
	// statementTimeout: the server cancels a statement running this long.
	statementTimeout = CallTimeout
	// connectTimeout bounds dialing and the TLS and startup handshake.
	connectTimeout = 5 * time.Second
	// userTimeout: the kernel drops a connection whose sent data stays
	// unacknowledged this long (TCP_USER_TIMEOUT), and keepalives probe
	// an idle one, so a silent partition ends the client's session too.
	userTimeout = 10 * time.Second
)

// PostgresOptions configure OpenPostgres. Every field says its default.
type PostgresOptions struct {
	// InsecureTransport lets keyd reach PostgreSQL over TCP without a
	// verified TLS connection (sslmode disable, allow, prefer, or require
	// without sslrootcert). The store is the root of authorization
	// (policy, revocations, bindings, nonces): development only, and keyd
	// warns at start. Default false: TCP needs sslmode=verify-full, or
	// verify-ca with sslrootcert; unix sockets are always allowed.
	InsecureTransport bool
}

// ErrInsecureTransport refuses a connection string that would reach
// PostgreSQL over TCP without verified TLS.
var ErrInsecureTransport = errors.New("store: PostgreSQL over TCP needs sslmode=verify-full (or verify-ca) with sslrootcert: the store is what authorizes, and a connection that accepts any server (sslmode disable, allow, prefer, or require without sslrootcert) lets whoever sits on the path answer for it")

// PoolConfig parses conn (a libpq keyword string or URL, the PG*
// environment variables included) and sets keyd's session limits. It
// never quotes conn: it may hold a password. Every PostgreSQL keyd
// reaches goes through it: its store and the databases of database
// credentials.
func PoolConfig(conn string, o PostgresOptions) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(conn)
	if err != nil {
		// pgx's parse errors can quote the string; say only that it is bad.
		return nil, errors.New("store: the PostgreSQL connection string does not parse")
	}
	if !o.InsecureTransport {
		if err := checkTransport(&cfg.ConnConfig.Config); err != nil {
			return nil, err
		}
	}
	cc := cfg.ConnConfig
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["idle_in_transaction_session_timeout"] = ms(idleInTransaction)
	cc.RuntimeParams["lock_timeout"] = ms(lockTimeout)
	cc.RuntimeParams["statement_timeout"] = ms(statementTimeout)
	cc.ConnectTimeout = connectTimeout
	d := &net.Dialer{
		Timeout:         connectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3},
		Control: func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(userTimeout.Milliseconds()))
			}); err != nil {
				return err
			}
			return serr
		},
	}
	cc.DialFunc = d.DialContext
	return cfg, nil
}

func ms(d time.Duration) string { return fmt.Sprint(d.Milliseconds()) }

// checkTransport refuses a configuration whose TCP hosts (the first and
// every fallback pgx would try) are reached without verified TLS.
func checkTransport(c *pgconn.Config) error {
	hosts := append([]*pgconn.FallbackConfig{{Host: c.Host, Port: c.Port, TLSConfig: c.TLSConfig}}, c.Fallbacks...)
	for _, h := range hosts {
		if strings.HasPrefix(h.Host, "/") {
			continue // a unix socket: the kernel is the path
		}
		t := h.TLSConfig
		switch {
		case t == nil:
			return ErrInsecureTransport
		case !t.InsecureSkipVerify && t.ServerName != "": // verify-full
		case t.VerifyPeerCertificate != nil && t.RootCAs != nil: // verify-ca with a root
		default:
			return ErrInsecureTransport
		}
	}
	return nil
}

// ErrUnavailable marks a lost, refused or timed-out database: keyd
// answers Unavailable, clients retry another replica, and the pool
// reconnects by itself.
var ErrUnavailable = errors.New("store: database unavailable")

// ErrDatabase marks any other database failure.
var ErrDatabase = errors.New("store: database error")

// dbError is a database failure as keyd's callers see it: its class
// (ErrUnavailable or ErrDatabase) and nothing more. The driver's own
// message names the database, the user and the socket or host: it is
// kept for keyd's log (Detail), never sent to a caller.
type dbError struct{ class, detail error }

func (e *dbError) Error() string { return e.class.Error() }
func (e *dbError) Unwrap() error { return e.class }

// Detail is the database's own account of err for keyd's log, or "" when
// err is no database failure.
func Detail(err error) string {
	var d *dbError
	if errors.As(err, &d) {
		return d.detail.Error()
	}
	return ""
}

// pgErr passes store errors through and classes database failures.
func pgErr(err error) error {
	if err == nil || errors.Is(err, ErrAuditSeq) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrChanged) {
		return err
	}
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && (pe.Code == "55P03" || pe.Code == "57014" || pe.Code == "25P03" || strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")):
		// lock_not_available, query_canceled (statement_timeout),
		// idle_in_transaction_session_timeout, connection exceptions,
		// operator intervention (shutdown)
		return &dbError{ErrUnavailable, err}
	case errors.As(err, &pe):
		return &dbError{ErrDatabase, err}
	case pgconn.SafeToRetry(err), pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded), strings.Contains(err.Error(), "connect"):
		return &dbError{ErrUnavailable, err}
	case errors.Is(err, context.Canceled):
		return err
	}
	return &dbError{ErrDatabase, err}
}
