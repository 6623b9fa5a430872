package imagekeys_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/internal/node/imagekeys"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/image/imagecrypt/imagecrypttest"
	"github.com/podkey/podkey/pkg/image/imageenc"
	"github.com/podkey/podkey/pkg/suite"
)

// serve runs the provider on a socket and points ocicrypt's podkey
// keyprovider at it, as OCICRYPT_KEYPROVIDER_CONFIG does for containerd's
// decoder.
func serve(t *testing.T, o imagekeys.Options) *imagekeys.Provider {
	t.Helper()
	dir, err := os.MkdirTemp("", "kp") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kp.sock")
	p := imagekeys.New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-done })
	ocicrypt.RegisterKeyWrapper("provider."+imagecrypt.Scheme,
		keyprovider.NewKeyWrapper(imagecrypt.Scheme, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + sock}))
	return p
}

// decrypt decrypts every layer of img as containerd's decoder does, and
// checks each against the plain layer.
func decrypt(t *testing.T, enc, plain v1.Image) error {
	t.Helper()
	m, err := enc.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	plainLayers, _ := plain.Layers()
	for i, desc := range m.Layers {
		l, err := enc.LayerByDigest(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := l.Compressed()
		r, _, err := ocicrypt.DecryptLayer(&config.DecryptConfig{}, rc, imageenc.OCIDescriptor(desc), false)
		if err != nil {
			return err
		}
		got, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		// The decrypted blob is the plain layer: its digest is the one the
		// manifest named before encryption.
		wantDigest, _ := plainLayers[i].Digest()
		if gotDigest := digest.FromBytes(got); gotDigest.String() != wantDigest.String() {
			t.Fatalf("layer %d decrypted to %s, want %s", i, gotDigest, wantDigest)
		}
	}
	return nil
}

func TestOcicryptDecryptsThroughTheProviderWithOneKeydCallPerImage(t *testing.T) {
	for _, st := range suite.All {
		t.Run(string(st), func(t *testing.T) {
			node := imagecrypttest.NewKey(t, "cluster-a", st)
			keyd := &imagecrypttest.Keyd{Keys: map[string]*imagecrypttest.Key{"cluster-a": node}}
			now := time.Now()
			var mu sync.Mutex
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			p := serve(t, imagekeys.Options{Keyd: keyd, CacheTTL: time.Minute, Now: clock})

			var rs []imagecrypt.Recipient
			for i := range 19 {
				rs = append(rs, imagecrypttest.NewKey(t, fmt.Sprintf("site-%02d", i), st).Recipient)
			}
			rs = append(rs, node.Recipient) // the node's key last of 20
			plain, err := random.Image(64<<10, 5)
			if err != nil {
				t.Fatal(err)
			}
			enc, res, err := imageenc.Encrypt(plain, rs)
			if err != nil {
				t.Fatal(err)
			}
			if res.Layers != 5 {
				t.Fatalf("%d layers", res.Layers)
			}
			if err := decrypt(t, enc, plain); err != nil {
				t.Fatal(err)
			}
			if n := keyd.Calls.Load(); n != 1 {
				t.Fatalf("%d keyd calls for one image of 5 layers", n)
			}
			// After the cache time, the key is zeroed and asked for again.
			mu.Lock()
			now = now.Add(time.Minute)
			mu.Unlock()
			p.Expire()
			if p.Cached() != 0 {
				t.Fatal("expired key still held")
			}
			if err := decrypt(t, enc, plain); err != nil {
				t.Fatal(err)
			}
			if n := keyd.Calls.Load(); n != 2 {
				t.Fatalf("%d keyd calls after expiry", n)
			}

			// Inspect names the recipients and the key set, no key.
			infos, err := imageenc.Inspect(enc)
			if err != nil {
				t.Fatal(err)
			}
			for _, li := range infos {
				if !li.Encrypted || li.KeySet != res.KeySet || len(li.ImageKeys) != 20 || li.Suite != string(st) {
					t.Fatalf("inspect: %+v", li)
				}
			}
			// A second encryption of the same image: new key set, new call.
			enc2, res2, err := imageenc.Encrypt(plain, rs)
			if err != nil || res2.KeySet == res.KeySet {
				t.Fatalf("second encryption key set %q, %v", res2.KeySet, err)
			}
			if err := decrypt(t, enc2, plain); err != nil || keyd.Calls.Load() != 3 {
				t.Fatalf("second image: %v, %d calls", err, keyd.Calls.Load())
			}
			if _, _, err := imageenc.Encrypt(enc, rs); err == nil || !strings.Contains(err.Error(), "encrypted already") {
				t.Fatalf("re-encrypting: %v", err)
			}
		})
	}
}

func TestRefusalsReachTheDecoder(t *testing.T) {
	node := imagecrypttest.NewKey(t, "cluster-a", suite.Intl)
	keyd := &imagecrypttest.Keyd{Keys: map[string]*imagecrypttest.Key{"cluster-a": node},
		Refuse: status.Error(codes.PermissionDenied, `policy does not allow node "n1" to unwrap images encrypted for image keys cluster-a`)}
	p := serve(t, imagekeys.Options{Keyd: keyd, CacheTTL: time.Minute})
	plain, _ := random.Image(1024, 2)
	enc, _, err := imageenc.Encrypt(plain, []imagecrypt.Recipient{node.Recipient})
	if err != nil {
		t.Fatal(err)
	}
	err = decrypt(t, enc, plain)
	if err == nil || !strings.Contains(err.Error(), "podkey-keyd refused to unwrap the image key") || !strings.Contains(err.Error(), `node "n1"`) {
		t.Fatalf("refusal as the decoder sees it: %v", err)
	}
	if p.Cached() != 0 {
		t.Fatal("a refusal was cached")
	}
	// A layer whose sealed options were altered fails although its key set
	// (and so the cached key) is the image's.
	keyd.Refuse = nil
	if err := decrypt(t, enc, plain); err != nil {
		t.Fatal(err)
	}
	m, _ := enc.Manifest()
	desc := m.Layers[0]
	bl, _ := imagecrypt.Parse(mustB64(t, desc.Annotations[imagecrypt.AnnotationID]))
	bl.Sealed[0] ^= 1
	raw, _ := bl.Marshal()
	desc.Annotations[imagecrypt.AnnotationID] = b64(raw)
	l, _ := enc.LayerByDigest(desc.Digest)
	rc, _ := l.Compressed()
	if _, _, err := ocicrypt.DecryptLayer(&config.DecryptConfig{}, rc, imageenc.OCIDescriptor(desc), false); err == nil {
		t.Fatal("altered options opened")
	}
}
