package podfiles

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// DatabaseLogin is a database object's file: one key=value per line, in
// this order, every value printable ASCII without white space or quotes
// (so docker's and systemd's env-file readers take it as is; a shell
// should read it line by line rather than source it, since a url's '&'
// is an operator there), and ParseDatabaseLogin reads it:
//
//	engine=postgresql
//	user=pk_payments_1f2e3d4c_9a8b7c6d
//	password=Qm3...      (32 letters and digits)
//	host=db.payments.svc
//	port=5432
//	database=ledger
//	url=postgresql://pk_payments_1f2e3d4c_9a8b7c6d:Qm3...@db.payments.svc:5432/ledger?sslmode=verify-full
//
// A host starting with '/' is a unix socket directory (PostgreSQL, whose
// port then names the socket file) or socket (MySQL, port 0). The url is libpq's form for PostgreSQL
// and mysql://user:password@host:port/database for MySQL/MariaDB (a
// socket as the socket parameter).
type DatabaseLogin struct {
	Engine   string
	User     string
	Password []byte
	Host     string
	Port     int
	Database string
	Params   string // a URL query appended to url
}

// Zero overwrites the password.
func (d *DatabaseLogin) Zero() { clear(d.Password) }

// SafeValue reports whether s can be a value of the file: printable
// ASCII without white space or quotes.
func SafeValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\'' {
			return false
		}
	}
	return true
}

// URL is the login as one connection URL.
func (d *DatabaseLogin) URL() string {
	scheme := "postgresql"
	if d.Engine == "mysql" {
		scheme = "mysql"
	}
	u := url.URL{Scheme: scheme, User: url.UserPassword(d.User, string(d.Password)), Path: "/" + d.Database}
	q, _ := url.ParseQuery(d.Params)
	if q == nil {
		q = url.Values{}
	}
	if strings.HasPrefix(d.Host, "/") {
		if scheme == "mysql" {
			q.Set("socket", d.Host)
		} else {
			q.Set("host", d.Host)
			if d.Port != 0 { // it names the socket file
				q.Set("port", strconv.Itoa(d.Port))
			}
		}
	} else {
		u.Host = d.Host
		if d.Port != 0 {
			u.Host = net.JoinHostPort(d.Host, strconv.Itoa(d.Port))
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Marshal writes the file. Every value must be safe unquoted; the url's
// escaping keeps it so.
func (d *DatabaseLogin) Marshal() ([]byte, error) {
	var b bytes.Buffer
	for _, kv := range [][2]string{
		{"engine", d.Engine}, {"user", d.User}, {"password", string(d.Password)}, {"host", d.Host},
		{"port", strconv.Itoa(d.Port)}, {"database", d.Database},
	} {
		if kv[1] == "" || !SafeValue(kv[1]) {
			return nil, fmt.Errorf("database login: the %s is empty or holds a character the file cannot carry", kv[0])
		}
		b.WriteString(kv[0] + "=" + kv[1] + "\n")
	}
	u := d.URL()
	if _, err := url.Parse(u); err != nil || !SafeValue(u) {
		return nil, errors.New("database login: the url holds a character the file cannot carry (check the connection's params)")
	}
	b.WriteString("url=" + u + "\n")
	return b.Bytes(), nil
}

// ParseDatabaseLogin reads a database object's file.
func ParseDatabaseLogin(data []byte) (DatabaseLogin, error) {
	var d DatabaseLogin
	seen := map[string]bool{}
	for n, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || seen[k] {
			return DatabaseLogin{}, fmt.Errorf("database login: line %d is not a new key=value", n+1)
		}
		seen[k] = true
		switch k {
		case "engine":
			d.Engine = v
		case "user":
			d.User = v
		case "password":
			d.Password = []byte(v)
		case "host":
			d.Host = v
		case "port":
			p, err := strconv.Atoi(v)
			if err != nil || p < 0 || p > 65535 {
				return DatabaseLogin{}, fmt.Errorf("database login: port %q", v)
			}
			d.Port = p
		case "database":
			d.Database = v
		case "url":
			u, err := url.Parse(v)
			if err != nil {
				return DatabaseLogin{}, errors.New("database login: the url does not parse")
			}
			q := u.Query()
			q.Del("host")
			q.Del("port")
			q.Del("socket")
			d.Params = q.Encode()
		default:
			// Unknown keys are a later version's additions.
		}
	}
	for _, k := range []string{"engine", "user", "password", "host", "port", "database"} {
		if !seen[k] {
			clear(d.Password)
			return DatabaseLogin{}, fmt.Errorf("database login: no %s line", k)
		}
	}
	return d, nil
}
