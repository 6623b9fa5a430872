package podkeycmd

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/hsmflags"
	"github.com/podkey/podkey/internal/host/atomicfile"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/keyring"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func newHSMCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "hsm", Short: "Set up and inspect the HSM token's root keys"}
	var hf hsmflags.Flags
	hf.Register(cmd.PersistentFlags())
	cmd.AddCommand(newHSMInitCommand(&hf), newHSMStatusCommand(&hf), newHSMRotateCommand(cf))
	return cmd
}

func newHSMInitCommand(hf *hsmflags.Flags) *cobra.Command {
	var initToken bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create missing root keys on the token (idempotent; never overwrites)",
		Long: `Create missing root keys on the token (idempotent; never overwrites).

With --init-token (for a software token such as the default SoftHSM2), a
token of the given label is first initialised in a free slot when none
exists, with a random user PIN written to --hsm-pin-file (mode 0600) and a
random SO PIN beside it (<pin-file>.so) when those files do not exist yet.
SoftHSM2's token directory ($SOFTHSM2_CONF's directories.tokendir) is
created when missing.
A token that already exists is never re-initialised.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if initToken {
				if err := ensureToken(cmd, hf); err != nil {
					return err
				}
			}
			tok, err := hf.Open()
			if err != nil {
				return err
			}
			defer tok.Close()
			created, err := keyring.Init(cmd.Context(), tok)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(created) == 0 {
				fmt.Fprintf(out, "token %q: all root keys present; nothing created\n", tok.Label())
				return nil
			}
			fmt.Fprintf(out, "token %q: created %d root keys\n", tok.Label(), len(created))
			for _, l := range created {
				fmt.Fprintln(out, "  "+l)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&initToken, "init-token", false, "initialise the token first when no token has the label (software tokens; needs --hsm-pin-file)")
	return cmd
}

func newHSMStatusCommand(hf *hsmflags.Flags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the token and its podkey keys with their protection attributes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := hf.Open()
			if err != nil {
				return err
			}
			defer tok.Close()
			ctx := cmd.Context()
			info := tok.Info()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "token:   %s (%s %s, serial %s)\nmodule:  %s\nsessions: up to %d\n",
				info.Label, strings.TrimSpace(info.Manufacturer), strings.TrimSpace(info.Model), strings.TrimSpace(info.Serial), info.Module, info.MaxSessions)
			objs, err := tok.List(ctx, "podkey/")
			if err != nil {
				return err
			}
			sort.Slice(objs, func(i, j int) bool {
				if objs[i].Label != objs[j].Label {
					return objs[i].Label < objs[j].Label
				}
				return objs[i].Class < objs[j].Class
			})
			fmt.Fprintf(out, "%-32s %-12s %s\n", "LABEL", "CLASS", "PROTECTION")
			for _, o := range objs {
				prot := "public"
				switch o.Class {
				case hsm.SecretKey, hsm.PrivateKey:
					a, err := tok.Attributes(ctx, o.Class, o.Label)
					if err != nil {
						return err
					}
					prot = fmt.Sprintf("sensitive=%v extractable=%v", a.Sensitive, a.Extractable)
				case hsm.Data:
					if keyring.Wrapped(o.Label) {
						prot = "wrapped under podkey/kek"
					}
				}
				fmt.Fprintf(out, "%-32s %-12s %s\n", o.Label, o.Class, prot)
			}
			locs, err := keyring.Locations(ctx, tok)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "\n%-32s %s\n", "KEY", "USED")
			for _, l := range locs {
				fmt.Fprintf(out, "%-32s %s\n", l.Label, l.Why)
			}
			return nil
		},
	}
}

func newHSMRotateCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate PURPOSE",
		Short: "Add a generation of a root key through keyd (mac, derive, ca, jwt, audit; old generations keep verifying) or move everything to a new key-encryption key (kek)",
		Long: `rotate mac|derive|ca|jwt --suite S adds a generation of that root key; what
the older generations issued keeps verifying until it expires.

rotate kek creates a new key-encryption key generation, re-wraps under it
everything wrapped under the old one (SM root keys and SM image keys on the
token, enrolled secrets in keyd's store), checks that all of it opens under
the new generation, and only then destroys the old copies and the old
generation. It is safe to interrupt: running it again finishes the
rotation. --suite does not apply.

rotate audit creates the audit key's next generation: the audit log's
following records are authenticated under it; the older generations stay
to verify what they authenticated.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, _ := cmd.Flags().GetString("suite")
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := admin.RotateKey(cmd.Context(), &keydv1.RotateKeyRequest{Purpose: args[0], Suite: s})
			if err != nil {
				return err
			}
			if args[0] == "kek" {
				fmt.Fprintf(cmd.OutOrStdout(), "kek: everything wrapped under generation %d; older generations destroyed\n", resp.Generation)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: now generation %d\n", args[0], s, resp.Generation)
			return nil
		},
	}
	cmd.Flags().String("suite", "intl", "suite: gm or intl")
	return cmd
}

func newHSMRetireCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "retire PURPOSE/SUITE/gN",
		Short: "Destroy an old generation of a root key (mac, derive, ca, jwt) once nothing it issued can be valid; every replica drops it from its CA bundle and JWK Set",
		Long: `retire ca/intl/g1 destroys generation 1 of the intl CA on the token (its key,
wrapped copies and CA certificate); every keyd replica drops it, and with it
from the CA bundle and the JWK Set it publishes. keyd refuses the current
generation, and refuses while credentials the generation issued may still be
valid, as the audit log shows (its newest issuance plus the longest ttl an
object may have, 30 days; for a CA also the rotation that replaced it plus a
day of node certificates). --force retires it anyway and needs --reason;
both are audited. See docs/operations.md for the rotate, overlap, retire
runbook.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			parts := strings.Split(args[0], "/")
			if len(parts) != 3 || !strings.HasPrefix(parts[2], "g") {
				return command.Exit(command.ExitUsage, fmt.Errorf("%q: want PURPOSE/SUITE/gN, e.g. ca/intl/g1", args[0]))
			}
			gen, err := strconv.ParseInt(parts[2][1:], 10, 32)
			if err != nil || gen < 1 {
				return command.Exit(command.ExitUsage, fmt.Errorf("%q: the generation is g and a number from 1", parts[2]))
			}
			force, _ := cmd.Flags().GetBool("force")
			reason, _ := cmd.Flags().GetString("reason")
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := admin.RetireKey(cmd.Context(), &keydv1.RetireKeyRequest{Purpose: parts[0], Suite: parts[1], Generation: gen, Force: force, Reason: reason})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: retired (destroyed on the token; replicas drop it within a second)", args[0])
			if resp.InUseUntil != nil && resp.InUseUntil.AsTime().After(time.Now()) {
				fmt.Fprintf(cmd.OutOrStdout(), "; credentials it issued fail from now although valid until %s", resp.InUseUntil.AsTime().UTC().Format(time.RFC3339))
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().Bool("force", false, "retire although credentials it issued may still be valid (needs --reason)")
	cmd.Flags().String("reason", "", "why; recorded in the audit log")
	return cmd
}

// ensureToken initialises a token labelled hf.Label when the module has
// none, generating the PIN files that do not exist yet.
func ensureToken(cmd *cobra.Command, hf *hsmflags.Flags) error {
	if hf.PINFile == "" {
		return command.Exit(command.ExitUsage, errors.New("--init-token needs --hsm-pin-file: the generated PIN is written there"))
	}
	if err := hsm.EnsureSoftHSMTokenDir(); err != nil {
		return command.Exit(command.ExitUnavailable, err)
	}
	pin, err := pinFileOrNew(hf.PINFile)
	if err != nil {
		return command.Exit(command.ExitUnavailable, err)
	}
	so, err := pinFileOrNew(hf.PINFile + ".so")
	if err != nil {
		return command.Exit(command.ExitUnavailable, err)
	}
	switch err := hsm.InitToken(hf.Module, hf.Label, so, pin); {
	case errors.Is(err, hsm.ErrObjectExists):
		return nil
	case err != nil:
		return command.Exit(command.ExitUnavailable, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "token %q: initialised; user PIN in %s (mode 0600)\n", hf.Label, hf.PINFile)
	return nil
}

// pinFileOrNew reads the PIN in path, or writes a new random one there
// (mode 0600, atomically) when the file does not exist.
func pinFileOrNew(path string) (hsm.Secret, error) {
	if _, err := os.Stat(path); err == nil {
		return hsm.ReadPIN(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	pin := hex.EncodeToString(b)
	if err := atomicfile.Write(path, []byte(pin+"\n")); err != nil {
		return "", fmt.Errorf("write PIN file: %w", err)
	}
	return hsm.Secret(pin), nil
}
