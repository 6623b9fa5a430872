// Package cli is the podkey and podkey-keyd command lines: flag parsing,
// wiring and output. Each command is a thin layer over the packages that
// own the capability.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keyd"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/version"
)

// Exit statuses, documented in the README.
const (
	ExitOK          = 0
	ExitError       = 1 // anything else
	ExitUsage       = 2 // bad flags or arguments
	ExitInvalid     = 3 // keyd refused the input (InvalidArgument)
	ExitDenied      = 4 // PermissionDenied or Unauthenticated
	ExitNotFound    = 5
	ExitUnavailable = 6 // keyd or the HSM unreachable
	ExitTampered    = 7 // audit verify found a broken chain
)

// exitError carries an explicit exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, a ...any) error {
	return &exitError{ExitUsage, fmt.Errorf(format, a...)}
}

// exitCode maps an error to the process exit status.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
			return ExitInvalid
		case codes.PermissionDenied, codes.Unauthenticated:
			return ExitDenied
		case codes.NotFound:
			return ExitNotFound
		case codes.Unavailable, codes.DeadlineExceeded:
			return ExitUnavailable
		}
	}
	return ExitError
}

// describe renders an error for a person: gRPC errors as "code: message".
func describe(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

// Run executes a command tree and returns the exit status.
func Run(cmd *cobra.Command, args []string, stdout, stderr io.Writer) int {
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &exitError{ExitUsage, err} })
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	code := exitCode(err)
	if code == ExitError && isUsage(err) {
		code = ExitUsage
	}
	fmt.Fprintln(stderr, "error:", describe(err))
	return code
}

func isUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "accepts ", "requires at least", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
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
	f.StringVar(&c.o.Socket, "socket", envOr("PODKEY_SOCKET", keyd.DefaultSocket), "keyd's local unix socket (env PODKEY_SOCKET)")
	f.StringVar(&c.o.Address, "addr", os.Getenv("PODKEY_ADDR"), "keyd's TLS address host:port instead of the socket (env PODKEY_ADDR)")
	f.StringVar(&c.o.CAFile, "ca-file", os.Getenv("PODKEY_CA_FILE"), "CA bundle verifying keyd over TLS (env PODKEY_CA_FILE)")
}

func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	conn, err := keydclient.Dial(c.o)
	if err != nil {
		return nil, &exitError{ExitUsage, err}
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

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
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
