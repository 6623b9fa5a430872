// Package dbcred gives each pod its own database login: a role created
// for the pod in PostgreSQL, MariaDB or MySQL, a member of a group role
// an administrator chose, with a password from the HSM's generator. One
// lease per pod and object (every publish gets the same login), renewed
// while the pod lives, and revoked — no new logins, every session ended,
// the login dropped — when it goes or stops renewing.
//
// Connections (which database, the admin connection string, the group
// role, the times) are defined by an administrator and kept as enrolled
// secrets of the reserved namespace DatabaseNamespace: wrapped under the
// HSM KEK, backed up and re-wrapped with the other secrets. The admin
// connection string never leaves keyd and is never logged.
package dbcred

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/podfiles"
)

// DatabaseNamespace holds connection definitions. No Kubernetes
// namespace can be named so, and enrollment refuses it.
const DatabaseNamespace = "podkey:database"

// Engines.
const (
	PostgreSQL = "postgresql"
	MySQL      = "mysql" // MariaDB 10.4+ and MySQL 8
)

// ErrInvalid marks a definition or request the caller must fix.
var ErrInvalid = errors.New("invalid")

// ErrUndefined: no connection of that name.
var ErrUndefined = errors.New("database connection not defined")

// Defaults of a connection's times and login names.
const (
	DefaultTTL    = time.Hour
	DefaultMaxTTL = 24 * time.Hour
	DefaultPrefix = "pk_"
)

