package podkeycmd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podkey/podkey/internal/cmd/command"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
)

func newDatabaseCommand(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "database", Short: "Database connections pods get logins of their own on, and the pods' leases"}
	cmd.AddCommand(newDatabasePutCommand(cf), newDatabaseListCommand(cf), newDatabaseDeleteCommand(cf), newDatabaseLeasesCommand(cf))
	return cmd
}

// maxAdminConnection bounds the admin connection string read from stdin.
const maxAdminConnection = 8 << 10

func newDatabasePutCommand(cf *clientFlags) *cobra.Command {
	var (
		req         keydv1.PutDatabaseRequest
		from, caPEM string
		ttl, maxTTL time.Duration
		grace       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "put NAME",
		Short: "Define a connection; its admin connection string is read from stdin or --admin-from-file (never from the command line)",
		Long: `put defines (or replaces) the database connection NAME: the object name
pods ask for with kind database. keyd connects with the admin connection
string, checks that the group role exists and can be granted, and keeps
the string wrapped under the HSM KEK; it is never shown again.

PostgreSQL: a libpq URL or key=value string (a unix socket, or TCP with
sslmode=verify-full). MySQL/MariaDB: a go-sql-driver DSN
(user:password@unix(/run/mysqld/mysqld.sock)/db, or tcp(...) with tls=true
or --ca-file). docs/database.md lists the privileges the admin needs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if from != "" {
				f, err := os.Open(from)
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			admin, err := io.ReadAll(io.LimitReader(r, maxAdminConnection+1))
			if err != nil {
				return err
			}
			defer clear(admin)
			if len(admin) > maxAdminConnection {
				return command.Exit(command.ExitInvalid, fmt.Errorf("the admin connection string is longer than %d bytes; nothing stored", maxAdminConnection))
			}
			if caPEM != "" {
				ca, err := os.ReadFile(caPEM)
				if err != nil {
					return err
				}
				req.CaPem = string(ca)
			}
			req.Name = args[0]
			req.AdminConnection = string(bytes.TrimSpace(admin))
			req.TtlSeconds, req.MaxTtlSeconds, req.RevokeGraceSeconds = int64(ttl/time.Second), int64(maxTTL/time.Second), int64(grace/time.Second)
			client, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			info, err := client.PutDatabase(cmd.Context(), &req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "defined database %s version %d: %s, group role %s, pods connect to %s\n",
				info.Name, info.Version, info.Engine, info.GroupRole, endpoint(info.Host, info.Port, info.Database))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Engine, "engine", "postgresql", "postgresql or mysql (MariaDB 10.4+, MySQL 8)")
	f.StringVar(&req.GroupRole, "group-role", "", "the role whose privileges each pod's login gets (required)")
	f.DurationVar(&ttl, "ttl", 0, "how long a login stays valid without a renewal (default 1h; the object's ttl caps it)")
	f.DurationVar(&maxTTL, "max-ttl", 0, "how long one password lives before a renewal replaces it (default 24h)")
	f.DurationVar(&grace, "revoke-grace", 0, "how long after its pod goes a login is dropped")
	f.StringVar(&req.UserPrefix, "user-prefix", "", "the start of every login keyd makes (default pk_)")
	f.StringVar(&req.Host, "host", "", "the host pods connect to (default the admin connection's)")
	f.Int32Var(&req.Port, "port", 0, "the port pods connect to (default the admin connection's)")
	f.StringVar(&req.Database, "database", "", "the database pods connect to (default the admin connection's)")
	f.StringVar(&req.Params, "params", "", "a URL query for the pods' url line, e.g. sslmode=verify-full")
	f.StringVar(&caPEM, "ca-file", "", "mysql over TCP: the CA (PEM) of the server's certificate")
	f.StringVar(&from, "admin-from-file", "", "read the admin connection string from this file instead of stdin")
	_ = cmd.MarkFlagRequired("group-role")
	return cmd
}

func endpoint(host string, port int32, db string) string {
	if port == 0 {
		return fmt.Sprintf("%s (socket) database %s", host, db)
	}
	return fmt.Sprintf("%s:%d database %s", host, port, db)
}

func newDatabaseListCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List connections (never their admin connection strings)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.ListDatabases(cmd.Context(), &keydv1.ListDatabasesRequest{})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tENGINE\tGROUP ROLE\tTTL\tMAX TTL\tGRACE\tENDPOINT\tVERSION")
			for _, d := range resp.Databases {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", d.Name, d.Engine, d.GroupRole,
					time.Duration(d.TtlSeconds)*time.Second, time.Duration(d.MaxTtlSeconds)*time.Second,
					time.Duration(d.RevokeGraceSeconds)*time.Second, endpoint(d.Host, d.Port, d.Database), d.Version)
			}
			return w.Flush()
		},
	}
}

func newDatabaseDeleteCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a connection no pod holds a login on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			if _, err := client.DeleteDatabase(cmd.Context(), &keydv1.DeleteDatabaseRequest{Name: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted database %s\n", args[0])
			return nil
		},
	}
}

func newDatabaseLeasesCommand(cf *clientFlags) *cobra.Command {
	var podUID string
	cmd := &cobra.Command{
		Use:   "leases",
		Short: "List the pods' database logins (never their passwords)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, done, err := cf.admin()
			if err != nil {
				return err
			}
			defer done()
			resp, err := client.ListLeases(cmd.Context(), &keydv1.ListLeasesRequest{PodUid: podUID})
			if err != nil {
				return err
			}
			at := func(t *timestamppb.Timestamp) string {
				if t == nil {
					return "-"
				}
				return t.AsTime().Format("2006-01-02T15:04:05Z")
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "DATABASE\tPOD\tPOD UID\tUSER\tSTATE\tEXPIRES\tREVOKE AT\tFAILED")
			for _, l := range resp.Leases {
				fmt.Fprintf(w, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%d\n", l.Connection, l.Namespace, l.Pod, l.PodUid,
					l.User, l.State, at(l.Expiry), at(l.RevokeAt), l.Attempts)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&podUID, "pod-uid", "", "only this pod's leases")
	return cmd
}
