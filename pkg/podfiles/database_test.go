package podfiles_test

import (
	"bytes"
	"net/url"
	"strings"
	"testing"

	"github.com/podkey/podkey/pkg/podfiles"
)

func TestDatabaseLoginFile(t *testing.T) {
	cases := []struct {
		login podfiles.DatabaseLogin
		url   string
	}{
		{podfiles.DatabaseLogin{Engine: "postgresql", User: "pk_pay_1f2e3d4c_9a8b7c6d", Password: []byte("Qm3abcDEF0123456789xyzXYZ0123456"),
			Host: "db.payments.svc", Port: 5432, Database: "ledger", Params: "sslmode=verify-full"},
			"postgresql://pk_pay_1f2e3d4c_9a8b7c6d:Qm3abcDEF0123456789xyzXYZ0123456@db.payments.svc:5432/ledger?sslmode=verify-full"},
		{podfiles.DatabaseLogin{Engine: "postgresql", User: "pk_a", Password: []byte("p"), Host: "/run/postgresql", Database: "app"},
			"postgresql://pk_a:p@/app?host=%2Frun%2Fpostgresql"},
		{podfiles.DatabaseLogin{Engine: "mysql", User: "pk_a", Password: []byte("p"), Host: "/run/mysqld/mysqld.sock", Database: "app"},
			"mysql://pk_a:p@/app?socket=%2Frun%2Fmysqld%2Fmysqld.sock"},
		{podfiles.DatabaseLogin{Engine: "mysql", User: "pk_a", Password: []byte("p"), Host: "::1", Port: 3306, Database: "app", Params: "tls=true"},
			"mysql://pk_a:p@[::1]:3306/app?tls=true"},
	}
	for _, c := range cases {
		data, err := c.login.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(string(data), "\nurl="+c.url+"\n") {
			t.Errorf("file:\n%s\nwant url %s", data, c.url)
		}
		back, err := podfiles.ParseDatabaseLogin(data)
		if err != nil {
			t.Fatal(err)
		}
		if back.URL() != c.url || !bytes.Equal(back.Password, c.login.Password) || back.Host != c.login.Host || back.Port != c.login.Port {
			t.Errorf("round trip: %+v", back)
		}
		if _, err := url.Parse(c.url); err != nil {
			t.Errorf("url %s: %v", c.url, err)
		}
	}
	// A value the file cannot carry is refused, not written.
	for _, bad := range []podfiles.DatabaseLogin{
		{Engine: "postgresql", User: "u", Password: []byte("p"), Host: "h\nx=1", Database: "d"},
		{Engine: "postgresql", User: "u", Password: []byte("p w"), Host: "h", Database: "d"},
		{Engine: "postgresql", User: "u", Password: []byte("p"), Host: "h", Database: ""},
	} {
		if data, err := bad.Marshal(); err == nil {
			t.Errorf("wrote %q", data)
		}
	}
	for _, bad := range []string{"", "user=u\n", "engine=a\nengine=b\n", "port=x\n", "garbage\n"} {
		if _, err := podfiles.ParseDatabaseLogin([]byte(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func FuzzParseDatabaseLogin(f *testing.F) {
	l := podfiles.DatabaseLogin{Engine: "postgresql", User: "pk_a", Password: []byte("secret"), Host: "db", Port: 5432, Database: "app", Params: "sslmode=require"}
	seed, _ := l.Marshal()
	f.Add(seed)
	f.Add([]byte("engine=mysql\nuser=u\npassword=p\nhost=/s\nport=0\ndatabase=d\nurl=%zz\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := podfiles.ParseDatabaseLogin(data)
		if err != nil {
			return
		}
		// What parses and can be written again reads back the same.
		out, err := d.Marshal()
		if err != nil {
			return
		}
		again, err := podfiles.ParseDatabaseLogin(out)
		if err != nil || again.User != d.User || !bytes.Equal(again.Password, d.Password) || again.Host != d.Host ||
			again.Port != d.Port || again.Database != d.Database || again.Engine != d.Engine {
			t.Fatalf("%q -> %q -> %+v %v", data, out, again, err)
		}
	})
}
