// Package cli is the podkey and podkey-keyd command lines: flag parsing,
// wiring and output. Each command is a thin layer over the packages that
// own the capability.
package cli

import (
	"io"
	"os"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/command"
	"github.com/podkey/podkey/pkg/keyd"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/version"
)

// Exit statuses, re-exported for tests and callers of this package.
const (
	ExitOK          = command.ExitOK
	ExitError       = command.ExitError
	ExitUsage       = command.ExitUsage
	ExitInvalid     = command.ExitInvalid
	ExitDenied      = command.ExitDenied
	ExitNotFound    = command.ExitNotFound
	ExitUnavailable = command.ExitUnavailable
	ExitTampered    = command.ExitTampered
)

func usageError(format string, a ...any) error { return command.UsageError(format, a...) }

// exitError wraps err with an exit status.
func exitError(code int, err error) error { return command.Exit(code, err) }

// Run executes a command tree and returns the exit status.
func Run(cmd *cobra.Command, args []string, stdout, stderr io.Writer) int {
	return command.Run(cmd, args, stdout, stderr)
}

// Main runs the podkey CLI.
func Main(args []string, stdout, stderr io.Writer) int { return Run(NewRoot(), args, stdout, stderr) }

// KeydMain runs the podkey-keyd daemon command.
func KeydMain(args []string, stdout, stderr io.Writer) int {
	return Run(NewKeydCommand(), args, stdout, stderr)
}

// clientFlags select the keyd to talk to.
type clientFlags struct{ o keydclient.Options }

func (c *clientFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.o.Socket, "socket", command.EnvOr("PODKEY_SOCKET", keyd.DefaultSocket), "keyd's local unix socket (env PODKEY_SOCKET)")
	f.StringVar(&c.o.Address, "addr", os.Getenv("PODKEY_ADDR"), "keyd's TLS address host:port instead of the socket (env PODKEY_ADDR)")
	f.StringVar(&c.o.CAFile, "ca-file", os.Getenv("PODKEY_CA_FILE"), "CA bundle verifying keyd over TLS (env PODKEY_CA_FILE)")
}

func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	conn, err := keydclient.Dial(c.o)
	if err != nil {
		return nil, exitError(ExitUsage, err)
	}
	return conn, nil
}

func (c *clientFlags) keyd() (keydv1.KeydClient, func(), error) {
	conn, err := c.dial()
	if err != nil {
		return nil, nil, err
	}
	return keydv1.NewKeydClient(conn), func() { conn.Close() }, nil
}

func (c *clientFlags) admin() (keydv1.AdminClient, func(), error) {
	conn, err := c.dial()
	if err != nil {
		return nil, nil, err
	}
	return keydv1.NewAdminClient(conn), func() { conn.Close() }, nil
}

// NewRoot builds the podkey command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "podkey",
		Short: "Administer podkey: HSM keys, enrolled secrets, policy, audit; issue and verify by hand",
		Long: `podkey administers a podkey key service (podkey-keyd) and its HSM token.

Commands that manage keyd's state talk to keyd over its local unix socket
(--socket); hsm init and hsm status open the HSM token directly.`,
		Version: version.Version,
	}
	var cf clientFlags
	cf.register(root)
	root.AddCommand(newHSMCommand(&cf), newSecretCommand(&cf), newPolicyCommand(&cf), newIssueCommand(&cf),
		newVerifyCommand(&cf), newRevokeCommand(&cf), newAuditCommand(&cf), newCACommand(&cf), newBenchCommand())
	return root
}
