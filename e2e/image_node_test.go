package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podkey/podkey/e2e/cluster"
	"github.com/podkey/podkey/pkg/image/imageenc"
)

// ctdDecoder builds (once, cached) containerd's image decoder from
// imgcrypt v1.1.8 and returns its binary.
func ctdDecoder(t testing.TB) string { return hackOutput(t, "ctd-decoder.sh") }

// serviceImage is the pause image's layer plus four layers of sizes a
// service image has (2, 4, 8 and 16 MiB of incompressible data): five
// layers that the container runtime must unpack before the pod runs.
func serviceImage(node *cluster.Node) (v1.Image, error) {
	base, err := tarball.ImageFromPath(filepath.Join(node.Dir, "images", "pause.tar"), nil)
	if err != nil {
		return nil, err
	}
	img := base
	for i, mib := range []int{2, 4, 8, 16} {
		data := make([]byte, mib<<20)
		_, _ = rand.Read(data)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("srv/data-%d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		_, _ = tw.Write(data)
		_ = tw.Close()
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// imagePod runs image's /pause on the node, pulling it if absent.
func (pc *podkeyCluster) imagePod(ctx context.Context, name, image string) *corev1.Pod {
	_ = pc.c.Namespace(ctx, "images")
	p, err := pc.c.Admin.CoreV1().Pods("images").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "app", Image: image, Command: []string{"/pause"},
				ImagePullPolicy: corev1.PullIfNotPresent}}},
	}, metav1.CreateOptions{})
	if err != nil {
		pc.t.Fatal(err)
	}
	return p
}

