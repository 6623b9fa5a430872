package podkeycmd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/hsmflags"
	"github.com/podkey/podkey/internal/host/atomicfile"
	"github.com/podkey/podkey/internal/keyd/approval"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func newStoreBackupCommand(cf *clientFlags) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "backup -o FILE",
		Short: "Copy a running keyd's bbolt store, consistently, without stopping it",
		Long: `backup asks keyd (local socket) for a copy of its store taken in one read
transaction while it serves, and writes it to FILE (mode 0600; written
aside and renamed, so FILE is never a partial copy). The copy holds
secrets only wrapped under the HSM's key-encryption key: it is useless
without the HSM's keys, which the HSM vendor's own backup covers. keyd
records the backup in its audit log (after the copy's last record).`,
		Example: `  podkey store backup -o /backup/keyd-$(date +%F).db`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return command.UsageError("-o FILE is required")
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			stream, err := admin.BackupStore(cmd.Context(), &keydv1.BackupStoreRequest{})
			if err != nil {
				return err
			}
			var size int64
			var last uint64
			var final *keydv1.BackupChunk
			complete := false
			sum := sha256.New()
			err = atomicfile.WriteFrom(out, func(w io.Writer) error {
				for {
					c, err := stream.Recv()
					if err == io.EOF {
						if !complete {
							return errors.New("the backup stream ended early; nothing was written")
						}
						return nil
					}
					if err != nil {
						return err
					}
					if len(c.Data) == 0 {
						complete, last, final = true, c.LastAuditSeq, c
						continue
					}
					sum.Write(c.Data)
					n, err := w.Write(c.Data)
					size += int64(n)
					if err != nil {
						return err
					}
				}
			})
			if err != nil {
				return err
			}
			t := backupTag{Version: 1, SHA256: hex.EncodeToString(sum.Sum(nil)), Size: size, LastAuditSeq: last,
				KeyGen: int(final.GetTagKeyGen()), MAC: final.GetTag()}
			if len(t.MAC) == 0 {
				return errors.New("keyd sent no tag for the backup (an older keyd): the backup was written but cannot be restored by this podkey")
			}
			data, _ := json.MarshalIndent(t, "", "  ")
			if err := atomicfile.Write(tagPath(out), data); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backed up keyd's store to %s: %d bytes, audit records 1..%d; its HSM tag in %s (keep both)\n", out, size, last, tagPath(out))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "the backup file to write")
	return cmd
}

// backupTag is the file beside a backup that the HSM's tag travels in.
type backupTag struct {
	Version      int    `json:"version"`
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
	LastAuditSeq uint64 `json:"lastAuditSeq"`
	KeyGen       int    `json:"keyGen"`
	MAC          []byte `json:"mac"`
}

func tagPath(backup string) string { return backup + ".tag" }

