package podkeycmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/audit"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/token/jwks"
)

// EvidenceFormat names the layout of an evidence bundle (docs/compliance.md).
const EvidenceFormat = "podkey-evidence-v1"

// lifecycleActions are the records of key and control life cycles.
var lifecycleActions = []string{audit.ActionKeyRotate, audit.ActionKeyRetire, audit.ActionImageKeyCreate, audit.ActionStoreBackup,
	audit.ActionPolicySet, audit.ActionSecretPut, audit.ActionSecretDelete, audit.ActionRenew,
	audit.ActionRosterSet, audit.ActionApproval, audit.ActionBreakGlass}

type evidenceRecord struct {
	line string
	rec  audit.Record
}

func newAuditEvidenceCommand(cf *clientFlags) *cobra.Command {
	var (
		from, to string
		out      string
	)
	cmd := &cobra.Command{
		Use:   "evidence -o DIR [--from TIME] [--to TIME]",
		Short: "Export what an assessor verifies offline: records, signed checkpoints, keys, roster, approvals, life-cycle events",
		Long: `evidence has keyd append a signed checkpoint, then writes into DIR the audit
records of the period (from the last checkpoint before it, so that the
content hash can be recomputed from a signed value, to the first
checkpoint after it), the checkpoints, the public keys that signed them
with where the HSM uses each, the approval roster, the approvals and key
life-cycle events of the period, keyd's status and its own verification,
and a README mapping GB/T 39786-2021 requirements to the files.
hack/evidence/verify.py verifies the bundle without podkey.`,
		Example: `  podkey audit evidence --from 2026-10-01T00:00:00Z --to 2026-12-31T23:59:59Z -o evidence-2026Q4`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return command.UsageError("-o DIR is required")
			}
			var period [2]time.Time
			for i, s := range []string{from, to} {
				if s == "" {
					continue
				}
				t, err := time.Parse(time.RFC3339, s)
				if err != nil {
					return command.UsageError("--from/--to: want RFC 3339 times, got %q", s)
				}
				period[i] = t
			}
			if period[1].IsZero() {
				period[1] = time.Now().UTC()
			}
			if entries, err := os.ReadDir(out); err == nil && len(entries) > 0 {
				return command.UsageError("%s exists and is not empty", out)
			}
			return writeEvidence(cmd, cf, out, period)
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "start of the period, RFC 3339 (default: the first record)")
	cmd.Flags().StringVar(&to, "to", "", "end of the period, RFC 3339 (default: now)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "the directory to create")
	return cmd
}

