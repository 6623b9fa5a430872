package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/policy"
)

func newPolicyCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Show and change which service accounts may obtain which objects (default deny)"}
	get := &cobra.Command{
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
	set := &cobra.Command{
		Use: "set FILE", Short: "Replace the policy with a YAML file", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if _, err := policy.Parse(data); err != nil {
				return exitError(ExitInvalid, err)
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
	var r policy.Rule
	var kinds []string
	ruleFlags := func(c *cobra.Command) {
		c.Flags().StringVar(&r.Namespace, "namespace", "", "namespace or *")
		c.Flags().StringVar(&r.ServiceAccount, "service-account", "", "service account or *")
		c.Flags().StringSliceVar(&r.Objects, "object", nil, "object name or * (repeatable)")
		c.Flags().StringSliceVar(&kinds, "kind", nil, "kind (repeatable; default every kind)")
		_ = c.MarkFlagRequired("namespace")
		_ = c.MarkFlagRequired("service-account")
		_ = c.MarkFlagRequired("object")
	}
	change := func(add bool) func(cmd *cobra.Command, _ []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			r.Kinds = nil
			for _, k := range kinds {
				kind, err := object.ParseKind(k)
				if err != nil {
					return usageError("%v", err)
				}
				r.Kinds = append(r.Kinds, kind)
			}
			admin, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			doc, err := admin.GetPolicy(cmd.Context(), &keydv1.GetPolicyRequest{})
			if err != nil {
				return err
			}
			p, err := policy.Parse(doc.Yaml)
			if err != nil {
				return err
			}
			if add {
				if err := p.Add(r); err != nil {
					return exitError(ExitInvalid, err)
				}
			} else if p.Remove(r) == 0 {
				return exitError(ExitNotFound, fmt.Errorf("no rule matches"))
			}
			out, err := p.Marshal()
			if err != nil {
				return err
			}
			if _, err := admin.SetPolicy(cmd.Context(), &keydv1.PolicyDocument{Yaml: out}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "policy now has %d rules\n", len(p.Rules))
			return nil
		}
	}
	add := &cobra.Command{Use: "add", Short: "Add a rule", Args: cobra.NoArgs, RunE: change(true)}
	remove := &cobra.Command{Use: "remove", Short: "Remove a rule", Args: cobra.NoArgs, RunE: change(false)}
	ruleFlags(add)
	ruleFlags(remove)
	cmd.AddCommand(get, set, add, remove)
	return cmd
}
