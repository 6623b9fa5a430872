package dbcred

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// mysqlEngine administers logins on MariaDB (10.4 and later) and MySQL 8.
// A login is 'user'@'%' with the group as its default role. Neither
// keeps a login's validity in time, so keyd's reaper is the expiry. The
// admin account needs CREATE USER, the group role WITH ADMIN OPTION,
// PROCESS (to see the login's sessions) and CONNECTION ADMIN or SUPER (to
// end them) (docs/database.md).
type mysqlEngine struct {
	name, group string
	db          *sql.DB
	cfg         *mysql.Config
	mariadb     bool
}

// mysqlConfig parses the admin DSN (go-sql-driver form) and refuses TCP
// without verified TLS; caPEM, when given, is the CA that verifies it.
func mysqlConfig(c *Connection, admin string) (*mysql.Config, error) {
	cfg, err := mysql.ParseDSN(admin)
	if err != nil {
		return nil, fmt.Errorf("%w: database %q: the admin connection string does not parse (user:password@unix(/path)/db or user:password@tcp(host:port)/db?tls=true)", ErrInvalid, c.Name)
	}
	if c.CAPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(c.CAPEM)) {
			return nil, fmt.Errorf("%w: database %q: caPEM holds no certificate", ErrInvalid, c.Name)
		}
		host, _, _ := net.SplitHostPort(cfg.Addr)
		cfg.TLS = &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}
		cfg.AllowFallbackToPlaintext = false
	}
	if cfg.Net != "unix" && (cfg.TLS == nil || cfg.TLS.InsecureSkipVerify || cfg.AllowFallbackToPlaintext) {
		return nil, fmt.Errorf("%w: database %q: the admin connection reaches the server over TCP without verified TLS (tls=true, or caPEM; a unix socket needs none)", ErrInvalid, c.Name)
	}
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = callTimeout, callTimeout, callTimeout
	cfg.MultiStatements, cfg.InterpolateParams = false, false
	return cfg, nil
}

func init() {
	// The driver's own logger prints connection errors to stderr, beside
	// keyd's structured log; keyd logs them itself, with the step.
	_ = mysql.SetLogger(&mysql.NopLogger{})
}

func openMySQL(ctx context.Context, c *Connection, admin string) (*mysqlEngine, error) {
	cfg, err := mysqlConfig(c, admin)
	if err != nil {
		return nil, err
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: database %q: the admin connection string is not usable", ErrInvalid, c.Name)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	return &mysqlEngine{name: c.Name, group: c.GroupRole, db: db, cfg: cfg}, nil
}

func mysqlDefaults(admin string) (host string, port int, db string, ok bool) {
	cfg, err := mysql.ParseDSN(admin)
	if err != nil {
		return "", 0, "", false
	}
	if cfg.Net == "unix" {
		return cfg.Addr, 0, cfg.DBName, true
	}
	h, p, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return cfg.Addr, 3306, cfg.DBName, true
	}
	n, _ := strconv.Atoi(p)
	return h, n, cfg.DBName, true
}

func (m *mysqlEngine) Close() { m.db.Close() }

// account is a login's quoted account name.
func account(user string) string { return mysqlString(user) + "@'%'" }

func mysqlString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\x00", `\0`)
	return "'" + r.Replace(s) + "'"
}

func mysqlIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

func (m *mysqlEngine) fail(step string, err error) error {
	if err == nil {
		return nil
	}
	e := &dbError{conn: m.name, step: step, class: ErrUnavailable, detail: "connection failed"}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		// The number and SQLSTATE only: a server message can quote the
		// statement.
		e.class, e.code, e.detail = ErrRefused, fmt.Sprintf("error %d", me.Number), fmt.Sprintf("error %d SQLSTATE %s", me.Number, string(me.SQLState[:]))
	} else if errors.Is(err, context.DeadlineExceeded) {
		e.detail = "timed out"
	}
	return e
}

