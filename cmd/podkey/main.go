// Command podkey is the podkey administration and developer CLI.
package main

import (
	"os"

	"github.com/podkey/podkey/pkg/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
