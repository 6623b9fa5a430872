package podkeycmd_test

import (
	"context"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/approval/approvaltest"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/suite"
)

// TestDualControlWorkflow is the documented workflow, command by command:
// people make their keys, the roster turns dual control on, a rotation
// is refused alone, requested, approved by one signature too few, then
// by the quorum, executed once.
func TestDualControlWorkflow(t *testing.T) {
	e := keydtest.Start(t, nil)
	sock := "--socket=" + e.Opts.Socket
	dir := t.TempDir()
	key := func(name string) string { return filepath.Join(dir, name+".key") }
	var roster strings.Builder
	roster.WriteString("suite: gm\npeople:\n")
	for name, role := range map[string]string{"ann": "key-admin", "bob": "key-admin", "cat": "key-admin", "dan": "operator", "eve": "security-officer", "fay": "security-officer", "gus": "auditor"} {
		r := podkey(t, "", "approval", "keygen", "--suite=gm", "--out="+key(name))
		if r.code != 0 || !strings.HasPrefix(r.stdout, "-----BEGIN PUBLIC KEY-----") {
			t.Fatalf("keygen: %+v", r)
		}
		if fi, err := os.Stat(key(name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("the private key file: %v %v", fi.Mode(), err)
		}
		fmt.Fprintf(&roster, "- name: %s\n  roles: [%s]\n  publicKey: %q\n", name, role, r.stdout)
	}
	rosterFile := filepath.Join(dir, "roster.yaml")
	_ = os.WriteFile(rosterFile, []byte(roster.String()), 0o644)
	if r := podkey(t, "", "approval", "roster", "set", sock, rosterFile); r.code != 0 || !strings.Contains(r.stdout, "roster version 1, suite gm") {
		t.Fatalf("roster set: %+v", r)
	}
	if r := podkey(t, "", "hsm", "rotate", sock, "jwt", "--suite=gm"); r.code != command.ExitDenied || !strings.Contains(r.stderr, "2 key-admin + 1 security-officer") {
		t.Fatalf("rotation alone: %+v", r)
	}
	req := filepath.Join(dir, "rotate.json")
	r := podkey(t, "", "hsm", "rotate", sock, "jwt", "--suite=gm", "--request-out="+req, "--request-as=dan", "--request-key="+key("dan"))
	if r.code != 0 || !strings.Contains(r.stdout, "request for RotateKey written") {
		t.Fatalf("request: %+v", r)
	}
	if r := podkey(t, "", "approval", "show", req); r.code != 0 || !strings.Contains(r.stdout, `{"purpose":"jwt","suite":"gm"}`) || !strings.Contains(r.stdout, "signed by  dan as requester") {
		t.Fatalf("show: %+v", r)
	}
	for _, who := range []string{"ann", "bob"} {
		if r := podkey(t, "", "approval", "sign", req, "--as="+who, "--role=key-admin", "--key="+key(who)); r.code != 0 {
			t.Fatalf("sign: %+v", r)
		}
	}
	if r := podkey(t, "", "approval", "sign", req, "--as=ann", "--role=key-admin", "--key="+key("ann")); r.code != command.ExitInvalid {
		t.Fatalf("ann signs twice: %+v", r)
	}
	if r := podkey(t, "", "hsm", "rotate", sock, "jwt", "--suite=gm", "--approval="+req); r.code != command.ExitDenied || !strings.Contains(r.stderr, "do not meet the quorum") {
		t.Fatalf("two approvals: %+v", r)
	}
	if r := podkey(t, "", "approval", "sign", req, "--as=eve", "--role=security-officer", "--key="+key("eve")); r.code != 0 {
		t.Fatalf("sign: %+v", r)
	}
	// The approval is for these parameters only.
	if r := podkey(t, "", "hsm", "rotate", sock, "jwt", "--suite=intl", "--approval="+req); r.code != command.ExitDenied || !strings.Contains(r.stderr, "parameters differ") {
		t.Fatalf("other parameters: %+v", r)
	}
	if r := podkey(t, "", "hsm", "rotate", sock, "jwt", "--suite=gm", "--approval="+req); r.code != 0 || !strings.Contains(r.stdout, "jwt/gm: now generation 2") {
		t.Fatalf("execute: %+v", r)
	}
	if r := podkey(t, "", "hsm", "rotate", sock, "jwt", "--suite=gm", "--approval="+req); r.code != command.ExitDenied || !strings.Contains(r.stderr, "executed already") {
		t.Fatalf("replay: %+v", r)
	}
	if r := podkey(t, "", "approval", "roster", "show", sock); r.code != 0 || !strings.Contains(r.stdout, "gus") {
		t.Fatalf("roster show: %+v", r)
	}
}

// TestDualControlBackupAndRestore: a backup (a streaming call) and a
// restore (made with the token directly, keyd stopped) each need the
// quorum; the restore executes once and is audited in the restored store.
func TestDualControlBackupAndRestore(t *testing.T) {
	e := keydtest.Start(t, nil)
	sock := "--socket=" + e.Opts.Socket
	dir := t.TempDir()
	tm := approvaltest.New(t, suite.Intl, "")
	if _, err := e.Admin.SetRoster(context.Background(), &keydv1.RosterDocument{Yaml: tm.YAML}); err != nil {
		t.Fatal(err)
	}
	keyFile := func(name string) string {
		der, _ := smx509.MarshalPKCS8PrivateKey(tm.Keys[name])
		p := filepath.Join(dir, name+".key")
		_ = os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		return p
	}
	approve := func(req string) {
		for _, a := range []string{"ann/key-admin", "bob/key-admin", "eve/security-officer"} {
			name, role, _ := strings.Cut(a, "/")
			if r := podkey(t, "", "approval", "sign", req, "--as="+name, "--role="+role, "--key="+keyFile(name)); r.code != 0 {
				t.Fatalf("sign: %+v", r)
			}
		}
	}
	backup := filepath.Join(dir, "backup.db")
	if r := podkey(t, "", "store", "backup", sock, "-o", backup); r.code != command.ExitDenied {
		t.Fatalf("backup alone: %+v", r)
	}
	req := filepath.Join(dir, "backup.json")
	if r := podkey(t, "", "store", "backup", sock, "-o", backup, "--request-out="+req, "--request-as=dan", "--request-key="+keyFile("dan")); r.code != 0 {
		t.Fatalf("backup request: %+v", r)
	}
	approve(req)
	if r := podkey(t, "", "store", "backup", sock, "-o", backup, "--approval="+req); r.code != 0 {
		t.Fatalf("approved backup: %+v", r)
	}

	e.Stop()
	pinFile := filepath.Join(dir, "pin")
	_ = os.WriteFile(pinFile, []byte(hsmtest.PIN+"\n"), 0o600)
	restore := []string{"store", "restore", "--from", backup, "--store", e.StorePath, "--replace",
		"--hsm-module=" + e.HSM.ModulePath, "--hsm-token=" + e.HSM.TokenLabel, "--hsm-pin-file=" + pinFile}
	if r := podkey(t, "", restore...); r.code != command.ExitDenied || !strings.Contains(r.stderr, "dual control is on") {
		t.Fatalf("restore alone: %+v", r)
	}
	rreq := filepath.Join(dir, "restore.json")
	if r := podkey(t, "", append(restore, "--request-out="+rreq, "--request-as=dan", "--request-key="+keyFile("dan"))...); r.code != 0 || !strings.Contains(r.stdout, "RestoreStore") {
		t.Fatalf("restore request: %+v", r)
	}
	// An approval of the backup request does not restore.
	if r := podkey(t, "", append(restore, "--approval="+req)...); r.code != command.ExitDenied {
		t.Fatalf("restore with the backup's approval: %+v", r)
	}
	approve(rreq)
	if r := podkey(t, "", append(restore, "--approval="+rreq)...); r.code != 0 || !strings.Contains(r.stdout, "restored") {
		t.Fatalf("approved restore: %+v", r)
	}
	if r := podkey(t, "", append(restore, "--approval="+rreq)...); r.code != command.ExitDenied || !strings.Contains(r.stderr, "executed already") {
		t.Fatalf("the same restore again: %+v", r)
	}
	e.Run()
	if v, err := e.Admin.VerifyAudit(context.Background(), &keydv1.VerifyAuditRequest{}); err != nil || !v.Intact {
		t.Fatalf("audit after restore: %v %v", v, err)
	}
	all := strings.Join(e.AuditLines(), "\n")
	if !strings.Contains(all, `"op":"RestoreStore"`) {
		t.Fatal("the restore's approval is not in the restored store's audit")
	}
}
