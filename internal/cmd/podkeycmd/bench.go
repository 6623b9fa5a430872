package podkeycmd

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/cmd/hsmflags"
	"github.com/podkey/podkey/internal/keyd/bench"
)

func newBenchCommand() *cobra.Command {
	var (
		hf       hsmflags.Flags
		duration time.Duration
		conc     []int
		output   string
		profile  string
		db       bench.Database
		dbAdmin  string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure issuance through keyd beside raw HSM operations on the same token",
		Long: `bench starts an in-process keyd on a temporary store against the given
token (initialised with 'podkey hsm init'), then measures, for each
concurrency level, raw HSM operations per second and credentials issued per
second through the gRPC API for every kind and suite, with their ratio.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := hf.Config()
			if err != nil {
				return err
			}
			gogc := bench.TuneRuntime()
			var sb strings.Builder
			fmt.Fprintf(&sb, "# podkey bench\n\nmachine: %s/%s, %d CPUs, %s, GOGC %d as keyd sets it; token %q (%s); %s per measurement\n\n",
				runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), gogc, cfg.TokenLabel, cfg.ModulePath, duration)
			sb.WriteString("keyd, its callers and the PKCS#11 module share this process: \"CPU per call\" is the process's user and\n" +
				"system time per successful call, \"its CPU\" the same for the raw operation a row is compared with, and\n" +
				"\"CPU beyond it\" the difference: keyd's own cost per credential (gRPC, policy, audit, store), read\n" +
				"apart from an HSM that shares the machine's cores.\n\n")
			if profile != "" {
				stop, err := command.StartCPUProfile(profile)
				if err != nil {
					return err
				}
				defer stop()
			}
			opts := bench.Options{HSM: cfg, Duration: duration, Concurrency: conc}
			if dbAdmin != "" {
				b, err := os.ReadFile(dbAdmin)
				if err != nil {
					return err
				}
				db.Admin = strings.TrimSpace(string(b))
				clear(b)
				opts.Database = &db
			}
			if _, err := bench.Run(cmd.Context(), opts, &sb); err != nil {
				return err
			}
			if output != "" {
				if err := os.WriteFile(output, []byte(sb.String()), 0o644); err != nil {
					return err
				}
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), sb.String())
			return err
		},
	}
	hf.Register(cmd.Flags())
	cmd.Flags().DurationVar(&duration, "duration", 2*time.Second, "length of each measurement")
	cmd.Flags().IntSliceVar(&conc, "concurrency", []int{1, 8, 64}, "concurrent callers (repeatable)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "also write the table to this file")
	cmd.Flags().StringVar(&dbAdmin, "database-admin-from-file", "", "also measure database logins: the admin connection string of a test database (docs/database.md), read from this file")
	cmd.Flags().StringVar(&db.Engine, "database-engine", "postgresql", "with --database-admin-from-file: postgresql or mysql")
	cmd.Flags().StringVar(&db.GroupRole, "database-group-role", "", "with --database-admin-from-file: the group role logins get")
	cmd.Flags().StringVar(&profile, "cpuprofile", "", "write a CPU profile of the whole run (keyd and the callers share the process) to this file")
	return cmd
}