func writeEvidence(cmd *cobra.Command, cf *clientFlags, dir string, period [2]time.Time) error {
	ctx := cmd.Context()
	admin, done, err := cf.admin()
	if err != nil {
		return err
	}
	defer done()
	// A checkpoint now: the period's tail is covered by a signature.
	if _, err := admin.CheckpointAudit(ctx, &keydv1.CheckpointAuditRequest{}); err != nil {
		return err
	}
	stream, err := admin.ExportAudit(ctx, &keydv1.ExportAuditRequest{})
	if err != nil {
		return err
	}
	var all []evidenceRecord
	for {
		rec, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		var r audit.Record
		if err := json.Unmarshal(rec.Json, &r); err != nil {
			return fmt.Errorf("audit record %d unreadable: %w", len(all)+1, err)
		}
		all = append(all, evidenceRecord{string(rec.Json), r})
	}
	if len(all) == 0 {
		return command.Exit(command.ExitNotFound, errors.New("the audit log is empty"))
	}
	// The period's records: [first, last] (1-based).
	first, last := uint64(0), uint64(0)
	for _, e := range all {
		if !e.rec.Time.Before(period[0]) && !e.rec.Time.After(period[1]) {
			if first == 0 {
				first = e.rec.Seq
			}
			last = e.rec.Seq
		}
	}
	if first == 0 {
		return command.Exit(command.ExitNotFound, errors.New("no audit record in the period"))
	}
	// The bundle's start: just after the newest checkpoint covering less
	// than the period (its hash is the starting value); its end: the
	// first checkpoint record covering the period's last record.
	start := audit.Checkpoint{}
	startAt := uint64(0)
	end := uint64(0)
	for _, e := range all {
		c := e.rec.Checkpoint
		if c == nil {
			continue
		}
		if c.Seq < first && c.Seq >= start.Seq {
			start, startAt = *c, e.rec.Seq
		}
		if end == 0 && c.Seq >= last {
			end = e.rec.Seq
		}
	}
	if end == 0 {
		return command.Exit(command.ExitError, errors.New("no signed checkpoint covers the period's end (keyd's checkpoint failed?)"))
	}
	end = max(end, startAt) // the starting checkpoint is in the bundle, to be verified
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	write := func(name string, b []byte) error { return os.WriteFile(filepath.Join(dir, name), b, 0o644) }
	writeJSON := func(name string, v any) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		return write(name, append(b, '\n'))
	}
	jsonl := func(name string, keep func(evidenceRecord) bool, from, to uint64) (int, error) {
		var b strings.Builder
		n := 0
		for _, e := range all[from-1 : to] {
			if keep(e) {
				b.WriteString(e.line + "\n")
				n++
			}
		}
		return n, write(name, []byte(b.String()))
	}
	bundleFirst := start.Seq + 1
	if _, err := jsonl("records.jsonl", func(evidenceRecord) bool { return true }, bundleFirst, end); err != nil {
		return err
	}
	nApprovals, err := jsonl("approvals.jsonl", func(e evidenceRecord) bool { return e.rec.Approval != nil }, first, last)
	if err != nil {
		return err
	}
	nLife, err := jsonl("lifecycle.jsonl", func(e evidenceRecord) bool { return slices.Contains(lifecycleActions, e.rec.Action) }, first, last)
	if err != nil {
		return err
	}
	var cps []audit.Checkpoint
	for _, e := range all[bundleFirst-1 : end] {
		if e.rec.Checkpoint != nil {
			cps = append(cps, *e.rec.Checkpoint)
		}
	}
	if err := writeJSON("checkpoints.json", cps); err != nil {
		return err
	}
	manifest := map[string]any{
		"format":  EvidenceFormat,
		"created": time.Now().UTC().Format(time.RFC3339),
		"period":  map[string]any{"from": period[0], "to": period[1], "firstRecord": first, "lastRecord": last},
		"records": map[string]any{"first": bundleFirst, "last": end},
		// The content hash before the bundle's first record: a signed
		// checkpoint's (in records.jsonl at checkpointRecord), or the
		// hash's start value at record 0.
		"start": map[string]any{"seq": start.Seq, "hash": start.Hash, "alg": start.Alg, "checkpointRecord": startAt},
	}
	if err := writeJSON("manifest.json", manifest); err != nil {
		return err
	}
	// Keys: every token-signing key keyd holds, with where the HSM uses it.
	st, err := admin.Status(ctx, &keydv1.StatusRequest{})
	if err != nil {
		return err
	}
	tk, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.TokenKeysResponse, error) {
		return k.TokenKeys(ctx, &keydv1.TokenKeysRequest{})
	})
	if err != nil {
		return err
	}
	set, err := jwks.Parse(tk.Jwks)
	if err != nil {
		return err
	}
	where := map[string]string{}
	for _, kg := range st.Keys {
		if kg.Purpose != "jwt" {
			continue
		}
		for i, g := range kg.Generations {
			if i < len(kg.Where) {
				where[fmt.Sprintf("podkey-jwt-%s-g%d", kg.Suite, g)] = kg.Where[i]
			}
		}
	}
	var keys []map[string]any
	for _, k := range set.Keys {
		s, pub, err := k.Public()
		if err != nil {
			return err
		}
		pemText, err := approval.MarshalPublicKey(s, pub)
		if err != nil {
			return err
		}
		w := where[k.Kid]
		entry := map[string]any{"kid": k.Kid, "suite": s, "publicKey": pemText, "where": w,
			"token": map[string]string{"label": st.TokenLabel, "model": st.TokenModel}}
		if strings.HasPrefix(w, "inside the module") {
			// As podkey hsm init generates root keys: CKA_SENSITIVE true,
			// CKA_EXTRACTABLE false, token objects.
			entry["inModule"], entry["sensitive"], entry["extractable"] = true, true, false
		} else {
			entry["inModule"], entry["wrapped"] = false, "under the module's key-encryption key; unwrapped only into keyd's locked memory"
		}
		keys = append(keys, entry)
	}
	if err := writeJSON("keys.json", keys); err != nil {
		return err
	}
	roster, err := admin.GetRoster(ctx, &keydv1.GetRosterRequest{})
	switch {
	case status.Code(err) == codes.NotFound:
		err = writeJSON("roster.json", map[string]any{"dualControl": false})
	case err == nil:
		err = write("roster.json", roster.Yaml)
	}
	if err != nil {
		return err
	}
	v, err := admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
	if err != nil {
		return err
	}
	if err := writeJSON("status.json", map[string]any{"keyd": st, "verify": v}); err != nil {
		return err
	}
	if err := write("README.md", []byte(evidenceReadme(manifest, len(cps), nApprovals, nLife))); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "evidence for records %d..%d (the period's %d..%d) in %s: %d signed checkpoints, %d approvals, %d life-cycle events; keyd's own verification: intact=%v\n"+
		"verify offline: python3 hack/evidence/verify.py %s\n", bundleFirst, end, first, last, dir, len(cps), nApprovals, nLife, v.Intact, dir)
	return nil
}

