// Package mlog stands in for monis.app/mlog, the logging module of the
// upstream secrets-store CSI driver that the Go module proxy does not
// serve. It provides what the driver's main calls, on klog, so the real
// driver builds for podkey's tests and benchmarks; it is not podkey code.
package mlog

import (
	"context"
	"fmt"
	"os"

	"k8s.io/klog/v2"
)

// LogFormat is text or JSON.
type LogFormat string

// The formats the driver selects between.
const (
	FormatText LogFormat = "text"
	FormatJSON LogFormat = "json"
)

// Setup returns the function that flushes the log at exit.
func Setup() func() { return klog.Flush }

// Fatal logs err and exits.
func Fatal(err error, args ...any) {
	klog.ErrorS(err, "fatal", args...)
	klog.Flush()
	os.Exit(1)
}

// Error logs msg with err.
func Error(msg string, err error, args ...any) { klog.ErrorS(err, msg, args...) }

// ValidateAndSetKlogLevelAndFormatGlobally accepts the driver's level
// (klog's -v, already set by its flags) and either format; klog writes
// text whichever is asked.
func ValidateAndSetKlogLevelAndFormatGlobally(_ context.Context, level klog.Level, format LogFormat) error {
	if level < 0 {
		return fmt.Errorf("log level %d is negative", level)
	}
	if format != FormatText && format != FormatJSON {
		return fmt.Errorf("log format %q is neither text nor json", format)
	}
	return nil
}
