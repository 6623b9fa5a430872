// Command podkey-image-decoder is containerd's stream processor for
// encrypted image layers (a drop-in for imgcrypt's ctd-decoder); see
// package decodercmd.
package main

import (
	"os"

	"github.com/podkey/podkey/internal/cmd/decodercmd"
)

func main() { os.Exit(decodercmd.Main(os.Args[1:], os.Stdout, os.Stderr)) }
