package podkeycmd

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/policy"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
)

func newPolicyCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Show and change which service accounts may obtain which objects (default deny)"}
	cmd.AddCommand(newPolicyGetCommand(cf), newPolicySetCommand(cf), newPolicyRuleCommand(cf, true), newPolicyRuleCommand(cf, false))
	return cmd
}

func newPolicyGetCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "get", Short: "Print the policy in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			doc, err := admin.GetPolicy(cmd.Context(), &keydv1.GetPolicyRequest{})
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(doc.Yaml)
			return err
		},
	}
}

func newPolicySetCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "set FILE", Short: "Replace the policy with a YAML file", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if _, err := policy.Parse(data); err != nil {
				return command.Exit(command.ExitInvalid, err)
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := admin.SetPolicy(cmd.Context(), &keydv1.PolicyDocument{Yaml: data}); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "policy replaced")
			return nil
		},
	}
}

// newPolicyRuleCommand is "policy add" (add) or "policy remove".
func newPolicyRuleCommand(cf *clientFlags, add bool) *cobra.Command {
	var (
		r     policy.Rule
		kinds []string
	)
	cmd := &cobra.Command{Use: "remove", Short: "Remove a rule", Args: cobra.NoArgs}
	if add {
		cmd.Use, cmd.Short = "add", "Add a rule"
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		r.Kinds = nil
		for _, k := range kinds {
			kind, err := object.ParseKind(k)
			if err != nil {
				return command.UsageError("%v", err)
			}
			r.Kinds = append(r.Kinds, kind)
		}
		admin, done, err := cf.admin()
		if err != nil {
			return err
		}
		defer done()
		n, err := changePolicy(cmd.Context(), admin, r, add)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "policy now has %d rules\n", n)
		return nil
	}
	cmd.Flags().StringVar(&r.Namespace, "namespace", "", "namespace or *")
	cmd.Flags().StringVar(&r.ServiceAccount, "service-account", "", "service account or *")
	cmd.Flags().StringSliceVar(&r.Objects, "object", nil, "object name or * (repeatable)")
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "kind (repeatable; default every kind)")
	_ = cmd.MarkFlagRequired("namespace")
	_ = cmd.MarkFlagRequired("service-account")
	_ = cmd.MarkFlagRequired("object")
	return cmd
}

// changePolicy adds or removes r as one operation in keyd's store and
// returns the number of rules after the change.
func changePolicy(ctx context.Context, admin keydv1.AdminClient, r policy.Rule, add bool) (int, error) {
	req := &keydv1.PolicyRule{Namespace: r.Namespace, ServiceAccount: r.ServiceAccount, Objects: r.Objects}
	for _, k := range r.Kinds {
		req.Kinds = append(req.Kinds, string(k))
	}
	change := admin.RemovePolicyRule
	if add {
		change = admin.AddPolicyRule
	}
	resp, err := change(ctx, req)
	if err != nil {
		return 0, err
	}
	return int(resp.Rules), nil
}
