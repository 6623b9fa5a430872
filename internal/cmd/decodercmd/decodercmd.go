// Package decodercmd is podkey-image-decoder: containerd's stream
// processor for encrypted layers (the ids io.containerd.ocicrypt.decoder.
// v1.tar and .tar.gzip), a drop-in for imgcrypt's ctd-decoder. containerd
// starts one per layer with the layer on stdin, a payload on fd 3 (a
// protobuf Any holding imgcrypt's Payload as JSON: the decrypt
// configuration and the layer's descriptor) and reads the decrypted layer
// from stdout.
//
// It decrypts with ocicrypt as ctd-decoder does, keys from
// --decryption-keys-path included, so images of every ocicrypt scheme
// pull; podkey's scheme goes through the keyprovider socket named by
// OCICRYPT_KEYPROVIDER_CONFIG. Two differences: it copies in large
// blocks, and when a layer cannot be decrypted it makes sure containerd
// reports why (see holdOutput).
package decodercmd

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	cryptutils "github.com/containers/ocicrypt/utils"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// PayloadURI is the type URL of imgcrypt's payload.
const PayloadURI = "io.containerd.ocicrypt.v1.Payload"

// Payload is imgcrypt's Payload (imgcrypt.Payload, JSON in the Any).
type Payload struct {
	DecryptConfig config.DecryptConfig
	Descriptor    ocispec.Descriptor
}

// MarshalPayload encodes a payload as containerd hands it over (tests and
// benchmarks).
func MarshalPayload(p Payload) ([]byte, error) {
	js, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(&anypb.Any{TypeUrl: PayloadURI, Value: js})
}

// ParsePayload decodes the payload.
func ParsePayload(data []byte) (*Payload, error) {
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("payload is not a protobuf Any: %w", err)
	}
	if a.TypeUrl != PayloadURI {
		return nil, fmt.Errorf("payload type %q, want %s", a.TypeUrl, PayloadURI)
	}
	var p Payload
	if err := json.Unmarshal(a.Value, &p); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	return &p, nil
}

// keysFromDir reads the private keys in dir as ctd-decoder does (every
// regular file, symbolic links refused) into a decrypt configuration.
func keysFromDir(dir string) (*config.DecryptConfig, error) {
	var keys []string
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return errors.New("symbolic links are not supported in the decryption keys directory")
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		keys = append(keys, base64.StdEncoding.EncodeToString(b))
		return nil
	})
	if err != nil || len(keys) == 0 {
		return &config.DecryptConfig{}, err
	}
	sorted, err := cryptutils.SortDecryptionKeys(strings.Join(keys, ","))
	if err != nil {
		return nil, err
	}
	return config.InitDecryption(sorted).DecryptConfig, nil
}

// Decode decrypts the layer on in to out.
func Decode(payload []byte, keysDir string, in io.Reader, out io.Writer) error {
	p, err := ParsePayload(payload)
	if err != nil {
		return err
	}
	dc := &p.DecryptConfig
	if keysDir != "" {
		fromDir, err := keysFromDir(keysDir)
		if err != nil {
			return fmt.Errorf("decryption keys in %s: %w", keysDir, err)
		}
		dc = config.CombineCryptoConfigs([]config.CryptoConfig{{DecryptConfig: fromDir}, {DecryptConfig: dc}}).DecryptConfig
	}
	r, _, err := ocicrypt.DecryptLayer(dc, in, p.Descriptor, false)
	if err != nil {
		return fmt.Errorf("layer %s not decrypted: %w", p.Descriptor.Digest, err)
	}
	if _, err := io.CopyBuffer(out, r, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("layer %s: %w", p.Descriptor.Digest, err)
	}
	return nil
}

// HoldArg makes the binary a holder of its stdout (see holdOutput).
const HoldArg = "--hold-output-for-containerd"

// holdOutput keeps the layer's output pipe open for a moment after this
// process exits with an error. containerd (1.6, 1.7) learns a processor's
// error only once it has reaped it, but checks for it as soon as the
// output ends: when both happen at exit, the reason is lost and the pull
// fails with a digest mismatch instead. A short-lived child holding the
// pipe lets the reason (podkey's, or ocicrypt's) reach the kubelet's
// event.
func holdOutput() {
	self, err := os.Executable()
	if err != nil {
		return
	}
	c := exec.Command(self, HoldArg)
	c.Stdout = os.Stdout
	_ = c.Start()
}

// Hold is the holder's work.
func Hold() { time.Sleep(500 * time.Millisecond) }

// Main runs the decoder and returns its exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && args[0] == HoldArg {
		Hold()
		return 0
	}
	keysDir := ""
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "--decryption-keys-path" && i+1 < len(args):
			keysDir = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--decryption-keys-path="):
			keysDir = strings.TrimPrefix(args[i], "--decryption-keys-path=")
		default:
			fmt.Fprintf(stderr, "podkey-image-decoder: unknown argument %q (containerd's stream processor for encrypted layers; it takes --decryption-keys-path DIR)\n", args[i])
			return 2
		}
	}
	payload, err := io.ReadAll(os.NewFile(3, "payload"))
	if err != nil {
		fmt.Fprintf(stderr, "podkey-image-decoder: payload on fd 3: %v\n", err)
		return 1
	}
	if err := Decode(payload, keysDir, os.Stdin, stdout); err != nil {
		holdOutput()
		fmt.Fprintf(stderr, "podkey-image-decoder: %v\n", err)
		return 1
	}
	return 0
}
