// Package dbcredtest gives tests a real database server of each engine
// set up as docs/database.md asks: a group role app_rw (SELECT and INSERT
// on app.orders, nothing on app.ledger) and an admin account holding only
// the privileges the document lists.
package dbcredtest

import (
	"database/sql"
	"fmt"
	"testing"

	_ "github.com/go-sql-driver/mysql" // the mysql driver for Open
	_ "github.com/jackc/pgx/v5/stdlib" // the pgx driver for Open

	"github.com/podkey/podkey/internal/keyd/dbcred"
	"github.com/podkey/podkey/internal/keyd/dbcred/mariadbtest"
	"github.com/podkey/podkey/internal/keyd/store/pgtest"
)

// AdminPassword is the admin account's password: tests check it never
// shows.
const AdminPassword = "admin-Pa55-never-shown"

// Target is one database server.
type Target struct {
	Engine   string
	Driver   string                             // database/sql driver name
	Admin    string                             // the admin connection string, with its password
	Database string                             // what pods use, when the admin connection names none
	DSN      func(user, password string) string // a pod's connection string
	Root     *sql.DB                            // a superuser's connection to app
	CAFile   string                             // PostgresTLS: the CA of the server's certificate
	// Down and Up take the server away (stopped or frozen) and back;
	// Freeze and Thaw stop its processes answering (SIGSTOP) and resume
	// them.
	Down, Up, Freeze, Thaw func(t testing.TB)
}

// Logins lists the logins whose names start with pk_.
func (tg *Target) Logins(t testing.TB) []string {
	if tg.Engine == dbcred.PostgreSQL {
		return Column(t, tg.Root, `SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'pk_') ORDER BY 1`)
	}
	return Column(t, tg.Root, `SELECT User FROM mysql.user WHERE User LIKE 'pk\_%' ORDER BY 1`)
}

// CreateLogin makes a login outside podkey, as a DBA would.
func (tg *Target) CreateLogin(t testing.TB, name string) {
	if tg.Engine == dbcred.PostgreSQL {
		Exec(t, tg.Root, `CREATE ROLE "`+name+`" LOGIN`)
		return
	}
	Exec(t, tg.Root, "CREATE USER '"+name+"'@'%'")
}

// HasLogin reports whether a login of that name exists.
func (tg *Target) HasLogin(t testing.TB, name string) bool {
	q := `SELECT rolname FROM pg_roles WHERE rolname = '` + name + `'`
	if tg.Engine != dbcred.PostgreSQL {
		q = `SELECT User FROM mysql.user WHERE User = '` + name + `'`
	}
	return len(Column(t, tg.Root, q)) == 1
}

// Postgres starts a PostgreSQL server with password authentication, on
// a unix socket.
func Postgres(t testing.TB) *Target {
	return postgres(t, pgtest.StartWithPasswords(t))
}

// PostgresTLS is Postgres also on 127.0.0.1 over TLS only, as a managed
// database is: Admin and DSN reach it there, verifying its certificate
// against CAFile.
func PostgresTLS(t testing.TB) *Target {
	return postgres(t, pgtest.StartTLSWithPasswords(t))
}

func postgres(t testing.TB, srv *pgtest.Server) *Target {
	dir, port := srv.Socket()
	root := Open(t, "pgx", srv.ConnString("postgres"))
	Exec(t, root, `CREATE DATABASE app`)
	app := Open(t, "pgx", srv.ConnString("app"))
	for _, q := range []string{
		`CREATE TABLE orders (id int)`, `CREATE TABLE ledger (id int)`,
		`CREATE ROLE app_rw NOLOGIN`, `GRANT SELECT, INSERT ON orders TO app_rw`,
		`CREATE ROLE podkey_admin LOGIN CREATEROLE PASSWORD '` + AdminPassword + `'`,
		`GRANT app_rw TO podkey_admin WITH ADMIN OPTION`, `GRANT pg_signal_backend TO podkey_admin`,
	} {
		Exec(t, app, q)
	}
	host, tls := dir, "sslmode=disable"
	if srv.CAFile != "" {
		host, tls = "127.0.0.1", "sslmode=verify-full sslrootcert="+srv.CAFile
	}
	return &Target{
		Engine: dbcred.PostgreSQL, Driver: "pgx", Root: app, CAFile: srv.CAFile,
		Admin: fmt.Sprintf("host=%s port=%d user=podkey_admin password=%s dbname=app %s", host, port, AdminPassword, tls),
		DSN: func(user, password string) string {
			return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=app %s connect_timeout=5", host, port, user, password, tls)
		},
		Down: srv.Stop, Up: srv.Start, Freeze: srv.Freeze, Thaw: srv.Thaw,
	}
}

// MariaDB starts a MariaDB server on a unix socket.
func MariaDB(t testing.TB) *Target {
	srv := mariadbtest.Start(t)
	root := srv.Open(t, "")
	for _, q := range []string{
		`CREATE DATABASE app`, `CREATE TABLE app.orders (id int)`, `CREATE TABLE app.ledger (id int)`,
		`CREATE ROLE app_rw`, `GRANT SELECT, INSERT ON app.orders TO app_rw`,
		`CREATE USER podkey_admin@localhost IDENTIFIED BY '` + AdminPassword + `'`,
		`GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO podkey_admin@localhost`,
		`GRANT app_rw TO podkey_admin@localhost WITH ADMIN OPTION`,
	} {
		Exec(t, root, q)
	}
	return &Target{
		Engine: dbcred.MySQL, Driver: "mysql", Root: root,
		Admin: srv.DSN("podkey_admin", AdminPassword, ""), Database: "app",
		DSN:  func(user, password string) string { return srv.DSN(user, password, "app") },
		Down: srv.Freeze, Up: srv.Thaw, Freeze: srv.Freeze, Thaw: srv.Thaw,
	}
}

// Open opens a database/sql handle closed when the test ends.
func Open(t testing.TB, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Exec runs q or fails the test.
func Exec(t testing.TB, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// Column is the first column of q's rows.
func Column(t testing.TB, db *sql.DB, q string) []string {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}