// evidenceReadme is the bundle's README: what each file is, and which
// GB/T 39786-2021 level-3 requirement it evidences.
func evidenceReadme(manifest map[string]any, checkpoints, approvals, lifecycle int) string {
	m, _ := json.MarshalIndent(manifest, "", "  ")
	return fmt.Sprintf(`# podkey audit evidence (%s)

Produced by `+"`podkey audit evidence`"+`. Verify it without podkey:

    python3 hack/evidence/verify.py THIS_DIRECTORY [--checkpoint FILE ...]

(the verifier is plain Python 3: SM3/SHA-256 from hashlib, SM2 and ECDSA
P-256 verification written out in it; pass the checkpoint files you
received from keyd's --audit-checkpoint-dir to show nothing was cut off
after them.) First compare the key fingerprints in keys.json with the
ones you obtained independently (keyd's JWK Set, an earlier assessment).

| file | what it holds |
|---|---|
| manifest.json | the period, the bundle's record range, the signed content hash it starts from |
| records.jsonl | every audit record of the range, exactly as stored (hashed as such) |
| checkpoints.json | the %d HSM-signed checkpoints in the range (also inside records.jsonl) |
| keys.json | the public keys that sign checkpoints and tokens, where the HSM uses each (inside the module, or wrapped under its KEK) |
| roster.json | the dual-control roster: people, roles, public keys, quorum rules, break-glass |
| approvals.jsonl | the %d approved (or refused) sensitive operations of the period, with every signature |
| lifecycle.jsonl | the %d key life-cycle and control events of the period (rotation, retirement, creation, backup, policy, secrets, renewals, roster, break-glass) |
| status.json | keyd's version, token, key generations, and its own verification of the whole chain |

## GB/T 39786-2021 level 3: what these files evidence

| requirement | evidence |
|---|---|
| 设备和计算安全 — 日志记录完整性 (integrity of logs, by cryptography) | records.jsonl + checkpoints.json + keys.json: the verifier recomputes the SM3/SHA-256 content hash and checks every SM2/ECDSA checkpoint signature |
| 应用和数据安全 — 不可否认性 (non-repudiation of operations) | approvals.jsonl: each sensitive operation carries its requester's and approvers' signatures over the request |
| 人员管理 — 关键岗位 (key administrator, operator, auditor) and 多人共管 (shared control) | roster.json (roles, conflicting roles refused by keyd) + approvals.jsonl (quorum per operation) |
| 人员管理 — 审计员不兼任 (the auditor holds no other post) | roster.json: keyd refuses a roster that gives an auditor another role |
| 密钥管理 — 生成、存储、使用、更新、归档、销毁 (key life cycle) | lifecycle.jsonl (rotation, retirement, creation) + keys.json (where each key is used) |
| 应急处置 (emergency handling) | lifecycle.jsonl: break-glass uses, each an incident; re-arming is an approved roster change |

What stays the operator's duty (physical security, the HSM's certification,
trusted time, staff training and vetting, shipping checkpoint files off the
host) is listed in docs/compliance.md.

## manifest.json

%s
`, EvidenceFormat, checkpoints, approvals, lifecycle, m)
}
