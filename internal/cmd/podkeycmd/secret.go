package podkeycmd

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/credential"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func splitRef(ref string) (string, string, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return "", "", command.UsageError("want NAMESPACE/NAME, got %q", ref)
	}
	return ns, name, nil
}

func newSecretCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Short: "Enroll static secrets (stored only wrapped under the HSM KEK)"}
	cmd.AddCommand(newSecretPutCommand(cf), newSecretListCommand(cf), newSecretDeleteCommand(cf))
	return cmd
}

func newSecretPutCommand(cf *clientFlags) *cobra.Command {
	var from string
	cmd := &cobra.Command{
		Use:   "put NAMESPACE/NAME",
		Short: "Enroll a value read from stdin or --from-file (never from the command line)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := splitRef(args[0])
			if err != nil {
				return err
			}
			var r io.Reader = cmd.InOrStdin()
			if from != "" {
				f, err := os.Open(from)
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			value, err := io.ReadAll(io.LimitReader(r, credential.MaxSecretSize+1))
			if err != nil {
				return err
			}
			defer clear(value)
			if len(value) > credential.MaxSecretSize {
				return command.Exit(command.ExitInvalid, fmt.Errorf("value is larger than %d bytes; nothing stored", credential.MaxSecretSize))
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			info, err := admin.PutSecret(cmd.Context(), &keydv1.PutSecretRequest{Namespace: ns, Name: name, Value: value})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled %s/%s version %d (%d bytes, wrapped)\n", info.Namespace, info.Name, info.Version, info.Size)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from-file", "", "read the value from this file instead of stdin")
	return cmd
}

func newSecretListCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list [NAMESPACE]",
		Short: "List enrolled secrets (names and sizes, never values)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns := ""
			if len(args) == 1 {
				ns = args[0]
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := admin.ListSecrets(cmd.Context(), &keydv1.ListSecretsRequest{Namespace: ns})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAMESPACE\tNAME\tVERSION\tSIZE\tCREATED")
			for _, s := range resp.Secrets {
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\n", s.Namespace, s.Name, s.Version, s.Size, s.Created.AsTime().Format("2006-01-02T15:04:05Z"))
			}
			return w.Flush()
		},
	}
}

func newSecretDeleteCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAMESPACE/NAME",
		Short: "Delete an enrolled secret",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := splitRef(args[0])
			if err != nil {
				return err
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := admin.DeleteSecret(cmd.Context(), &keydv1.DeleteSecretRequest{Namespace: ns, Name: name}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s/%s\n", ns, name)
			return nil
		},
	}
}
