package bench_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podkey/podkey/internal/keyd/bench"
	"github.com/podkey/podkey/internal/keyd/dbcred/dbcredtest"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keyring/keyringtest"
)

// TestRunProducesEveryRow runs the bench briefly against a real token: it
// checks the table's completeness and that nothing failed, not speed.
func TestRunProducesEveryRow(t *testing.T) { hsmtest.Each(t, testRunProducesEveryRow) }

func testRunProducesEveryRow(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	cfg := keyringtest.TokenOn(t, m)
	var out bytes.Buffer
	res, err := bench.Run(ctx, bench.Options{HSM: cfg, Duration: 50 * time.Millisecond, Concurrency: []int{2}}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 6+10+2 { // raw operations, kinds (tlcp among them), verification
		t.Fatalf("%d rows", len(res))
	}
	for _, r := range res {
		if r.Errors != 0 || r.PerSecond <= 0 || r.CPU <= 0 {
			t.Errorf("%s: %d errors (the first: %v), %.0f/s, %s CPU per call", r.Name, r.Errors, r.FirstError, r.PerSecond, r.CPU)
		}
		if r.Limit != "" && r.LimitCPU <= 0 {
			t.Errorf("%s: no CPU for %s", r.Name, r.Limit)
		}
	}
	if !strings.Contains(out.String(), "issue certificate gm") || !strings.Contains(out.String(), "issue tlcp pair") || !strings.Contains(out.String(), "verify signed request (durable nonce)") ||
		!strings.Contains(out.String(), "CPU beyond it") {
		t.Fatalf("table:\n%s", out.String())
	}
	// On the SM module the gm rows compare with the module's own SM
	// operations.
	for _, raw := range []string{"raw HSM SM2 sign", "raw HSM HMAC-SM3", "raw HSM SM4-GCM encrypt"} {
		if strings.Contains(out.String(), raw) != (m.Name == "sm") {
			t.Errorf("%s on %s:\n%s", raw, m.Name, out.String())
		}
	}
}

// TestDatabaseRows adds a real PostgreSQL: a login for each new pod beside
// an API key, and every login revoked and dropped before the run ends.
func TestDatabaseRows(t *testing.T) {
	ctx := context.Background()
	tg := dbcredtest.Postgres(t)
	var out bytes.Buffer
	res, err := bench.Run(ctx, bench.Options{HSM: keyringtest.Token(t), Duration: 100 * time.Millisecond, Concurrency: []int{4},
		Database: &bench.Database{Engine: tg.Engine, GroupRole: "app_rw", Admin: tg.Admin}}, &out)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bench.Result{}
	for _, r := range res {
		rows[r.Name] = r
	}
	issue, revoke := rows["issue database login (new pod)"], rows["revoke database login (reaper: sessions ended, login dropped)"]
	if issue.Errors != 0 || issue.PerSecond <= 0 || issue.Limit != "issue apiKey intl" || issue.LimitRate <= 0 || revoke.PerSecond <= 0 {
		t.Fatalf("database rows: %+v %+v\n%s", issue, revoke, out.String())
	}
	if left := tg.Logins(t); len(left) != 0 {
		t.Fatalf("%d logins left after the bench", len(left))
	}
	t.Logf("\n%s", out.String())
}
