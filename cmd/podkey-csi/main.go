// Command podkey-csi is podkey's CSI node plugin.
package main

import (
	"os"

	"github.com/podkey/podkey/internal/cmd/csicmd"
)

func main() { os.Exit(csicmd.Main(os.Args[1:], os.Stdout, os.Stderr)) }
