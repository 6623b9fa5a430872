// Command podkey is the podkey administration and developer CLI.
package main

import (
	"os"

	"github.com/podkey/podkey/internal/cmd/podkeycmd"
)

func main() { os.Exit(podkeycmd.Main(os.Args[1:], os.Stdout, os.Stderr)) }