// Connection is an administrator's definition of a database pods get
// logins for. Admin, the admin connection string, is kept wrapped and
// never returned.
type Connection struct {
	Name      string `json:"name"`
	Engine    string `json:"engine"`
	GroupRole string `json:"groupRole"`
	// TTL is how long a login stays valid without a renewal (capped by
	// the object's ttl); MaxTTL how long one password lives before a
	// renewal replaces it; RevokeGrace how long after its pod goes a
	// login is dropped.
	TTL         time.Duration `json:"ttl"`
	MaxTTL      time.Duration `json:"maxTTL"`
	RevokeGrace time.Duration `json:"revokeGrace"`
	// UserPrefix starts every login keyd creates: only such logins with
	// a lease are ever dropped.
	UserPrefix string `json:"userPrefix"`
	// Host, Port, Database and Params are what pods connect to (default:
	// the admin connection's host, port and database); Params is a URL
	// query for the pod's URL line (e.g. sslmode=verify-full).
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Database string `json:"database"`
	Params   string `json:"params,omitempty"`
	// CAPEM verifies a MySQL/MariaDB admin connection's TLS server.
	CAPEM   string    `json:"caPEM,omitempty"`
	Version int       `json:"version"`
	Created time.Time `json:"created"`

	Admin string `json:"admin"` // the admin connection string: wrapped, never listed
}

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,5}$`)
	groupRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)
)

// Normalize fills defaults and validates everything but reaching the
// database.
func (c *Connection) Normalize() error {
	if !object.ValidName(c.Name) {
		return fmt.Errorf("%w: connection name %q (lower-case letters, digits, '-' and '.'; it is the object name pods ask for)", ErrInvalid, c.Name)
	}
	switch c.Engine {
	case PostgreSQL, MySQL:
	default:
		return fmt.Errorf("%w: database %q: engine %q (want postgresql or mysql)", ErrInvalid, c.Name, c.Engine)
	}
	if !groupRE.MatchString(c.GroupRole) {
		return fmt.Errorf("%w: database %q: group role %q (letters, digits, '_', '$', '-'; at most 63)", ErrInvalid, c.Name, c.GroupRole)
	}
	if c.Admin == "" {
		return fmt.Errorf("%w: database %q: an admin connection string is required", ErrInvalid, c.Name)
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	if c.TTL < object.MinTTL || c.MaxTTL < c.TTL || c.MaxTTL > object.MaxTTL {
		return fmt.Errorf("%w: database %q: ttl %s and maxTTL %s must satisfy %s <= ttl <= maxTTL <= %s", ErrInvalid, c.Name, c.TTL, c.MaxTTL, object.MinTTL, object.MaxTTL)
	}
	if c.RevokeGrace < 0 || c.RevokeGrace > time.Hour {
		return fmt.Errorf("%w: database %q: revokeGrace %s out of range [0, 1h]", ErrInvalid, c.Name, c.RevokeGrace)
	}
	if c.UserPrefix == "" {
		c.UserPrefix = DefaultPrefix
	}
	if !prefixRE.MatchString(c.UserPrefix) {
		return fmt.Errorf("%w: database %q: userPrefix %q (a lower-case letter, then up to 5 letters, digits or '_')", ErrInvalid, c.Name, c.UserPrefix)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("%w: database %q: port %d", ErrInvalid, c.Name, c.Port)
	}
	var host, db string
	var port int
	var ok bool
	if c.Engine == PostgreSQL {
		host, port, db, ok = postgresDefaults(c.Admin)
	} else {
		host, port, db, ok = mysqlDefaults(c.Admin)
	}
	if !ok {
		return fmt.Errorf("%w: database %q: the admin connection string does not parse", ErrInvalid, c.Name)
	}
	if c.Host == "" {
		c.Host = host
	}
	if c.Port == 0 {
		c.Port = port
	}
	if c.Database == "" {
		c.Database = db
	}
	if c.Host == "" || c.Database == "" {
		return fmt.Errorf("%w: database %q: pods need a host and a database (set host and database)", ErrInvalid, c.Name)
	}
	if _, err := url.ParseQuery(c.Params); err != nil {
		return fmt.Errorf("%w: database %q: params must be a URL query (e.g. sslmode=verify-full)", ErrInvalid, c.Name)
	}
	// What the pod's file carries (podfiles.DatabaseLogin).
	probe := podfiles.DatabaseLogin{Engine: c.Engine, User: c.UserPrefix, Password: []byte("x"), Host: c.Host,
		Port: c.Port, Database: c.Database, Params: c.Params}
	if _, err := probe.Marshal(); err != nil {
		return fmt.Errorf("%w: database %q: host, database and params must be printable ASCII without white space or quotes, and make a valid URL", ErrInvalid, c.Name)
	}
	return nil
}

// Public is c without its admin connection string.
func (c Connection) Public() Connection {
	c.Admin = ""
	return c
}

func aad(name string) []byte { return keyring.SecretAAD(DatabaseNamespace, name) }

// load reads and unwraps a connection definition.
func (m *Manager) load(ctx context.Context, name string) (Connection, error) {
	rec, err := m.st.Secret(ctx, DatabaseNamespace, name)
	if errors.Is(err, store.ErrNotFound) {
		return Connection{}, fmt.Errorf("%w: %q", ErrUndefined, name)
	}
	if err != nil {
		return Connection{}, err
	}
	plain, err := m.keys.Unwrap(ctx, rec.Wrapped, aad(name))
	if err != nil {
		return Connection{}, err
	}
	defer clear(plain)
	var c Connection
	if err := json.Unmarshal(plain, &c); err != nil || c.Name != name {
		return Connection{}, fmt.Errorf("database connection %q is unreadable", name)
	}
	c.Version = rec.Version
	return c, nil
}

// Put defines or replaces a connection after proving it works: the admin
// connection reaches the database within its deadline and the group role
// exists there. Logins made under an earlier definition keep their leases.
func (m *Manager) Put(ctx context.Context, c Connection) (Connection, error) {
	if err := c.Normalize(); err != nil {
		return Connection{}, err
	}
	e, err := m.open(ctx, &c)
	if err != nil {
		return Connection{}, err
	}
	defer e.Close()
	if err := e.Check(ctx); err != nil {
		return Connection{}, err
	}
	c.Version, c.Created = 1, m.opts.Now().UTC()
	if old, err := m.st.Secret(ctx, DatabaseNamespace, c.Name); err == nil {
		c.Version = old.Version + 1
	} else if !errors.Is(err, store.ErrNotFound) {
		return Connection{}, err
	}
	plain, err := json.Marshal(c)
	if err != nil {
		return Connection{}, err
	}
	defer clear(plain)
	wrapped, err := m.keys.Wrap(ctx, plain, aad(c.Name))
	if err != nil {
		return Connection{}, err
	}
	if err := m.st.PutSecret(ctx, store.Secret{Namespace: DatabaseNamespace, Name: c.Name, Wrapped: wrapped,
		Size: len(c.Admin), Created: c.Created, Version: c.Version}); err != nil {
		return Connection{}, err
	}
	m.forget(c.Name)
	return c.Public(), nil
}

// List returns every connection, without admin connection strings.
func (m *Manager) List(ctx context.Context) ([]Connection, error) {
	recs, err := m.st.Secrets(ctx, DatabaseNamespace)
	if err != nil {
		return nil, err
	}
	out := make([]Connection, 0, len(recs))
	for _, r := range recs {
		c, err := m.load(ctx, r.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, c.Public())
	}
	return out, nil
}

// ErrInUse refuses deleting a connection that live leases still use.
var ErrInUse = errors.New("database connection in use")

// Delete removes a connection no lease uses any more.
func (m *Manager) Delete(ctx context.Context, name string) error {
	leases, err := m.st.ListLeases(ctx, "")
	if err != nil {
		return err
	}
	n := 0
	for _, l := range leases {
		if l.Connection == name {
			n++
		}
	}
	if n > 0 {
		return fmt.Errorf("%w: %d pod logins of %q are live; they are dropped when their pods go (or remove the policy rule and wait for their expiry)", ErrInUse, n, name)
	}
	if err := m.st.DeleteSecret(ctx, DatabaseNamespace, name); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %q", ErrUndefined, name)
	} else if err != nil {
		return err
	}
	m.forget(name)
	return nil
}

// open connects to c's database as its admin (lazily: no round trip).
func (m *Manager) open(ctx context.Context, c *Connection) (engine, error) {
	if c.Engine == PostgreSQL {
		return openPostgres(ctx, c, c.Admin, m.keys.Random)
	}
	return openMySQL(ctx, c, c.Admin)
}
