// Command podkey-keyd is the podkey key service.
package main

import (
	"os"

	"github.com/podkey/podkey/internal/cmd/keydcmd"
)

func main() { os.Exit(keydcmd.Main(os.Args[1:], os.Stdout, os.Stderr)) }
