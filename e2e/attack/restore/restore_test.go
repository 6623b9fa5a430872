// Package restore tampers with backups of keyd's store before they are
// restored.
package restore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/podkeycmd"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func podkey(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code := command.Run(podkeycmd.NewCommand(), args, &out, &out)
	return code, out.String()
}

// state is what authorizes in a store: its policy, and whether the
// revoked pod is revoked.
func state(t *testing.T, path string) string {
	t.Helper()
	st, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pol, _ := st.Policy(context.Background())
	at, _ := st.RevokedAt(context.Background(), "payments", "payments", "uid-revoked", time.Now())
	return string(pol) + " revoked:" + at.String()
}

// A backup edited after keyd wrote it (an allow-all rule added, a
// revocation deleted: neither is in the audit chain, which still
// verifies) is refused by restore before anything is replaced; the
// backup as written restores.
func TestEditedBackupIsNotRestored(t *testing.T) {
	ctx := context.Background()
	e := keydtest.Start(t, nil)
	pod := &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p", PodUid: "uid-revoked", NodeName: "node-1"}
	if _, err := e.Keyd.Revoke(ctx, &keydv1.RevokeRequest{Pod: pod}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	backup := filepath.Join(dir, "keyd.backup")
	if code, out := podkey(t, "store", "backup", "--socket="+e.Opts.Socket, "-o", backup); code != 0 {
		t.Fatalf("backup: %d %s", code, out)
	}
	e.Stop()
	original := state(t, e.StorePath)
	pinFile := filepath.Join(dir, "pin")
	_ = os.WriteFile(pinFile, []byte(hsmtest.PIN+"\n"), 0o600)
	hsmArgs := []string{"--hsm-token=" + e.HSM.TokenLabel, "--hsm-pin-file=" + pinFile}
	tok, err := hsm.Open(e.HSM)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()

	for name, edit := range map[string]func(st *store.Bolt) error{
		"an allow-all rule": func(st *store.Bolt) error {
			return st.SetPolicy(ctx, []byte("version: v1\nrules:\n- {namespace: \"*\", serviceAccount: \"*\", objects: [\"*\"]}\n"))
		},
		"a revocation deleted": func(st *store.Bolt) error {
			_, err := st.PruneRevocations(ctx, time.Now().Add(365*24*time.Hour))
			return err
		},
	} {
		edited := filepath.Join(dir, "edited.backup")
		data, _ := os.ReadFile(backup)
		_ = os.WriteFile(edited, data, 0o600)
		tag, _ := os.ReadFile(backup + ".tag")
		_ = os.WriteFile(edited+".tag", tag, 0o600)
		st, err := store.OpenBolt(edited)
		if err != nil {
			t.Fatal(err)
		}
		if err := edit(st); err != nil {
			t.Fatal(err)
		}
		if n, err := audit.Verify(ctx, st, keyring.TokenAuditKeys(tok)); err != nil || n == 0 {
			t.Fatalf("%s: the edited backup's chain should still verify: %d %v", name, n, err)
		}
		st.Close()
		code, out := podkey(t, append([]string{"store", "restore", "--from", edited, "--store", e.StorePath, "--replace"}, hsmArgs...)...)
		if code != command.ExitTampered || !strings.Contains(out, "HSM tag does not match") {
			t.Fatalf("%s: restore of an edited backup: %d %s", name, code, out)
		}
		if got := state(t, e.StorePath); got != original {
			t.Fatalf("%s: a refused restore changed the store: %s, was %s", name, got, original)
		}
	}
	if code, out := podkey(t, append([]string{"store", "restore", "--from", backup, "--store", e.StorePath, "--replace"}, hsmArgs...)...); code != 0 {
		t.Fatalf("restore of the backup as written: %d %s", code, out)
	}
	e.Run()
	if _, err := e.Keyd.Issue(ctx, &keydv1.IssueRequest{Pod: pod, Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}}); err != nil {
		t.Fatalf("keyd after the restore: %v", err)
	}
}
