package podkeycmd

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/hsmflags"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
)

func newStoreCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "Back up, restore and move keyd's state"}
	var (
		from, pgFile string
		hf           hsmflags.Flags
	)
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Copy a stopped keyd's bbolt store into an empty PostgreSQL database",
		Long: `migrate verifies the audit chain of a bbolt store, then copies everything
the store holds (the policy, enrolled secrets, revocations, renewals, pod
bindings, signed-request nonces and the audit log) into an empty PostgreSQL
database in one transaction, for moving from one keyd replica to several.
keyd must be stopped (it holds the file). The copied chain is read back from
the database and verified again. Both checks use the HSM's audit key, so
the token must be reachable (--hsm-* flags or their environment variables).
The connection string is read from --postgres-file or $` + store.PostgresURLEnv + `,
never from a flag's value.`,
		Example: `  podkey store migrate --from /var/lib/podkey/keyd.db --postgres-file /etc/podkey/postgres`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return command.UsageError("--from (the bbolt store file) is required")
			}
			conn, err := store.ConnString(pgFile)
			if err != nil {
				return command.UsageError("%v", err)
			}
			if conn == "" {
				return command.UsageError("--postgres-file or $%s is required", store.PostgresURLEnv)
			}
			return migrateStore(cmd, &hf, from, conn)
		},
	}
	migrate.Flags().StringVar(&from, "from", "", "the bbolt store file of a stopped keyd")
	migrate.Flags().StringVar(&pgFile, "postgres-file", "", "file holding the destination's PostgreSQL connection string (or $"+store.PostgresURLEnv+")")
	hf.Register(migrate.Flags())
	cmd.AddCommand(migrate, newStoreBackupCommand(cf), newStoreRestoreCommand(&cf.approval))
	return cmd
}

func migrateStore(cmd *cobra.Command, hf *hsmflags.Flags, from, conn string) error {
	ctx := cmd.Context()
	tok, err := hf.Open()
	if err != nil {
		return err
	}
	defer tok.Close()
	src, err := store.OpenBolt(from)
	if err != nil {
		return command.Exit(command.ExitUnavailable, fmt.Errorf("%w (is keyd still running on it?)", err))
	}
	defer src.Close()
	mac := keyring.TokenAuditKeys(tok)
	// A broken chain is not carried over as if it were sound.
	if _, err := audit.VerifyAnchored(ctx, src, mac, keyring.TokenAuditAnchors(tok)); err != nil {
		return command.Exit(command.ExitTampered, fmt.Errorf("the source's audit chain does not verify, nothing was copied: %w", err))
	}
	st, err := src.State(ctx)
	if err != nil {
		return err
	}
	dst, err := store.OpenPostgres(ctx, conn, store.PostgresOptions{})
	if err != nil {
		return command.Exit(command.ExitUnavailable, err)
	}
	defer dst.Close()
	n, err := dst.Import(ctx, st, func(fn func(store.AuditEntry) error) error { return src.ScanAudit(ctx, 1, fn) })
	switch {
	case errors.Is(err, store.ErrNotEmpty):
		return command.Exit(command.ExitUsage, fmt.Errorf("%w: migrate only into a new database; nothing was written", err))
	case errors.Is(err, store.ErrUnavailable):
		return command.Exit(command.ExitUnavailable, fmt.Errorf("%w; nothing was written", err))
	case err != nil:
		return fmt.Errorf("%w; nothing was written", err)
	}
	verified, err := audit.VerifyAnchored(ctx, dst, mac, keyring.TokenAuditAnchors(tok))
	if err != nil {
		return command.Exit(command.ExitTampered, fmt.Errorf("the audit chain copied into PostgreSQL does not verify: %w", err))
	}
	out := cmd.OutOrStdout()
	policy := "none"
	if st.Policy != nil {
		policy = "1"
	}
	fmt.Fprintf(out, "copied into PostgreSQL: policy %s, secrets %d, revocations %d, renewals %d, pod bindings %d, nonces %d, audit records %d\n",
		policy, len(st.Secrets), len(st.Revocations), len(st.Renewals), len(st.Bindings), len(st.Nonces), n)
	fmt.Fprintf(out, "audit chain verified in PostgreSQL: %d records\n", verified)
	return nil
}
