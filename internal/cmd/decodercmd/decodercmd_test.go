package decodercmd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	godigest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/cmd/decodercmd"
	"github.com/podkey/podkey/internal/node/imagekeys"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/image/imagecrypt/imagecrypttest"
	"github.com/podkey/podkey/pkg/image/imageenc"
	"github.com/podkey/podkey/pkg/suite"
)

// layers returns each layer's payload (as containerd builds it) and its
// encrypted bytes, with the plain digest it must decrypt to.
func layers(t *testing.T, enc, plain v1.Image) (payloads, blobs [][]byte, digests []string) {
	m, _ := enc.Manifest()
	pl, _ := plain.Layers()
	for i, d := range m.Layers {
		desc := imageenc.OCIDescriptor(d)
		p, err := decodercmd.MarshalPayload(decodercmd.Payload{Descriptor: desc})
		if err != nil {
			t.Fatal(err)
		}
		l, _ := enc.LayerByDigest(d.Digest)
		rc, _ := l.Compressed()
		b, _ := io.ReadAll(rc)
		dg, _ := pl[i].Digest()
		payloads, blobs, digests = append(payloads, p), append(blobs, b), append(digests, dg.String())
	}
	return
}

func TestDecodesPodkeyAndJWELayers(t *testing.T) {
	dir, _ := os.MkdirTemp("", "pkdec")
	t.Cleanup(func() { os.RemoveAll(dir) })
	node := imagecrypttest.NewKey(t, "cluster-a", suite.GM)
	keyd := &imagecrypttest.Keyd{Keys: map[string]*imagecrypttest.Key{"cluster-a": node}}
	p := imagekeys.New(imagekeys.Options{Keyd: keyd, CacheTTL: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Serve(ctx, filepath.Join(dir, "kp.sock")) }()
	t.Cleanup(func() { cancel(); <-done })
	ocicrypt.RegisterKeyWrapper("provider."+imagecrypt.Scheme,
		keyprovider.NewKeyWrapper(imagecrypt.Scheme, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + filepath.Join(dir, "kp.sock")}))

	plain, _ := random.Image(128<<10, 3)
	enc, _, err := imageenc.Encrypt(plain, []imagecrypt.Recipient{imagecrypttest.NewKey(t, "other", suite.GM).Recipient, node.Recipient})
	if err != nil {
		t.Fatal(err)
	}
	payloads, blobs, digests := layers(t, enc, plain)
	for i := range payloads {
		var out bytes.Buffer
		if err := decodercmd.Decode(payloads[i], "", bytes.NewReader(blobs[i]), &out); err != nil {
			t.Fatal(err)
		}
		if godigest.FromBytes(out.Bytes()).String() != digests[i] {
			t.Fatalf("podkey layer %d decoded to another blob", i)
		}
	}
	if keyd.Calls.Load() != 1 {
		t.Fatalf("%d keyd calls for 3 layers", keyd.Calls.Load())
	}

	// A JWE layer, its key in the keys directory as ctd-decoder reads it.
	jk, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&jk.PublicKey)
	cc, _ := config.EncryptWithJwe([][]byte{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})})
	jweImg, _, err := imageenc.EncryptWith(plain, imageenc.JWE(cc.EncryptConfig))
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(dir, "keys")
	_ = os.Mkdir(keys, 0o700)
	privDER, _ := x509.MarshalPKCS8PrivateKey(jk)
	_ = os.WriteFile(filepath.Join(keys, "node.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600)
	payloads, blobs, digests = layers(t, jweImg, plain)
	var out bytes.Buffer
	if err := decodercmd.Decode(payloads[0], keys, bytes.NewReader(blobs[0]), &out); err != nil {
		t.Fatal(err)
	}
	if godigest.FromBytes(out.Bytes()).String() != digests[0] {
		t.Fatal("JWE layer decoded to another blob")
	}
	if err := decodercmd.Decode(payloads[0], filepath.Join(dir, "empty"), bytes.NewReader(blobs[0]), io.Discard); err == nil {
		t.Fatal("a JWE layer decoded without its key")
	}

	// A refusal names its reason.
	keyd.Refuse = status.Error(codes.PermissionDenied, `policy does not allow node "n9"`)
	p.Close()
	payloads, blobs, _ = layers(t, enc, plain)
	err = decodercmd.Decode(payloads[0], "", bytes.NewReader(blobs[0]), io.Discard)
	if err == nil || !strings.Contains(err.Error(), `policy does not allow node "n9"`) {
		t.Fatalf("refusal: %v", err)
	}
}

func FuzzParsePayload(f *testing.F) {
	p, _ := decodercmd.MarshalPayload(decodercmd.Payload{Descriptor: ocispec.Descriptor{MediaType: "x", Annotations: map[string]string{"a": "b"}}})
	f.Add(p)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodercmd.ParsePayload(data)
		if err == nil && p == nil {
			t.Fatal("no payload and no error")
		}
		_ = errors.Unwrap(err)
		_ = fmt.Sprint(err)
	})
}
