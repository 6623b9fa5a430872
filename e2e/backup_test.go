package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podkey/podkey/internal/keyd/audit"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

// TestDisasterRecovery: podkey-keyd as a process on SoftHSM2; credentials
// issued and a pod revoked; `podkey store backup` while keyd serves (and
// issues); more issued, a second pod revoked, a secret enrolled; keyd
// stopped, its store destroyed, `podkey store restore` from the backup,
// keyd started. What survives and what is lost, as docs/operations.md's runbook
// says: the audit chain verifies and ends exactly at the backup's last
// record (plus the restore's own records); the revocation made before the
// backup holds; the one made after it is lost, so that pod's key verifies
// again until the runbook's `podkey renew` refuses everything issued
// before the restore; a key issued after the backup still verifies
// (keys are checked, not looked up); the secret enrolled after it is gone.
func TestDisasterRecovery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWorld(t)
	w.startKeyd(ctx)
	podkey := func(args ...string) (string, int) {
		t.Helper()
		return w.run("", "podkey", args...)
	}
	keyd := func() keydv1.KeydClient {
		conn, err := keydclient.Dial(keydclient.Options{Socket: w.sock()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return keydv1.NewKeydClient(conn)
	}
	k := keyd()
	issue := func(k keydv1.KeydClient, uid string) (apiKeyFile, []byte) {
		t.Helper()
		resp, err := k.Issue(ctx, &keydv1.IssueRequest{
			Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"},
			Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
		if err != nil {
			t.Fatal(err)
		}
		ak := resp.Credentials[0].GetApiKey()
		return apiKeyFile{AccessKeyID: ak.AccessKeyId}, ak.SecretKey
	}
	revoke := func(k keydv1.KeydClient, uid string) {
		t.Helper()
		if _, err := k.Revoke(ctx, &keydv1.RevokeRequest{Pod: &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "p-" + uid, PodUid: uid, NodeName: "node-1"}}); err != nil {
			t.Fatal(err)
		}
	}
	revokedBefore, secretRB := issue(k, "revoked-before")
	revoke(k, "revoked-before")
	kept, secretKept := issue(k, "kept")

	// The backup, taken while callers keep issuing.
	backup := filepath.Join(w.dir, "backup", "keyd.db")
	_ = os.MkdirAll(filepath.Dir(backup), 0o700)
	stop := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				_, _ = k.Issue(ctx, &keydv1.IssueRequest{
					Pod:     &keydv1.PodIdentity{Namespace: "payments", ServiceAccount: "payments", PodName: "during", PodUid: fmt.Sprintf("during-%d", i), NodeName: "node-1"},
					Objects: []*keydv1.ObjectRequest{{Name: "ledger-api", Kind: "apiKey"}}})
			}
		}
	}()
	out, code := podkey("store", "backup", "-o", backup)
	close(stop)
	if code != 0 || !strings.Contains(out, "backed up keyd's store to "+backup) {
		t.Fatalf("backup: %d %s", code, out)
	}
	t.Logf("%s", out)
	if fi, err := os.Stat(backup); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	var lastInBackup int
	if _, err := fmt.Sscanf(out[strings.Index(out, "audit records 1..")+len("audit records 1.."):], "%d", &lastInBackup); err != nil || lastInBackup < 4 {
		t.Fatalf("backup's last audit record: %v (%s)", err, out)
	}

	// After the backup: a pod revoked, a key issued, a secret enrolled.
	revokedAfter, secretRA := issue(k, "revoked-after")
	revoke(k, "revoked-after")
	issuedAfter, secretIA := issue(k, "issued-after")
	if out, code := w.run("late-secret-value", "podkey", "secret", "put", "payments/late"); code != 0 {
		t.Fatal(out)
	}
	if err := verifyAPIKey(ctx, k, revokedAfter, secretRA); err == nil {
		t.Fatal("the pod revoked after the backup still verifies before the disaster")
	}

	// The disaster: keyd stops, its store is gone.
	w.stopKeyd()
	store := filepath.Join(w.dir, "keyd.db")
	// A running keyd's store is never replaced.
	w.startKeyd(ctx)
	if out, code := podkey("store", "restore", "--from", backup, "--store", store, "--replace"); code != 6 {
		t.Fatalf("restore under a running keyd: %d %s", code, out)
	}
	w.stopKeyd()
	if err := os.Remove(store); err != nil {
		t.Fatal(err)
	}
	// A damaged backup is refused and nothing is put in place: it is not
	// what its HSM tag authenticates (and without a tag it is refused too).
	bad := filepath.Join(w.dir, "backup", "bad.db")
	_ = os.WriteFile(bad, []byte("not a store"), 0o600)
	if out, code := podkey("store", "restore", "--from", bad, "--store", store); code != 5 {
		t.Fatalf("restore of a backup without its tag: %d %s", code, out)
	}
	tag, _ := os.ReadFile(backup + ".tag")
	_ = os.WriteFile(bad+".tag", tag, 0o600)
	if out, code := podkey("store", "restore", "--from", bad, "--store", store); code != 7 {
		t.Fatalf("restore of a damaged backup: %d %s", code, out)
	}
	if _, err := os.Stat(store); err == nil {
		t.Fatal("a refused restore left a store in place")
	}
	out, code = podkey("store", "restore", "--from", backup, "--store", store)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("audit chain verified, %d records", lastInBackup)) {
		t.Fatalf("restore: %d %s", code, out)
	}
	t.Logf("%s", out)
	w.startKeyd(ctx)
	k = keyd()

	// What survives.
	if err := verifyAPIKey(ctx, k, revokedBefore, secretRB); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("the revocation made before the backup was lost: %v", err)
	}
	for name, c := range map[string]struct {
		ak     apiKeyFile
		secret []byte
	}{"kept": {kept, secretKept}, "issued after the backup": {issuedAfter, secretIA}} {
		if err := verifyAPIKey(ctx, k, c.ak, c.secret); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// What is lost: the later revocation and the later secret.
	if err := verifyAPIKey(ctx, k, revokedAfter, secretRA); err != nil {
		t.Fatalf("expected the revocation made after the backup to be lost, got %v", err)
	}
	if out, _ := podkey("secret", "list"); strings.Contains(out, "late") {
		t.Fatalf("a secret enrolled after the backup came back:\n%s", out)
	}
	// The chain ends where the backup ended, then goes on.
	out, code = podkey("audit", "verify")
	if code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("audit verify after restore: %d %s", code, out)
	}
	// The restored log holds the backup's records, then what keyd wrote
	// since it started again: no revocation of the later pod, no record
	// of the later secret.
	export, _ := podkey("audit", "export")
	var seqs []uint64
	for _, l := range strings.Split(strings.TrimSpace(export), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, r.Seq)
		if (r.Action == audit.ActionRevoke && r.PodUID == "revoked-after") || r.Action == audit.ActionSecretPut {
			t.Fatalf("a record made after the backup is in the restored log: %s", l)
		}
	}
	for i, sq := range seqs {
		if sq != uint64(i+1) {
			t.Fatalf("record %d has seq %d: the chain has a gap", i+1, sq)
		}
	}
	// The runbook: refuse everything issued before the restore.
	if out, code := podkey("renew", "--namespace", "payments"); code != 0 {
		t.Fatalf("renew: %s", out)
	}
	if err := verifyAPIKey(ctx, k, revokedAfter, secretRA); err == nil {
		t.Fatal("after the runbook's renewal, the lost revocation's key still verifies")
	}
	fresh, secretFresh := issue(k, "fresh")
	if err := verifyAPIKey(ctx, k, fresh, secretFresh); err != nil {
		t.Fatalf("a key issued after the renewal: %v", err)
	}
}
