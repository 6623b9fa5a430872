// Package command holds what podkey's command lines share: running a cobra
// command with signal handling, mapping errors to documented exit
// statuses, and logger flags.
package command

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit statuses, documented in docs/cli.md.
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

// Error carries an explicit exit status.
type Error struct {
	Code int
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Done ends a command early and successfully, printing Message: a call
// that was written down for approval instead of made.
type Done struct{ Message string }

func (d *Done) Error() string { return d.Message }

// Exit wraps err with an exit status.
func Exit(code int, err error) error { return &Error{code, err} }

// UsageError is a usage mistake (exit 2).
func UsageError(format string, a ...any) error {
	return &Error{ExitUsage, fmt.Errorf(format, a...)}
}

// exitCode maps an error to the process exit status.
func exitCode(err error) int {
	var ee *Error
	if errors.As(err, &ee) {
		return ee.Code
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
	if isUsage(err) {
		return ExitUsage
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

func isUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "accepts ", "requires at least", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// Run executes a command tree until it returns or SIGINT/SIGTERM cancels
// its context, and returns the exit status.
func Run(cmd *cobra.Command, args []string, stdout, stderr io.Writer) int {
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &Error{ExitUsage, err} })
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var done *Done
	if errors.As(err, &done) {
		fmt.Fprintln(stdout, done.Message)
		return ExitOK
	}
	fmt.Fprintln(stderr, "error:", describe(err))
	return exitCode(err)
}

// LogFlags configure a daemon's structured logger.
type LogFlags struct{ format, level string }

// Register adds --log-format and --log-level.
func (l *LogFlags) Register(f *pflag.FlagSet) {
	f.StringVar(&l.format, "log-format", "text", "log format: text or json")
	f.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn, error")
}

// Logger builds the logger writing to w.
func (l *LogFlags) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, UsageError("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, UsageError("--log-format must be text or json")
}

// EnvOr returns the environment variable k, or def when it is unset.
func EnvOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// StartCPUProfile writes a CPU profile to path until the returned stop is
// called.
func StartCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
