package podkeycmd_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/podkeycmd"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
)

type result struct {
	code           int
	stdout, stderr string
}

func podkey(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := podkeycmd.NewCommand()
	cmd.SetIn(strings.NewReader(stdin))
	code := command.Run(cmd, args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func TestCLIAgainstKeyd(t *testing.T) {
	e := keydtest.Start(t, nil)
	sock := "--socket=" + e.Opts.Socket
	pay := []string{sock, "--namespace=payments", "--service-account=payments"}

	r := podkey(t, "", append([]string{"issue", "--object=ledger:apiKey", "--object=card:derivedKey:gm", "--object=mtls:certificate:gm"}, pay...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "[redacted: 32 bytes]") || !strings.Contains(r.stdout, "access key id: PK2") {
		t.Fatalf("issue: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if regexp.MustCompile(`[0-9a-f]{64}`).MatchString(r.stdout) || strings.Contains(r.stdout, "PRIVATE KEY") {
		t.Fatalf("issue printed a secret without --reveal:\n%s", r.stdout)
	}
	r = podkey(t, "", append([]string{"issue", "--object=ledger:apiKey", "--object=mtls:certificate", "--reveal"}, pay...)...)
	if r.code != 0 || !regexp.MustCompile(`[0-9a-f]{64}`).MatchString(r.stdout) {
		t.Fatalf("reveal: %d\n%s", r.code, r.stdout)
	}
	// A revealed certificate key comes with its chain: the certificate and
	// the CA bundle, which verify it.
	if !strings.Contains(r.stdout, "mtls private key:\n-----BEGIN PRIVATE KEY") || strings.Count(r.stdout, "BEGIN CERTIFICATE") < 2 {
		t.Fatalf("reveal of a certificate without its chain:\n%s", r.stdout)
	}
	if r := podkey(t, "", "renew", sock, "--namespace=payments", "--service-account=payments"); r.code != 0 || !strings.Contains(r.stdout, "renewal 1: credentials of service account payments/payments") {
		t.Fatalf("renew: %+v", r)
	}
	if r := podkey(t, "", "renew", sock, "--service-account=payments"); r.code != command.ExitUsage {
		t.Fatalf("renew without a namespace: %+v", r)
	}
	if r := podkey(t, "", "token", "jwks", sock); r.code != 0 || !strings.Contains(r.stdout, `"kid": "podkey-jwt-intl-g1"`) || !strings.Contains(r.stdout, `"crv": "SM2"`) {
		t.Fatalf("token jwks: %+v", r)
	}

	for _, c := range []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{"denied by policy", "", []string{"issue", sock, "--namespace=shop", "--object=x:apiKey"}, command.ExitDenied},
		{"unknown kind", "", append([]string{"issue", "--object=x:password"}, pay...), command.ExitUsage},
		{"unknown flag", "", []string{"issue", "--nope"}, command.ExitUsage},
		{"secret not enrolled", "", append([]string{"issue", "--object=db:secret"}, pay...), command.ExitNotFound},
		{"oversized secret", strings.Repeat("x", 64<<10+1), []string{"secret", "put", sock, "payments/big"}, command.ExitInvalid},
		{"empty secret", "", []string{"secret", "put", sock, "payments/empty"}, command.ExitInvalid},
		{"bad secret ref", "v", []string{"secret", "put", sock, "nons"}, command.ExitUsage},
		{"forged key id", "msg", []string{"verify", sock, "--access-key-id=PK1AAAA", "--signature=00"}, command.ExitInvalid},
		{"keyd down", "", []string{"policy", "get", "--socket=" + filepath.Join(t.TempDir(), "none.sock")}, command.ExitUnavailable},
		{"bad rule", "", []string{"policy", "add", sock, "--namespace=A B", "--service-account=x", "--object=y"}, command.ExitInvalid},
	} {
		r := podkey(t, c.stdin, c.args...)
		if r.code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s%s", c.name, r.code, c.code, r.stdout, r.stderr)
		}
	}
	if r := podkey(t, "", "secret", "list", sock); r.code != 0 || strings.Contains(r.stdout, "big") {
		t.Fatalf("refused secret listed: %s", r.stdout)
	}

	// Enroll, grant, issue, audit.
	if r := podkey(t, "s3cret-value\n", "secret", "put", sock, "shop/db"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if r := podkey(t, "", "secret", "list", sock); !strings.Contains(r.stdout, "db") || strings.Contains(r.stdout, "s3cret") {
		t.Fatalf("list: %s", r.stdout)
	}
	if r := podkey(t, "", "policy", "add", sock, "--namespace=shop", "--service-account=default", "--object=db", "--kind=secret"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	r = podkey(t, "", "issue", sock, "--namespace=shop", "--object=db:secret")
	if r.code != 0 || strings.Contains(r.stdout, "s3cret") {
		t.Fatalf("issue secret: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := podkey(t, "", "audit", "verify", sock); r.code != 0 || !strings.Contains(r.stdout, "intact") {
		t.Fatalf("audit verify: %+v", r)
	}
	r = podkey(t, "", "audit", "export", sock)
	if r.code != 0 || strings.Count(r.stdout, "\n") < 5 || strings.Contains(r.stdout, "s3cret") {
		t.Fatalf("audit export: %+v", r)
	}
	if r := podkey(t, "", "hsm", "rotate", "mac", sock, "--suite=gm"); r.code != 0 || !strings.Contains(r.stdout, "generation 2") {
		t.Fatalf("rotate: %+v", r)
	}
	if r := podkey(t, "", "ca", "bundle", sock, "--suite=gm"); !strings.Contains(r.stdout, "BEGIN CERTIFICATE") {
		t.Fatalf("ca bundle: %+v", r)
	}

	// Offline audit verification needs keyd stopped (it holds the store).
	e.Stop()
	pinFile := filepath.Join(t.TempDir(), "pin")
	_ = os.WriteFile(pinFile, []byte(hsmtest.PIN+"\n"), 0o600)
	hsmArgs := []string{"--hsm-token=" + e.HSM.TokenLabel, "--hsm-pin-file=" + pinFile}
	r = podkey(t, "", append([]string{"audit", "verify", "--store=" + e.StorePath}, hsmArgs...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "intact") {
		t.Fatalf("offline verify: %+v", r)
	}
	if r := podkey(t, "", append([]string{"hsm", "init"}, hsmArgs...)...); r.code != 0 || !strings.Contains(r.stdout, "nothing created") {
		t.Fatalf("hsm init again: %+v", r)
	}
	if r := podkey(t, "", append([]string{"hsm", "status"}, hsmArgs...)...); r.code != 0 || !strings.Contains(r.stdout, "extractable=false") {
		t.Fatalf("hsm status: %+v", r)
	}
}

// TestHSMStatusSaysWhereEveryRootKeyIsUsed: on the SM module every gm
// root key is inside the module; on SoftHSM2 each gm key is in keyd's
// memory, with the mechanism the table lacks.
func TestHSMStatusSaysWhereEveryRootKeyIsUsed(t *testing.T) {
	hsmtest.Each(t, func(t *testing.T, m hsmtest.Module) {
		cfg := m.Token(t)
		pinFile := filepath.Join(t.TempDir(), "pin")
		_ = os.WriteFile(pinFile, []byte(hsmtest.PIN+"\n"), 0o600)
		args := []string{"--hsm-module=" + cfg.ModulePath, "--hsm-token=" + cfg.TokenLabel, "--hsm-pin-file=" + pinFile}
		if m.Name == "sm" {
			args = append(args, "--hsm-mechanisms="+hsmtest.SMMechanismsFile(t))
		}
		if r := podkey(t, "", append([]string{"hsm", "init"}, args...)...); r.code != 0 {
			t.Fatalf("hsm init: %+v", r)
		}
		r := podkey(t, "", append([]string{"hsm", "status"}, args...)...)
		if r.code != 0 {
			t.Fatalf("hsm status: %+v", r)
		}
		_, roots, found := strings.Cut(r.stdout, "\nKEY ")
		if !found {
			t.Fatalf("no root key table:\n%s", r.stdout)
		}
		for _, p := range []string{"mac", "derive", "ca", "jwt"} {
			line := regexp.MustCompile(`(?m)^podkey/` + p + `/gm/g1 +(.*)$`).FindStringSubmatch(roots)
			if line == nil {
				t.Fatalf("no line for the gm %s key:\n%s", p, r.stdout)
			}
			inside := strings.HasPrefix(line[1], "inside the module")
			if inside != (m.Name == "sm") || !inside && !strings.Contains(line[1], "the mechanism table has no") {
				t.Errorf("gm %s key on %s: %q", p, m.Name, line[1])
			}
		}
		if !regexp.MustCompile(`(?m)^podkey/ca/intl/g1 +inside the module$`).MatchString(roots) {
			t.Errorf("intl CA:\n%s", r.stdout)
		}
	})
}

func TestHSMErrors(t *testing.T) {
	cfg := hsmtest.Token(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	_ = os.WriteFile(bad, []byte("wrong-pin"), 0o600)
	r := podkey(t, "", "hsm", "init", "--hsm-token="+cfg.TokenLabel, "--hsm-pin-file="+bad)
	if r.code != command.ExitDenied || strings.Contains(r.stderr, "wrong-pin") {
		t.Fatalf("wrong PIN: %+v", r)
	}
	good := filepath.Join(dir, "good")
	_ = os.WriteFile(good, []byte(hsmtest.PIN), 0o600)
	if r := podkey(t, "", "hsm", "init", "--hsm-token=missing", "--hsm-pin-file="+good); r.code != command.ExitNotFound {
		t.Fatalf("missing token: %+v", r)
	}
	t.Setenv(hsm.PINEnv, "")
	if r := podkey(t, "", "hsm", "init", "--hsm-token="+cfg.TokenLabel); r.code != command.ExitUsage {
		t.Fatalf("no PIN: %+v", r)
	}
	if r := podkey(t, "", "hsm", "init", "--hsm-token="+cfg.TokenLabel, "--hsm-pin-file="+good); r.code != 0 || !strings.Contains(r.stdout, "created 10 root keys") {
		t.Fatalf("init: %+v", r)
	}
}

func TestHSMInitToken(t *testing.T) {
	_ = hsmtest.Token(t) // points SoftHSM2 at the test process's token directory
	label := fmt.Sprintf("podkey-init-%d", os.Getpid())
	pinFile := filepath.Join(t.TempDir(), "pin")
	args := []string{"hsm", "init", "--init-token", "--hsm-token=" + label, "--hsm-pin-file=" + pinFile}
	r := podkey(t, "", args...)
	if r.code != 0 || !strings.Contains(r.stdout, "initialised") || !strings.Contains(r.stdout, "created 10 root keys") {
		t.Fatalf("first init: %+v", r)
	}
	pin, err := os.ReadFile(pinFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{pinFile, pinFile + ".so"} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	if strings.Contains(r.stdout+r.stderr, strings.TrimSpace(string(pin))) {
		t.Fatal("the generated PIN was printed")
	}
	// A second start finds the token and its keys, and keeps the PIN.
	r = podkey(t, "", args...)
	if r.code != 0 || strings.Contains(r.stdout, "initialised") || !strings.Contains(r.stdout, "nothing created") {
		t.Fatalf("second init: %+v", r)
	}
	if again, _ := os.ReadFile(pinFile); !bytes.Equal(again, pin) {
		t.Fatal("the PIN file changed")
	}
	if r := podkey(t, "", "hsm", "init", "--init-token", "--hsm-token="+label); r.code != command.ExitUsage || !strings.Contains(r.stderr, "--hsm-pin-file") {
		t.Fatalf("without a PIN file: %+v", r)
	}
}

// TestConcurrentPolicyEditsAreNotLost: rule changes are single operations
// in keyd's store, so operators adding and removing rules at the same time
// never lose one another's change.
func TestConcurrentPolicyEditsAreNotLost(t *testing.T) {
	e := keydtest.Start(t, nil)
	sock := "--socket=" + e.Opts.Socket
	const n = 16
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = podkey(t, "", "policy", "add", sock, fmt.Sprintf("--namespace=team-%d", i), "--service-account=app", "--object=db").code
		}()
	}
	wg.Wait()
	r := podkey(t, "", "policy", "get", sock)
	for i := 0; i < n; i++ {
		if codes[i] != 0 || !strings.Contains(r.stdout, fmt.Sprintf("namespace: team-%d\n", i)) {
			t.Fatalf("rule %d lost (exit %d):\n%s", i, codes[i], r.stdout)
		}
	}
	if r := podkey(t, "", "policy", "remove", sock, "--namespace=team-3", "--service-account=app", "--object=db"); r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%d rules", n)) {
		t.Fatalf("remove: %+v", r) // the keydtest policy's own rule plus n-1
	}
	if r := podkey(t, "", "policy", "remove", sock, "--namespace=team-3", "--service-account=app", "--object=db"); r.code != command.ExitNotFound {
		t.Fatalf("remove again: %+v", r)
	}
}

func TestImageCommands(t *testing.T) {
	e := keydtest.Start(t, nil)
	sock := "--socket=" + e.Opts.Socket
	dir := t.TempDir()
	a := filepath.Join(dir, "a.pem")
	if r := podkey(t, "", "image", "keys", "create", "cluster-a", "--suite", "gm", "-o", a, sock); r.code != 0 || !strings.Contains(r.stderr, "image key cluster-a (gm)") {
		t.Fatalf("create: %+v", r)
	}
	if r := podkey(t, "", "image", "keys", "create", "cluster-a", sock); r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("create twice: %+v", r)
	}
	if r := podkey(t, "", "image", "keys", "create", "Bad_Id", sock); r.code != command.ExitInvalid {
		t.Fatalf("bad id: %+v", r)
	}
	if r := podkey(t, "", "image", "keys", "export", "cluster-a", sock); r.code != 0 || !strings.Contains(r.stdout, "Podkey-Image-Key: cluster-a") {
		t.Fatalf("export: %+v", r)
	}
	if r := podkey(t, "", "image", "keys", "export", "nobody", sock); r.code != command.ExitNotFound {
		t.Fatalf("export of an unknown key: %+v", r)
	}
	if r := podkey(t, "", "image", "keys", "list", sock); r.code != 0 || !strings.Contains(r.stdout, "cluster-a  gm") {
		t.Fatalf("list: %+v", r)
	}
	// Encrypt needs recipients, reads them before the image, and refuses
	// what is not one.
	if r := podkey(t, "", "image", "encrypt", "oci:"+dir+"/in", "oci:"+dir+"/out"); r.code != command.ExitUsage {
		t.Fatalf("no recipient: %+v", r)
	}
	_ = os.WriteFile(filepath.Join(dir, "bad.pem"), []byte("not a key"), 0o600)
	if r := podkey(t, "", "image", "encrypt", "-r", filepath.Join(dir, "bad.pem"), "oci:"+dir+"/in", "oci:"+dir+"/out"); r.code != command.ExitInvalid {
		t.Fatalf("bad recipient: %+v", r)
	}
	if r := podkey(t, "", "image", "encrypt", "-r", a, "oci:"+dir+"/missing", "oci:"+dir+"/out"); r.code != command.ExitNotFound {
		t.Fatalf("missing source: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Fatal("a failed encryption wrote its destination")
	}
}
