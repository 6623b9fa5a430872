package podkeycmd

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/hsmflags"
	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/keyring"
	"github.com/podkey/podkey/internal/keyd/store"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func newAuditCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Export and verify the tamper-evident audit log"}
	export := &cobra.Command{
		Use: "export", Short: "Print every audit record as JSON lines", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			stream, err := admin.ExportAudit(cmd.Context(), &keydv1.ExportAuditRequest{})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for {
				rec, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\n", rec.Json)
			}
		},
	}
	var (
		storePath, pgFile string
		hf                hsmflags.Flags
	)
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Prove the audit chain unbroken (through keyd, or offline with --store or --postgres-file)",
		Long: `verify recomputes every record's MAC with the HSM audit key and checks the
links between records. It exits 7 and names the first broken record if the
chain was altered. With --store it reads a stopped keyd's store file, with
--postgres-file the database of keyd replicas (running or not), and opens
the HSM token itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var (
				resp *keydv1.VerifyAuditResponse
				err  error
			)
			if storePath != "" || pgFile != "" {
				resp, err = verifyOffline(cmd.Context(), &hf, storePath, pgFile)
			} else {
				admin, done, derr := cf.admin()
				if derr != nil {
					return derr
				}
				defer done()
				resp, err = admin.VerifyAudit(cmd.Context(), &keydv1.VerifyAuditRequest{})
			}
			if err != nil {
				return err
			}
			if !resp.Intact {
				return command.Exit(command.ExitTampered, fmt.Errorf("audit chain broken at record %d (the %d before it verified): %s",
					resp.BrokenAt, resp.Records, resp.Reason))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "audit chain intact: %d records", resp.Records)
			if resp.Checkpoints > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "; %d signed checkpoints, the newest covering records 1..%d", resp.Checkpoints, resp.NewestCheckpoint)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	verify.Flags().StringVar(&storePath, "store", "", "verify this store file directly (keyd must be stopped)")
	verify.Flags().StringVar(&pgFile, "postgres-file", "", "verify the PostgreSQL database whose connection string this file holds")
	hf.Register(verify.Flags())
	cmd.AddCommand(export, verify, newAuditEvidenceCommand(cf))
	return cmd
}

func verifyOffline(ctx context.Context, hf *hsmflags.Flags, path, pgFile string) (*keydv1.VerifyAuditResponse, error) {
	if path != "" && pgFile != "" {
		return nil, command.UsageError("--store and --postgres-file exclude each other")
	}
	tok, err := hf.Open()
	if err != nil {
		return nil, err
	}
	defer tok.Close()
	var st store.Store
	if pgFile != "" {
		conn, err := store.ConnString(pgFile)
		if err != nil {
			return nil, command.UsageError("%v", err)
		}
		pg, err := store.OpenPostgres(ctx, conn, store.PostgresOptions{})
		if err != nil {
			return nil, command.Exit(command.ExitUnavailable, err)
		}
		st = pg
	} else {
		b, err := store.OpenBolt(path)
		if err != nil {
			return nil, command.Exit(command.ExitUnavailable, err)
		}
		st = b
	}
	defer st.Close()
	n, err := audit.VerifyAnchored(ctx, st, keyring.TokenAuditKeys(tok), keyring.TokenAuditAnchors(tok))
	var te *audit.TamperError
	switch {
	case errors.As(err, &te):
		return &keydv1.VerifyAuditResponse{Records: n, BrokenAt: te.Seq, Reason: te.Reason}, nil
	case errors.Is(err, audit.ErrTruncated):
		return &keydv1.VerifyAuditResponse{Records: n, BrokenAt: n + 1, Reason: err.Error()}, nil
	case err != nil:
		return nil, err
	}
	return &keydv1.VerifyAuditResponse{Records: n, Intact: true}, nil
}
