package podkeycmd

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func newTLCPCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "tlcp", Short: "TLCP pairs: recover an escrowed encryption key (dual control only)"}
	var reason, out string
	recover := &cobra.Command{
		Use:   "recover SERIAL --reason R -o FILE",
		Short: "Recover the escrowed encryption key of a TLCP pair by its encryption certificate's serial (hex), as an approved request",
		Long: `recover asks keyd for the escrowed encryption private key of a TLCP pair,
for lawful recovery of data encrypted to it. keyd answers only an approved
request (podkey --request-out ... tlcp recover ..., approvals, then
--approval), and refuses outright while dual control is off. The key is
written to FILE (mode 0600, created new), never printed; the recovery is
audited with its reason and every signature.`,
		Example: `  podkey --request-out r.json --request-as dan --request-key dan.key tlcp recover 5f3a... --reason "case 2026-114" -o key.pem`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" || out == "" {
				return command.UsageError("--reason and -o are required")
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			k, err := admin.RecoverEscrow(cmd.Context(), &keydv1.RecoverEscrowRequest{Serial: args[0], Reason: reason})
			if err != nil {
				return err
			}
			defer clear(k.KeyPem)
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return command.Exit(command.ExitUsage, err)
			}
			if _, err := f.Write(k.KeyPem); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "recovered the encryption key of %s (pod %s/%s, uid %s, service account %s; certificate valid until %s) into %s\n",
				k.Serial, k.Namespace, k.Pod, k.PodUid, k.ServiceAccount, k.NotAfter.AsTime().Format("2006-01-02T15:04:05Z"), out)
			return nil
		},
	}
	recover.Flags().StringVar(&reason, "reason", "", "why (audited)")
	recover.Flags().StringVarP(&out, "out", "o", "", "the file to create for the key")
	cmd.AddCommand(recover)
	return cmd
}