// checkBackup verifies the copy of backup from at file against its tag,
// with the HSM.
func checkBackup(ctx context.Context, keys audit.Keys, from, file string) (backupTag, error) {
	var t backupTag
	data, err := os.ReadFile(tagPath(from))
	if err != nil {
		return t, command.Exit(command.ExitNotFound, fmt.Errorf("the backup's HSM tag: %w (podkey store backup writes it beside the backup)", err))
	}
	if err := json.Unmarshal(data, &t); err != nil || t.Version != 1 {
		return t, command.Exit(command.ExitTampered, fmt.Errorf("%s is not a backup tag", tagPath(from)))
	}
	f, err := os.Open(file)
	if err != nil {
		return t, command.Exit(command.ExitNotFound, err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return t, err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if err := audit.CheckBackupTag(ctx, keys, sum, size, t.LastAuditSeq, t.KeyGen, t.MAC); err != nil {
		return t, command.Exit(command.ExitTampered, fmt.Errorf("nothing was restored: %w", err))
	}
	return t, nil
}

func newStoreRestoreCommand(af *approvalFlags) *cobra.Command {
	var (
		from, to string
		replace  bool
		hf       hsmflags.Flags
	)
	cmd := &cobra.Command{
		Use:   "restore --from BACKUP --store FILE",
		Short: "Put a backup in place of a stopped keyd's bbolt store, after verifying its audit chain",
		Long: `restore copies BACKUP beside FILE, checks the copy against the HSM tag
keyd wrote beside the backup (BACKUP.tag: an edited, truncated or foreign
backup is refused, exit 7), opens the copy, verifies its audit chain
with the HSM's audit key (the token must be reachable: --hsm-* flags or
their environment variables), and only then renames it over FILE. keyd
must be stopped: a store a running keyd holds is refused (exit 6). An
existing FILE is replaced only with --replace, and is kept as
FILE.replaced-<time>. Everything after the backup's last audit record is
lost: credentials issued since still verify (they are checked, not
looked up), but revocations, renewal orders, enrolled secrets and policy
changes made since are gone; see docs/operations.md, "Backup, restore, disaster recovery".`,
		Example: `  podkey store restore --from /backup/keyd-2026-11-30.db --store /var/lib/podkey/keyd.db --replace`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return command.UsageError("--from and --store are required")
			}
			return restoreStore(cmd, &hf, af, from, to, replace)
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the backup file ('podkey store backup')")
	cmd.Flags().StringVar(&to, "store", "", "the stopped keyd's store file (podkey-keyd --store)")
	cmd.Flags().BoolVar(&replace, "replace", false, "replace an existing store (kept as FILE.replaced-<time>)")
	hf.Register(cmd.Flags())
	return cmd
}

func restoreStore(cmd *cobra.Command, hf *hsmflags.Flags, af *approvalFlags, from, to string, replace bool) error {
	ctx := cmd.Context()
	src, err := os.Open(from)
	if err != nil {
		return command.Exit(command.ExitNotFound, err)
	}
	defer src.Close()
	exists := fileExists(to)
	if exists && !replace {
		return command.UsageError("%s exists: pass --replace to put the backup in its place (the old file is kept beside it)", to)
	}
	if exists {
		// A running keyd holds the file's lock: refuse before touching it.
		held, err := store.OpenBolt(to)
		if err != nil {
			return command.Exit(command.ExitUnavailable, fmt.Errorf("%s: %w (stop keyd first)", to, err))
		}
		held.Close()
	}
	tok, err := hf.Open()
	if err != nil {
		return err
	}
	defer tok.Close()
	keys := keyring.TokenAuditKeys(tok)
	staged := filepath.Join(filepath.Dir(to), "."+filepath.Base(to)+".restoring")
	defer os.Remove(staged)
	if err := atomicfile.WriteFrom(staged, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	}); err != nil {
		return err
	}
	// The copy that will be put in place is what is checked.
	if _, err := checkBackup(ctx, keys, from, staged); err != nil {
		return err
	}
	approved, err := approveRestore(ctx, tok, af, staged, to, exists)
	if err != nil {
		return err
	}
	st, err := store.OpenBolt(staged)
	if err != nil {
		return command.Exit(command.ExitInvalid, fmt.Errorf("%s is not a keyd store: %w", from, err))
	}
	if approved != nil {
		// Claimed and audited in the store that is put in place, with
		// every signature; the anchor below covers the record.
		err = auditRestore(ctx, st, keys, approved)
	}
	if err != nil {
		st.Close()
		return err
	}
	n, err := audit.Verify(ctx, st, keys)
	var anchor audit.Anchor
	if err == nil {
		anchor, err = audit.TailAnchor(ctx, st, keys, time.Now())
	}
	st.Close()
	if err != nil {
		return command.Exit(command.ExitTampered, fmt.Errorf("the backup's audit chain does not verify with this HSM, nothing was restored: %w", err))
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	putAside := func(path, what string) error {
		aside := fmt.Sprintf("%s.replaced-%s", path, stamp)
		if err := os.Rename(path, aside); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "kept the replaced %s as %s\n", what, aside)
		return nil
	}
	if exists {
		if err := putAside(to, "store"); err != nil {
			return err
		}
	}
	// A journal left beside a store that is gone (keyd killed, the file
	// lost) belongs to what is replaced, not to the backup: kept aside,
	// never applied to it.
	if j := store.JournalPath(to); fileExists(j) {
		if err := putAside(j, "store's journal"); err != nil {
			return err
		}
	}
	// The chain goes back to the backup's end: so must its anchor on the
	// HSM, or keyd would refuse the shorter chain as truncated. Moved
	// first: a crash before the rename leaves the longer store, which
	// the lower anchor accepts.
	if err := keyring.ResetAuditAnchor(ctx, tok, anchor); err != nil {
		return command.Exit(command.ExitUnavailable, fmt.Errorf("re-anchoring the audit chain on the HSM: %w", err))
	}
	// keyd starts its checkpoints' content hash again from the restored
	// chain (whose own checkpoint records still verify).
	if err := keyring.TokenCheckpoints(tok).Reset(ctx); err != nil {
		return command.Exit(command.ExitUnavailable, fmt.Errorf("resetting the audit checkpoint on the HSM: %w", err))
	}
	if err := os.Rename(staged, to); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "restored %s from %s: audit chain verified, %d records; everything after record %d is not in it\n", to, from, n, n)
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// approveRestore applies dual control to a restore, which keyd does not
// see (it is stopped): with a roster on the token, the restore needs a
// request for RestoreStore of exactly this backup (its SHA-256), approved
// by the roster's quorum, not executed before (the current store would
// hold its claim). It returns the verified request, or nil without a
// roster.
func approveRestore(ctx context.Context, tok *hsm.Token, af *approvalFlags, staged, current string, exists bool) (*restoreApproval, error) {
	roster, err := keyring.TokenRosters(tok).Load(ctx)
	if err != nil {
		return nil, command.Exit(command.ExitUnavailable, err)
	}
	if roster == nil {
		if af.approvalFile != "" {
			return nil, command.Exit(command.ExitInvalid, errors.New("dual control is not set up (no approval roster on the token): --approval has nothing to be checked against"))
		}
		return nil, nil
	}
	sum, err := fileSHA256(staged)
	if err != nil {
		return nil, err
	}
	params := fmt.Appendf(nil, `{"backupSha256":%q}`, sum)
	if af.requestOut != "" {
		return nil, af.writeRequest("RestoreStore", params)
	}
	if af.approvalFile == "" {
		return nil, command.Exit(command.ExitDenied, fmt.Errorf("dual control is on: a restore needs a request approved by %s (--request-out, then --approval)", roster.Rule("RestoreStore")))
	}
	doc, err := os.ReadFile(af.approvalFile)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, err)
	}
	now := time.Now()
	v, err := approval.Check(roster, doc, "RestoreStore", params, now)
	switch {
	case errors.Is(err, approval.ErrMalformed):
		return nil, command.Exit(command.ExitInvalid, err)
	case err != nil:
		return nil, command.Exit(command.ExitDenied, err)
	case v.BreakGlass:
		return nil, command.Exit(command.ExitDenied, errors.New("break-glass goes through keyd; a restore needs its quorum"))
	}
	if exists {
		st, err := store.OpenBolt(current)
		if err != nil {
			return nil, command.Exit(command.ExitUnavailable, err)
		}
		seen, err := st.NonceSeen(ctx, approval.ClaimKey(v.Request), now)
		st.Close()
		if err != nil {
			return nil, err
		}
		if seen {
			return nil, command.Exit(command.ExitDenied, fmt.Errorf("request %s was executed already: a request executes once", v.Request.ID))
		}
	}
	return &restoreApproval{v, roster.Version}, nil
}

type restoreApproval struct {
	v      *approval.Verified
	roster int
}

// auditRestore claims the request in the restored store and audits it
// there with every signature.
func auditRestore(ctx context.Context, st store.Store, keys audit.Keys, a *restoreApproval) error {
	log := audit.Open(st, keys)
	defer log.Close()
	return log.AppendNonce(ctx, audit.Record{Action: audit.ActionApproval, Result: audit.ResultOK, Objects: []string{"RestoreStore"},
		Approval: a.v.Evidence(a.roster)}, &store.Nonce{Key: approval.ClaimKey(a.v.Request), Until: a.v.Request.Expires})
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
