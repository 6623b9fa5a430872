package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	p11 "github.com/containers/ocicrypt/crypto/pkcs11"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	godigest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/podkey/podkey/internal/cmd/decodercmd"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/node/imagekeys"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/image/imageenc"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/suite"
)

// unwrapBench is one run's fixtures: keyd as its own process on a
// SoftHSM2 token, the node's keyprovider in this process (the decoder's
// side), and the node's RSA key for ocicrypt's PKCS#11 scheme on the same
// token.
type unwrapBench struct {
	w        *world
	keyd     keydv1.KeydClient
	nodeRec  imagecrypt.Recipient
	rsaPriv  *rsa.PrivateKey
	p11conf  *p11.Pkcs11Config
	p11yaml  []byte
	perLayer string // keyprovider socket, no cache
	cached   string // keyprovider socket, content keys cached
	cache    *imagekeys.Provider
}

func newUnwrapBench(b *testing.B) *unwrapBench {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	w := newWorld(b)
	w.startKeyd(ctx)
	u := &unwrapBench{w: w}
	conn, err := keydclient.Dial(keydclient.Options{Socket: w.sock()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	u.keyd = keydv1.NewKeydClient(conn)
	admin := keydv1.NewAdminClient(conn)
	k, err := admin.CreateImageKey(ctx, &keydv1.CreateImageKeyRequest{KeyId: "node-key", Suite: "intl"})
	if err != nil {
		b.Fatal(err)
	}
	if u.nodeRec, err = imagecrypt.ParseRecipient(k.RecipientPem); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.SetPolicy(ctx, &keydv1.PolicyDocument{Yaml: []byte("version: v1\nrules: []\nimageRules:\n- {nodes: [bench-node], imageKeys: [node-key]}\n")}); err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pkbench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	u.perLayer, u.cached = filepath.Join(dir, "per-layer.sock"), filepath.Join(dir, "cached.sock")
	perLayer := imagekeys.New(imagekeys.Options{Keyd: u.keyd, NodeName: "bench-node"})
	u.cache = imagekeys.New(imagekeys.Options{Keyd: u.keyd, NodeName: "bench-node", CacheTTL: time.Minute})
	go func() { _ = perLayer.Serve(ctx, u.perLayer) }()
	go func() { _ = u.cache.Serve(ctx, u.cached) }()

	// The node's RSA-2048 key on the same token, for ocicrypt's PKCS#11
	// scheme (SoftHSM2 does RSA-OAEP with SHA-1 only).
	if u.rsaPriv, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		b.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(u.rsaPriv)
	keyFile := filepath.Join(w.dir, "node-rsa.pem")
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	imp := exec.Command("softhsm2-util", "--import", keyFile, "--token", "e2e", "--label", "node-rsa", "--id", "0a0b", "--pin", e2ePIN)
	imp.Env = w.env
	if out, err := imp.CombinedOutput(); err != nil {
		b.Fatalf("import the node's RSA key: %v\n%s", err, out)
	}
	os.Remove(keyFile)
	b.Setenv("OCICRYPT_OAEP_HASHALG", "sha1")
	u.p11conf = &p11.Pkcs11Config{ModuleDirectories: []string{filepath.Dir(hsm.DefaultModule)}, AllowedModulePaths: []string{hsm.DefaultModule}}
	var conf string
	for _, e := range w.env {
		if v, ok := strings.CutPrefix(e, "SOFTHSM2_CONF="); ok {
			conf = v
		}
	}
	u.p11yaml = fmt.Appendf(nil, "pkcs11:\n  uri: pkcs11:token=e2e;object=node-rsa?pin-value=%s&module-path=%s\nmodule:\n  env:\n    SOFTHSM2_CONF: %s\n", e2ePIN, hsm.DefaultModule, conf)
	return u
}

// layerDesc encrypts a small layer with ocicrypt for the recipients of ec.
func layerDesc(b *testing.B, ec *config.EncryptConfig) ocispec.Descriptor {
	data := make([]byte, 4096)
	_, _ = rand.Read(data)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: godigest.FromBytes(data), Size: int64(len(data))}
	r, fin, err := ocicrypt.EncryptLayer(ec, bytes.NewReader(data), desc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadAll(r); err != nil {
		b.Fatal(err)
	}
	if desc.Annotations, err = fin(); err != nil {
		b.Fatal(err)
	}
	desc.MediaType += "+encrypted"
	return desc
}

func pubPEM(b *testing.B, pub any) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func useProvider(sock string) {
	ocicrypt.RegisterKeyWrapper("provider."+imagecrypt.Scheme,
		keyprovider.NewKeyWrapper(imagecrypt.Scheme, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + sock}))
}

// BenchmarkImageUnwrap compares, in one run and interleaved, the cost of
// unwrapping one layer's key through ocicrypt's DecryptLayer for an image
// with R recipients and the node's key first, in the middle or last:
// podkey's scheme (the node's keyprovider asks keyd, which does one ECDH
// on SoftHSM2 whatever R and the position), ocicrypt's JWE with RSA-2048
// keys (one private-key operation per recipient tried), and ocicrypt's
// PKCS#11 scheme with the node's RSA key on the same token (it loads the
// module and logs in per attempt). podkey-image5 is a five-layer image
// through the caching keyprovider (one keyd call), per layer.
func BenchmarkImageUnwrap(b *testing.B) {
	u := newUnwrapBench(b)
	rounds := envInt("PODKEY_IMAGE_BENCH_ROUNDS", 15)
	for _, r := range []int{1, 8, 20} {
		positions := []string{"first", "middle", "last"}
		if r == 1 {
			positions = []string{"only"}
		}
		for _, pos := range positions {
			b.Run(fmt.Sprintf("R=%d/%s", r, pos), func(b *testing.B) {
				at := map[string]int{"first": 0, "only": 0, "middle": r / 2, "last": r - 1}[pos]
				var podRecs []imagecrypt.Recipient
				var jwePubs, p11Pubs [][]byte
				var jwePriv []byte
				for i := 0; i < r; i++ {
					if i == at {
						podRecs = append(podRecs, u.nodeRec)
						jk, _ := rsa.GenerateKey(rand.Reader, 2048)
						der, _ := x509.MarshalPKCS8PrivateKey(jk)
						jwePriv = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
						jwePubs = append(jwePubs, pubPEM(b, &jk.PublicKey))
						p11Pubs = append(p11Pubs, pubPEM(b, &u.rsaPriv.PublicKey))
						continue
					}
					ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
					podRecs = append(podRecs, imagecrypt.Recipient{KeyID: fmt.Sprintf("site-%02d", i), Suite: suite.Intl, Public: &ek.PublicKey})
					rk, _ := rsa.GenerateKey(rand.Reader, 2048)
					jwePubs = append(jwePubs, pubPEM(b, &rk.PublicKey))
					p11Pubs = append(p11Pubs, pubPEM(b, &rk.PublicKey))
				}
				jweEnc, err := config.EncryptWithJwe(jwePubs)
				if err != nil {
					b.Fatal(err)
				}
				jweDesc := layerDesc(b, jweEnc.EncryptConfig)
				jweDec, _ := config.DecryptWithPrivKeys([][]byte{jwePriv}, [][]byte{nil})
				p11Enc, err := config.EncryptWithPkcs11(u.p11conf, p11Pubs, nil)
				if err != nil {
					b.Fatal(err)
				}
				p11Desc := layerDesc(b, p11Enc.EncryptConfig)
				p11Dec, err := config.DecryptWithPkcs11Yaml(u.p11conf, [][]byte{u.p11yaml})
				if err != nil {
					b.Fatal(err)
				}
				plain, _ := random.Image(4096, 5)
				enc, _, err := imageenc.Encrypt(plain, podRecs)
				if err != nil {
					b.Fatal(err)
				}
				m, _ := enc.Manifest()
				var podDescs []ocispec.Descriptor
				for _, l := range m.Layers {
					podDescs = append(podDescs, imageenc.OCIDescriptor(l))
				}
				none := &config.DecryptConfig{}
				unwrap := func(dc *config.DecryptConfig, d ocispec.Descriptor) time.Duration {
					start := time.Now()
					if _, _, err := ocicrypt.DecryptLayer(dc, nil, d, true); err != nil {
						b.Fatal(err)
					}
					return time.Since(start)
				}
				var podkey, image5, jwe, pkcs11 []float64
				for range b.N * rounds {
					useProvider(u.perLayer)
					podkey = append(podkey, ms(unwrap(none, podDescs[0])))
					useProvider(u.cached)
					u.cache.Close() // a new image: nothing cached
					var total time.Duration
					for _, d := range podDescs {
						total += unwrap(none, d)
					}
					image5 = append(image5, ms(total)/float64(len(podDescs)))
					jwe = append(jwe, ms(unwrap(jweDec.DecryptConfig, jweDesc)))
					pkcs11 = append(pkcs11, ms(unwrap(p11Dec.DecryptConfig, p11Desc)))
				}
				p, j, k, i5 := median(podkey), median(jwe), median(pkcs11), median(image5)
				b.ReportMetric(p, "podkey-ms")
				b.ReportMetric(i5, "podkey-image5-ms/layer")
				b.ReportMetric(j, "jwe-ms")
				b.ReportMetric(k, "pkcs11-ms")
				b.ReportMetric(j/p, "jwe/podkey")
				b.ReportMetric(k/p, "pkcs11/podkey")
				b.ReportMetric(j/i5, "jwe/podkey-image5")
			})
		}
	}
}

// layeredImage is an image of incompressible layers of the given sizes.
func layeredImage(b testing.TB, sizes ...int) v1.Image {
	var ls []v1.Layer
	for _, n := range sizes {
		l, err := random.Layer(int64(n), types.OCILayer)
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		b.Fatal(err)
	}
	return img
}

// decoderRun is one layer as containerd hands it to a stream processor.
type decoderRun struct {
	payload, blob []byte
}

func decoderRuns(b testing.TB, enc v1.Image) []decoderRun {
	m, err := enc.Manifest()
	if err != nil {
		b.Fatal(err)
	}
	var runs []decoderRun
	for _, d := range m.Layers {
		desc := imageenc.OCIDescriptor(d)
		p, err := decodercmd.MarshalPayload(decodercmd.Payload{Descriptor: desc})
		if err != nil {
			b.Fatal(err)
		}
		l, _ := enc.LayerByDigest(d.Digest)
		rc, _ := l.Compressed()
		blob, _ := io.ReadAll(rc)
		runs = append(runs, decoderRun{p, blob})
	}
	return runs
}

// decode runs a decoder process per layer, one after another as
// containerd unpacks, and returns the time for the whole image.
func decode(b testing.TB, bin string, env []string, keysDir string, runs []decoderRun) time.Duration {
	start := time.Now()
	for _, r := range runs {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		go func() { _, _ = pw.Write(r.payload); pw.Close() }()
		cmd := exec.Command(bin, "--decryption-keys-path", keysDir)
		cmd.ExtraFiles = []*os.File{pr}
		cmd.Stdin, cmd.Stdout, cmd.Env = bytes.NewReader(r.blob), io.Discard, env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err = cmd.Run()
		pr.Close()
		if err != nil {
			b.Fatalf("%s: %v\n%s", filepath.Base(bin), err, stderr.String())
		}
	}
	return time.Since(start)
}

// BenchmarkImageDecoder decrypts a five-layer image (1, 2, 4, 8 and
// 16 MiB) through containerd's decoder protocol, one process per layer,
// with R recipients and the node's key last: podkey's scheme beside JWE
// (RSA-2048, the node's key in the decoder's keys directory), each with
// imgcrypt's ctd-decoder and with podkey-image-decoder. The keyprovider
// caches the image's content key (a fresh image each round: one keyd
// call per image).
func BenchmarkImageDecoder(b *testing.B) {
	u := newUnwrapBench(b)
	ctd := ctdDecoder(b)
	own := filepath.Join(binaries(b), "podkey-image-decoder")
	conf := filepath.Join(u.w.dir, "keyprovider.conf")
	_ = os.WriteFile(conf, fmt.Appendf(nil, `{"key-providers": {"podkey": {"grpc": "unix://%s"}}}`, u.cached), 0o644)
	env := append(os.Environ(), "OCICRYPT_KEYPROVIDER_CONFIG="+conf)
	emptyKeys, jweKeys := filepath.Join(u.w.dir, "no-keys"), filepath.Join(u.w.dir, "jwe-keys")
	_ = os.MkdirAll(emptyKeys, 0o700)
	_ = os.MkdirAll(jweKeys, 0o700)
	plain := layeredImage(b, 1<<20, 2<<20, 4<<20, 8<<20, 16<<20)
	rounds := envInt("PODKEY_IMAGE_BENCH_ROUNDS", 15) / 3
	for _, r := range []int{1, 8, 20} {
		b.Run(fmt.Sprintf("R=%d/last", r), func(b *testing.B) {
			recs := []imagecrypt.Recipient{}
			var jwePubs [][]byte
			var jwePriv []byte
			for i := 0; i < r-1; i++ {
				ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				recs = append(recs, imagecrypt.Recipient{KeyID: fmt.Sprintf("site-%02d", i), Suite: suite.Intl, Public: &ek.PublicKey})
				rk, _ := rsa.GenerateKey(rand.Reader, 2048)
				jwePubs = append(jwePubs, pubPEM(b, &rk.PublicKey))
			}
			recs = append(recs, u.nodeRec)
			jk, _ := rsa.GenerateKey(rand.Reader, 2048)
			jwePubs = append(jwePubs, pubPEM(b, &jk.PublicKey))
			der, _ := x509.MarshalPKCS8PrivateKey(jk)
			jwePriv = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
			_ = os.WriteFile(filepath.Join(jweKeys, "node.pem"), jwePriv, 0o600)
			podImg, _, err := imageenc.Encrypt(plain, recs)
			if err != nil {
				b.Fatal(err)
			}
			cc, _ := config.EncryptWithJwe(jwePubs)
			jweImg, _, err := imageenc.EncryptWith(plain, imageenc.JWE(cc.EncryptConfig))
			if err != nil {
				b.Fatal(err)
			}
			podRuns, jweRuns := decoderRuns(b, podImg), decoderRuns(b, jweImg)
			res := map[string][]float64{}
			for range b.N * rounds {
				for _, dec := range []struct{ name, bin string }{{"ctd", ctd}, {"own", own}} {
					u.cache.Close()
					res[dec.name+"-podkey"] = append(res[dec.name+"-podkey"], ms(decode(b, dec.bin, env, emptyKeys, podRuns)))
					res[dec.name+"-jwe"] = append(res[dec.name+"-jwe"], ms(decode(b, dec.bin, env, jweKeys, jweRuns)))
				}
			}
			for _, k := range []string{"ctd-podkey", "ctd-jwe", "own-podkey", "own-jwe"} {
				b.ReportMetric(median(res[k]), k+"-ms")
			}
			b.ReportMetric(median(res["ctd-jwe"])/median(res["ctd-podkey"]), "jwe/podkey(ctd)")
			b.ReportMetric(median(res["own-jwe"])/median(res["own-podkey"]), "jwe/podkey(own)")
			b.ReportMetric(median(res["ctd-podkey"])/median(res["own-podkey"]), "ctd/own(podkey)")
		})
	}
}
