package podkeycmd_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/approval/approvaltest"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
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

// TestEvidenceBundle: the bundle of a period with approvals and
// checkpoints verifies with the independent Python verifier; an edit, a
// removal, a reordering and a cut end are each caught, as is a bundle that
// ends before a checkpoint file the assessor holds.
func TestEvidenceBundle(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed (hack/install-deps.sh installs it)")
	}
	ctx := context.Background()
	cpDir := t.TempDir()
	e := keydtest.Start(t, func(o *service.Options) { o.CheckpointDir = cpDir })
	sock := "--socket=" + e.Opts.Socket
	tm := approvaltest.New(t, suite.GM, "")
	if _, err := e.Admin.SetRoster(ctx, &keydv1.RosterDocument{Yaml: tm.YAML}); err != nil {
		t.Fatal(err)
	}
	issue := func(n int) {
		for range n {
			if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "pay-a", PodUid: "uid-a", NodeName: "node-1"}, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	issue(5)
	if _, err := e.Admin.CheckpointAudit(ctx, &keydv1.CheckpointAuditRequest{}); err != nil {
		t.Fatal(err)
	}
	from := time.Now().UTC()
	issue(5)
	rotate := &keydv1.RotateKeyRequest{Purpose: "jwt", Suite: "gm"}
	params, _ := approval.Params(rotate)
	rotate.Approval = tm.Doc(t, "RotateKey", params, "dan", "ann/key-admin", "bob/key-admin", "eve/security-officer")
	if _, err := e.Admin.RotateKey(ctx, rotate); err != nil {
		t.Fatal(err)
	}
	issue(5)
	bundle := filepath.Join(t.TempDir(), "evidence")
	r := podkey(t, "", "audit", "evidence", sock, "--from="+from.Format(time.RFC3339Nano), "-o", bundle)
	if r.code != 0 || !strings.Contains(r.stdout, "1 approvals") {
		t.Fatalf("evidence: %+v", r)
	}
	cpFiles, _ := filepath.Glob(filepath.Join(cpDir, "checkpoint-*.json"))
	if len(cpFiles) < 2 {
		t.Fatalf("checkpoint files: %v", cpFiles)
	}
	verify := func(dir string, extra ...string) (string, int) {
		args := []string{"../../../hack/evidence/verify.py", dir}
		for _, f := range extra {
			args = append(args, "--checkpoint", f)
		}
		out, err := exec.Command("python3", args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	if out, code := verify(bundle, cpFiles...); code != 0 || !strings.Contains(out, "verified: records") || !strings.Contains(out, "1 approvals") {
		t.Fatalf("the intact bundle: %d %s", code, out)
	}
	t.Logf("%s", r.stdout)

	// Tampering, one way per copy.
	lines := func(dir string) []string {
		b, _ := os.ReadFile(filepath.Join(dir, "records.jsonl"))
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	tamper := func(name string, edit func([]string) []string, extra ...string) {
		t.Helper()
		dir := filepath.Join(t.TempDir(), name)
		if err := os.CopyFS(dir, os.DirFS(bundle)); err != nil {
			t.Fatal(err)
		}
		l := edit(lines(dir))
		_ = os.WriteFile(filepath.Join(dir, "records.jsonl"), []byte(strings.Join(l, "\n")+"\n"), 0o644)
		if out, code := verify(dir, extra...); code != 1 || !strings.Contains(out, "TAMPERED") {
			t.Errorf("%s: not detected: %d %s", name, code, out)
		} else {
			t.Logf("%s: %s", name, strings.TrimSpace(out))
		}
	}
	tamper("edit", func(l []string) []string {
		l[2] = strings.Replace(l[2], `"payments"`, `"paymentz"`, 1)
		return l
	})
	tamper("delete", func(l []string) []string { return slices.Delete(l, 3, 4) })
	// Removed, and the positions renumbered to hide the gap: the hash.
	tamper("delete-and-renumber", func(l []string) []string {
		l = slices.Delete(l, 3, 4)
		seqRE := regexp.MustCompile(`^\{"v":(\d+),"seq":(\d+),`)
		first, _ := strconv.Atoi(seqRE.FindStringSubmatch(l[0])[2])
		for i := range l {
			l[i] = seqRE.ReplaceAllString(l[i], fmt.Sprintf(`{"v":$1,"seq":%d,`, first+i))
		}
		return l
	})
	tamper("reorder", func(l []string) []string {
		l[2], l[3] = l[3], l[2]
		return l
	})
	tamper("truncate", func(l []string) []string { return l[:len(l)-3] })
	// A truncation that also rewrites the manifest is caught by the
	// checkpoint files the assessor holds.
	dir := filepath.Join(t.TempDir(), "truncate-and-lie")
	_ = os.CopyFS(dir, os.DirFS(bundle))
	l := lines(dir)
	_ = os.WriteFile(filepath.Join(dir, "records.jsonl"), []byte(strings.Join(l[:len(l)-2], "\n")+"\n"), 0o644)
	m, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
	var man map[string]any
	_ = json.Unmarshal(m, &man)
	man["records"].(map[string]any)["last"] = man["records"].(map[string]any)["last"].(float64) - 2
	man["period"].(map[string]any)["lastRecord"] = float64(0)
	m, _ = json.Marshal(man)
	_ = os.WriteFile(filepath.Join(dir, "manifest.json"), m, 0o644)
	if out, code := verify(dir, cpFiles...); code != 1 || !strings.Contains(out, "truncated") {
		t.Errorf("a truncation with a rewritten manifest, against the checkpoint files: %d %s", code, out)
	}
	// An approval whose signature was swapped.
	dir = filepath.Join(t.TempDir(), "approval")
	_ = os.CopyFS(dir, os.DirFS(bundle))
	ab, _ := os.ReadFile(filepath.Join(dir, "approvals.jsonl"))
	_ = os.WriteFile(filepath.Join(dir, "approvals.jsonl"), []byte(strings.Replace(string(ab), `"name":"bob"`, `"name":"cat"`, 1)), 0o644)
	if out, code := verify(dir); code != 1 || !strings.Contains(out, "signature does not verify") {
		t.Errorf("an approval's signer renamed: %d %s", code, out)
	}
}

// TestTLCPRecoverCommand: podkey tlcp recover is refused while dual
// control is off, and under it works only as an approved request, writing
// the key to a new 0600 file.
func TestTLCPRecoverCommand(t *testing.T) {
	e := keydtest.Start(t, nil)
	sock := "--socket=" + e.Opts.Socket
	dir := t.TempDir()
	if r := podkey(t, "", "issue", sock, "--object=link:tlcp", "--namespace=payments", "--service-account=payments"); r.code != 0 {
		t.Fatalf("issue: %+v", r)
	}
	serial := regexp.MustCompile(`escrow:([0-9a-f]+)`).FindStringSubmatch(strings.Join(e.AuditLines(), "\n"))
	if serial == nil {
		t.Fatal("no escrow in the audit")
	}
	out := filepath.Join(dir, "key.pem")
	if r := podkey(t, "", "tlcp", "recover", sock, serial[1], "--reason=case 1", "-o", out); r.code != command.ExitInvalid || !strings.Contains(r.stderr, "needs dual control") {
		t.Fatalf("recovery without a roster: %+v", r)
	}
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
	req := filepath.Join(dir, "recover.json")
	args := []string{"tlcp", "recover", sock, serial[1], "--reason=case 1", "-o", out}
	if r := podkey(t, "", append(args, "--request-out="+req, "--request-as=dan", "--request-key="+keyFile("dan"))...); r.code != 0 {
		t.Fatalf("request: %+v", r)
	}
	for _, a := range []string{"ann/key-admin", "bob/key-admin", "eve/security-officer"} {
		name, role, _ := strings.Cut(a, "/")
		if r := podkey(t, "", "approval", "sign", req, "--as="+name, "--role="+role, "--key="+keyFile(name)); r.code != 0 {
			t.Fatalf("sign: %+v", r)
		}
	}
	if r := podkey(t, "", append(args, "--approval="+req)...); r.code != 0 || !strings.Contains(r.stdout, "recovered the encryption key of "+serial[1]+" (pod payments/") {
		t.Fatalf("recover: %+v", r)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the key file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(out); !strings.HasPrefix(string(b), "-----BEGIN PRIVATE KEY-----") {
		t.Fatal("no key written")
	}
}
