// Command podkey-image-decoder is containerd's stream processor for
// encrypted image layers (a drop-in for imgcrypt's ctd-decoder); see
// package imagedecoder.
package main

import (
	"os"

	"github.com/podkey/podkey/pkg/imagedecoder"
)

func main() { os.Exit(imagedecoder.Main(os.Args[1:], os.Stdout, os.Stderr)) }
