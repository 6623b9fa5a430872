package podkeycmd

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/podkey/podkey/internal/cmd/command"
)

func newHealthCommand(cf *clientFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Exit 0 when keyd serves: it answers and has confirmed its policy against the store within its bound",
		Long: `health asks keyd's gRPC health service. keyd answers NOT_SERVING while it
cannot confirm its policy against the store (the store unreachable, or a
policy it cannot read); the chart's readiness probe runs this command.
Exit status 0 when serving, 6 (unavailable) otherwise.`,
		Example: `  podkey health --socket /run/podkey/keyd.sock`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := cf.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return command.Exit(command.ExitUnavailable, fmt.Errorf("keyd: %w", err))
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				return command.Exit(command.ExitUnavailable, fmt.Errorf("keyd is %s", resp.Status))
			}
			fmt.Fprintln(cmd.OutOrStdout(), "serving")
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for keyd's answer")
	return cmd
}
