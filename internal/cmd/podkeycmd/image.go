package podkeycmd

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/image/imageenc"
)

func newImageCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Encrypt container images for HSM-held image keys; list and create those keys"}
	keys := &cobra.Command{Use: "keys", Short: "Image keys: the recipients of encrypted images, held by keyd's HSM"}
	keys.AddCommand(newImageKeysCreateCommand(cf), newImageKeysListCommand(cf), newImageKeysExportCommand(cf))
	cmd.AddCommand(keys, newImageEncryptCommand(), newImageInspectCommand())
	return cmd
}

func newImageKeysCreateCommand(cf *clientFlags) *cobra.Command {
	var st, out string
	cmd := &cobra.Command{
		Use:   "create KEY-ID",
		Short: "Create an image key on keyd's HSM and print its recipient file (public)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			k, err := admin.CreateImageKey(cmd.Context(), &keydv1.CreateImageKeyRequest{KeyId: args[0], Suite: st})
			if err != nil {
				return err
			}
			return writeRecipient(cmd, out, k)
		},
	}
	cmd.Flags().StringVar(&st, "suite", "intl", "gm (SM2) or intl (ECDH P-256)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the recipient file here instead of stdout")
	return cmd
}

func writeRecipient(cmd *cobra.Command, out string, k *keydv1.ImageKey) error {
	if out == "" {
		_, err := cmd.OutOrStdout().Write(k.RecipientPem)
		return err
	}
	if err := os.WriteFile(out, k.RecipientPem, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "image key %s (%s): recipient file %s\n", k.KeyId, k.Suite, out)
	return nil
}

func imageKeys(cmd *cobra.Command, cf *clientFlags) ([]*keydv1.ImageKey, error) {
	resp, err := callKeyd(cf, func(k keydv1.KeydClient) (*keydv1.ImageKeysResponse, error) {
		return k.ImageKeys(cmd.Context(), &keydv1.ImageKeysRequest{})
	})
	if err != nil {
		return nil, err
	}
	return resp.Keys, nil
}

func newImageKeysListCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List image keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keys, err := imageKeys(cmd, cf)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "KEY-ID\tSUITE")
			for _, k := range keys {
				fmt.Fprintf(w, "%s\t%s\n", k.KeyId, k.Suite)
			}
			return w.Flush()
		},
	}
}

func newImageKeysExportCommand(cf *clientFlags) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export KEY-ID",
		Short: "Print an image key's recipient file, for 'podkey image encrypt --recipient' where there is no keyd",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := imageKeys(cmd, cf)
			if err != nil {
				return err
			}
			for _, k := range keys {
				if k.KeyId == args[0] {
					return writeRecipient(cmd, out, k)
				}
			}
			return command.Exit(command.ExitNotFound, fmt.Errorf("no image key %q (podkey image keys list)", args[0]))
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the recipient file here instead of stdout")
	return cmd
}

func newImageEncryptCommand() *cobra.Command {
	var recipients []string
	cmd := &cobra.Command{
		Use:   "encrypt --recipient FILE... SRC DST",
		Short: "Encrypt every layer of an image for image keys (public recipient files only: no HSM, no keyd)",
		Long: `Encrypt every layer of an image for one or more image keys. SRC and DST
are registry references or OCI image layouts (oci:DIR or oci:DIR:TAG).
The result is a standard ocicrypt-encrypted OCI image whose layer keys are
wrapped by podkey's keyprovider scheme; nodes whose keyd policy allows one
of the image keys decrypt it, with one HSM operation per image.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(recipients) == 0 {
				return command.UsageError("at least one --recipient is required (podkey image keys export KEY-ID -o FILE)")
			}
			rs, err := imageenc.ReadRecipients(recipients)
			if err != nil {
				return command.Exit(command.ExitInvalid, err)
			}
			img, err := imageenc.Read(cmd.Context(), imageenc.Ref(args[0]))
			if err != nil {
				return command.Exit(command.ExitNotFound, err)
			}
			enc, res, err := imageenc.Encrypt(img, rs)
			if err != nil {
				return command.Exit(command.ExitInvalid, err)
			}
			if err := imageenc.Write(cmd.Context(), imageenc.Ref(args[1]), enc); err != nil {
				return command.Exit(command.ExitUnavailable, err)
			}
			ids := make([]string, len(rs))
			for i, r := range rs {
				ids[i] = r.KeyID
			}
			fmt.Fprintf(cmd.OutOrStdout(), "encrypted %d layers for %d image keys (%s, %s), key set %s\n%s@%s\n",
				res.Layers, len(rs), rs[0].Suite, strings.Join(ids, ", "), res.KeySet, args[1], res.Digest)
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&recipients, "recipient", "r", nil, "recipient file of an image key (repeat for more; all of one suite)")
	return cmd
}

func newImageInspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Show an image's layers and who can decrypt them (never a key)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := imageenc.Read(cmd.Context(), imageenc.Ref(args[0]))
			if err != nil {
				return command.Exit(command.ExitNotFound, err)
			}
			infos, err := imageenc.Inspect(img)
			if err != nil {
				return command.Exit(command.ExitInvalid, err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(infos)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "LAYER\tSIZE\tENCRYPTED\tSCHEMES\tSUITE\tKEY-SET\tIMAGE-KEYS")
			for _, li := range infos {
				fmt.Fprintf(w, "%s\t%d\t%v\t%s\t%s\t%s\t%s\n", shortDigest(li.Digest), li.Size, li.Encrypted,
					dash(strings.Join(li.Schemes, ",")), dash(li.Suite), dash(li.KeySet), dash(strings.Join(li.ImageKeys, ",")))
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
