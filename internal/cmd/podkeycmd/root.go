// Package podkeycmd is the podkey command line, the administration and
// developer CLI: flag parsing, the keyd connection and output. Each
// command is a thin layer over the package that owns its capability; the
// daemons have their own command packages (keydcmd, csicmd).
package podkeycmd

import (
	"io"
	"os"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/version"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

// Main runs the podkey CLI and returns its exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	return command.Run(NewCommand(), args, stdout, stderr)
}

// clientFlags select the keyd to talk to, and how sensitive calls go
// under dual control.
type clientFlags struct {
	o        keydclient.Options
	approval approvalFlags
}

func (c *clientFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.o.Socket, "socket", command.EnvOr("PODKEY_SOCKET", keydv1.DefaultSocket), "keyd's local unix socket (env PODKEY_SOCKET)")
	f.StringVar(&c.o.Address, "addr", os.Getenv("PODKEY_ADDR"), "keyd's TLS address host:port instead of the socket (env PODKEY_ADDR)")
	f.StringVar(&c.o.CAFile, "ca-file", os.Getenv("PODKEY_CA_FILE"), "CA bundle verifying keyd over TLS (env PODKEY_CA_FILE)")
	c.approval.register(cmd)
}

func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	conn, err := keydclient.Dial(c.o, c.approval.dialOptions()...)
	if err != nil {
		return nil, command.Exit(command.ExitUsage, err)
	}
	return conn, nil
}

// callKeyd dials keyd, makes one call of its Keyd API and hangs up.
func callKeyd[Resp any](cf *clientFlags, call func(keydv1.KeydClient) (Resp, error)) (Resp, error) {
	conn, err := cf.dial()
	if err != nil {
		var none Resp
		return none, err
	}
	defer conn.Close()
	return call(keydv1.NewKeydClient(conn))
}

func (c *clientFlags) admin() (keydv1.AdminClient, func(), error) {
	conn, err := c.dial()
	if err != nil {
		return nil, nil, err
	}
	return keydv1.NewAdminClient(conn), func() { conn.Close() }, nil
}

// NewCommand builds the podkey command tree.
func NewCommand() *cobra.Command {
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
		newVerifyCommand(&cf), newRevokeCommand(&cf), newAuditCommand(&cf), newCACommand(&cf), newTokenCommand(&cf), newRenewCommand(&cf), newStoreCommand(&cf), newBenchCommand(), newImageCommand(&cf), newHealthCommand(&cf), newApprovalCommand(&cf), newTLCPCommand(&cf), newDatabaseCommand(&cf))
	return root
}