func (m *mysqlEngine) exec(ctx context.Context, step, stmt string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := m.db.ExecContext(ctx, stmt, args...)
	return m.fail(step, err)
}

func (m *mysqlEngine) flavor(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var v string
	if err := m.db.QueryRowContext(ctx, `SELECT VERSION()`).Scan(&v); err != nil {
		return m.fail("connect", err)
	}
	m.mariadb = strings.Contains(strings.ToLower(v), "mariadb")
	return nil
}

func (m *mysqlEngine) Check(ctx context.Context) error {
	if err := m.flavor(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	// The roles the admin may grant: the group must be one of them.
	var n int
	q := `SELECT count(*) FROM information_schema.APPLICABLE_ROLES WHERE ROLE_NAME = ? AND IS_GRANTABLE = 'YES'`
	if err := m.db.QueryRowContext(ctx, q, m.group).Scan(&n); err != nil {
		return m.fail("look up group role", err)
	}
	if n == 0 {
		return fmt.Errorf("%w: database %q: group role %q does not exist or the admin account holds it without ADMIN OPTION", ErrInvalid, m.name, m.group)
	}
	return nil
}

func (m *mysqlEngine) Ensure(ctx context.Context, user string, password []byte, _ time.Time) error {
	if err := m.flavor(ctx); err != nil {
		return err
	}
	ident := "IDENTIFIED BY PASSWORD " + mysqlString(nativeHash(password))
	if !m.mariadb {
		// MySQL 8 takes the password itself (caching_sha2_password) and
		// rewrites it out of its logs.
		ident = "IDENTIFIED BY " + mysqlString(string(password))
	}
	if err := m.exec(ctx, "create login", "CREATE USER IF NOT EXISTS "+account(user)+" "+ident); err != nil {
		return err
	}
	if err := m.exec(ctx, "alter login", "ALTER USER "+account(user)+" "+ident+" ACCOUNT UNLOCK"); err != nil {
		return err
	}
	if err := m.exec(ctx, "grant group", "GRANT "+mysqlIdent(m.group)+" TO "+account(user)); err != nil {
		return err
	}
	if !m.mariadb {
		return m.exec(ctx, "default role", "SET DEFAULT ROLE "+mysqlIdent(m.group)+" TO "+account(user))
	}
	// MariaDB lets only a writer of the mysql schema set another
	// account's default role, a privilege the admin account should not
	// hold; the login sets its own, which also proves it can log in.
	return m.asLogin(ctx, user, password, "SET DEFAULT ROLE "+mysqlIdent(m.group))
}

// asLogin runs one statement as the login itself, over the admin
// connection's address and TLS settings.
func (m *mysqlEngine) asLogin(ctx context.Context, user string, password []byte, stmt string) error {
	cfg := m.cfg.Clone()
	cfg.User, cfg.Passwd = user, string(password)
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return m.fail("default role", err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err = db.ExecContext(ctx, stmt)
	return m.fail("default role", err)
}

func (m *mysqlEngine) Extend(context.Context, string, time.Time) error { return nil }

func (m *mysqlEngine) Revoke(ctx context.Context, user string) (int, error) {
	err := m.exec(ctx, "lock login", "ALTER USER IF EXISTS "+account(user)+" ACCOUNT LOCK")
	if err != nil {
		return 0, err
	}
	qctx, cancel := context.WithTimeout(ctx, callTimeout)
	rows, err := m.db.QueryContext(qctx, `SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?`, user)
	var ids []int64
	if err == nil {
		for rows.Next() {
			var id int64
			if err = rows.Scan(&id); err != nil {
				break
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	cancel()
	if err != nil {
		return 0, m.fail("list sessions", err)
	}
	n := 0
	for _, id := range ids {
		err := m.exec(ctx, "end session", "KILL CONNECTION "+strconv.FormatInt(id, 10))
		if d := (*dbError)(nil); errors.As(err, &d) && d.code == "error 1094" {
			continue // ended meanwhile
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, m.exec(ctx, "drop login", "DROP USER IF EXISTS "+account(user))
}
