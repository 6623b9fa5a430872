// Command podkey-csi is podkey's CSI node plugin.
package main

import (
	"os"

	"github.com/podkey/podkey/pkg/csiplugin"
)

func main() { os.Exit(csiplugin.Main(os.Args[1:], os.Stdout, os.Stderr)) }