// waitRunning waits until the pod's container runs.
func (pc *podkeyCluster) waitRunning(ctx context.Context, p *corev1.Pod, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		cur, err := pc.c.Admin.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil {
			for _, cs := range cur.Status.ContainerStatuses {
				if cs.State.Running != nil {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			pc.t.Fatalf("pod %s not running:\n%s\n%s", p.Name, pc.events(ctx, p), tail(pc.podkeyLogs()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// imageLab is what the node's encrypted-image steps share: a registry on
// 127.0.0.1 (in this process), the decoder and keyprovider configuration
// on the node, image keys (this node's, 19 of other sites, one no rule
// gives this node), the policy's image rule, and a JWE key in the
// decoder's keys directory.
type imageLab struct {
	pc         *podkeyCluster
	host       string
	socket     string
	recipients []string // -r FILE ... for the CLI: 20 keys, this node's last
	other      string   // recipient file of a key this node may not use
	jwe        *config.EncryptConfig
}

func (pc *podkeyCluster) newImageLab() *imageLab {
	t := pc.t
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	lab := &imageLab{pc: pc, host: strings.TrimPrefix(reg.URL, "http://"), socket: filepath.Join(pc.node.Dir, "run-podkey", "keyprovider.sock")}
	lab.useDecoder(filepath.Join(pc.bin, "podkey-image-decoder"))
	keys := filepath.Join(pc.dir, "image-keys")
	_ = os.MkdirAll(keys, 0o700)
	create := func(id string) string {
		f := filepath.Join(keys, id+".pem")
		if out, code := pc.admin("", "image", "keys", "create", id, "--suite", "intl", "-o", f); code != 0 {
			t.Fatalf("image keys create %s: %s", id, out)
		}
		return f
	}
	for i := range 19 {
		lab.recipients = append(lab.recipients, "-r", create(fmt.Sprintf("site-%02d", i)))
	}
	lab.recipients = append(lab.recipients, "-r", create("kube-nodes"))
	lab.other = create("other-cluster")
	policy, code := pc.admin("", "policy", "get")
	if code != 0 {
		t.Fatal(policy)
	}
	policy = strings.TrimRight(policy, "\n") + "\nimageRules:\n- {nodes: [\"kube-node-*\"], imageKeys: [kube-nodes]}\n"
	polFile := filepath.Join(pc.dir, "policy-images.yaml")
	_ = os.WriteFile(polFile, []byte(policy), 0o600)
	if out, code := pc.admin("", "policy", "set", polFile); code != 0 {
		t.Fatalf("policy set: %s", out)
	}
	// A JWE key pair, the private half in the decoder's keys directory.
	jk, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&jk.PublicKey)
	jweCfg, err := config.EncryptWithJwe([][]byte{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})})
	if err != nil {
		t.Fatal(err)
	}
	lab.jwe = jweCfg.EncryptConfig
	privDER, _ := x509.MarshalPKCS8PrivateKey(jk)
	jweKey := filepath.Join(pc.node.OcicryptDir, "keys", "jwe.pem")
	_ = os.WriteFile(jweKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600)
	t.Cleanup(func() { os.Remove(jweKey) })
	return lab
}

func (lab *imageLab) ref(tag string) string { return lab.host + "/podkey-e2e/app:" + tag }

// useDecoder makes containerd run decoder for encrypted layers.
func (lab *imageLab) useDecoder(decoder string) {
	if err := lab.pc.node.EnableImageDecryption(decoder, lab.socket); err != nil {
		lab.pc.t.Fatal(err)
	}
}

// push stores a new service image under tag: plain, encrypted by the CLI
// for the recipients (podkey), or with JWE. Every image has its own layer
// data: the runtime reuses layers it unpacked before, whatever image names
// them (see docs/images.md on key_model "node"), so no two may share one.
func (lab *imageLab) push(ctx context.Context, tag, kind string, recipients ...string) string {
	t := lab.pc.t
	img, err := serviceImage(lab.pc.node)
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case "podkey":
		r, _ := name.ParseReference(lab.ref("src-" + tag))
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		args := append(append([]string{"image", "encrypt"}, recipients...), lab.ref("src-"+tag), lab.ref(tag))
		if out, code := lab.pc.admin("", args...); code != 0 {
			t.Fatalf("image encrypt: %s", out)
		}
	case "jwe":
		if img, _, err = imageenc.EncryptWith(img, imageenc.JWE(lab.jwe)); err != nil {
			t.Fatal(err)
		}
		fallthrough
	default:
		if err := imageenc.Write(ctx, imageenc.Ref(lab.ref(tag)), img); err != nil {
			t.Fatal(err)
		}
	}
	return lab.ref(tag)
}

// pullToRunning runs a pod of the image and returns the time from its
// creation until its container runs.
func (lab *imageLab) pullToRunning(ctx context.Context, podName, image string) time.Duration {
	start := time.Now()
	p := lab.pc.imagePod(ctx, podName, image)
	lab.pc.waitRunning(ctx, p, 3*time.Minute)
	d := time.Since(start)
	lab.pc.deletePod(ctx, p)
	return d
}

// encryptedImages: the kubelet pulls images from a registry on 127.0.0.1
// through containerd's CRI and its ocicrypt stream processors, the layers
// decrypted by podkey-image-decoder through podkey-csi's keyprovider: an
// image encrypted by `podkey image encrypt` for 20 image keys (this
// node's last) runs, and so does one through imgcrypt's ctd-decoder; one
// encrypted for a key the policy does not give this node fails with
// podkey's reason in the pod's events; a JWE image still pulls beside
// them. keyd's audit shows one unwrap per image. It returns the layer
// keys, for the scan of the node's state and logs.
func (pc *podkeyCluster) encryptedImages(ctx context.Context) [][]byte {
	t := pc.t
	lab := pc.newImageLab()
	images := map[string]string{}
	for _, v := range []struct{ tag, kind string }{{"plain", "plain"}, {"jwe", "jwe"}, {"podkey", "podkey"}, {"podkey-ctd", "podkey"}} {
		images[v.tag] = lab.push(ctx, v.tag, v.kind, lab.recipients...)
	}
	images["other"] = lab.push(ctx, "other", "podkey", "-r", lab.other)
	if out, code := pc.admin("", "image", "inspect", images["podkey"]); code != 0 || strings.Count(out, "provider.podkey") != 5 {
		t.Fatalf("inspect: %s", out)
	} else {
		t.Logf("podkey image inspect:\n%s", out)
	}
	times := map[string]time.Duration{}
	for _, tag := range []string{"plain", "jwe", "podkey"} {
		times[tag] = lab.pullToRunning(ctx, "image-"+tag, images[tag])
	}
	t.Logf("pull to running (five layers, 30 MiB): plain %s, JWE %s, podkey %s (%.2f× plain)",
		times["plain"].Round(time.Millisecond), times["jwe"].Round(time.Millisecond), times["podkey"].Round(time.Millisecond),
		float64(times["podkey"])/float64(times["plain"]))

	// The same kind of image through imgcrypt's ctd-decoder: the protocol
	// is ocicrypt's, whichever decoder containerd runs.
	lab.useDecoder(ctdDecoder(t))
	t.Logf("pull to running through ctd-decoder: %s", lab.pullToRunning(ctx, "image-podkey-ctd", images["podkey-ctd"]).Round(time.Millisecond))
	lab.useDecoder(filepath.Join(pc.bin, "podkey-image-decoder"))

	refusedPod := pc.imagePod(ctx, "image-other", images["other"])
	pc.waitEvent(ctx, refusedPod, `policy does not allow node "kube-node-1"`, 2*time.Minute)
	t.Logf("refused pull, as the pod's events show it:\n%s", pc.events(ctx, refusedPod))
	pc.deletePod(ctx, refusedPod)

	audit, code := pc.admin("", "audit", "export")
	if code != 0 {
		t.Fatal(audit)
	}
	var unwraps, refusals int
	for _, l := range strings.Split(audit, "\n") {
		switch {
		case strings.Contains(l, `"action":"image.unwrap"`) && strings.Contains(l, `"result":"ok"`) && strings.Contains(l, "image-key/kube-nodes"):
			unwraps++
		case strings.Contains(l, `"action":"image.unwrap"`) && strings.Contains(l, `"result":"denied"`) && strings.Contains(l, `"node":"kube-node-1"`):
			refusals++
		}
	}
	if unwraps != 2 || refusals == 0 {
		t.Fatalf("audit: %d unwraps (want one per image of five layers: 2), %d refusals", unwraps, refusals)
	}
	t.Logf("keyd's audit: %d unwraps for kube-node-1 (two images of five layers), %d refusals", unwraps, refusals)

	// The layer keys, unwrapped once more through the node's socket, must
	// appear nowhere on the node.
	enc, err := imageenc.Read(ctx, imageenc.Ref(images["podkey"]))
	if err != nil {
		t.Fatal(err)
	}
	var secrets [][]byte
	for _, k := range layerKeysOf(t, imageNode{sock: lab.socket}, enc) {
		secrets = append(secrets, k, []byte(base64.StdEncoding.EncodeToString(k)))
	}
	return secrets
}

// BenchmarkImagePull measures, on the real node, from a pod's creation
// until its container runs, for a five-layer service image (30 MiB) pulled
// through containerd's CRI from a registry on 127.0.0.1: plain, JWE-
// encrypted, and podkey-encrypted for 20 image keys (the node's last),
// the encrypted layers decrypted by podkey-image-decoder. A new image per
// pull (interleaved, medians of PODKEY_IMAGE_PULL_ROUNDS, default 5).
// Run it in its own go test process (the node is installed once per
// process).
func BenchmarkImagePull(b *testing.B) {
	pc := startPodkeyCluster(b)
	ctx := context.Background()
	lab := pc.newImageLab()
	res := map[string][]float64{}
	kinds := []string{"plain", "jwe", "podkey"}
	for round := range b.N * envInt("PODKEY_IMAGE_PULL_ROUNDS", 5) {
		for i := range kinds {
			kind := kinds[(i+round)%len(kinds)]
			tag := fmt.Sprintf("%s-%d", kind, round)
			img := lab.push(ctx, tag, kind, lab.recipients...)
			res[kind] = append(res[kind], ms(lab.pullToRunning(ctx, "pull-"+tag, img)))
		}
	}
	for _, k := range kinds {
		b.ReportMetric(median(res[k]), k+"-ms")
	}
	b.ReportMetric(median(res["podkey"])/median(res["plain"]), "podkey/plain")
	b.ReportMetric(median(res["jwe"])/median(res["plain"]), "jwe/plain")
}
