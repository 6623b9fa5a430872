// Command podkey-keyd is the podkey key service.
package main

import (
	"os"

	"github.com/podkey/podkey/pkg/cli"
)

func main() { os.Exit(cli.KeydMain(os.Args[1:], os.Stdout, os.Stderr)) }
