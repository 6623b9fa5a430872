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
	"github.com/containers/ocicrypt/keywrap/jwe"
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
	"github.com/podkey/podkey/pkg/imageenc"
)

// ctdDecoder builds (once, cached) containerd's image decoder from
// imgcrypt v1.1.8 and returns its binary.
func ctdDecoder(t testing.TB) string { return hackOutput(t, "ctd-decoder.sh") }

// jweWrapper is ocicrypt's JWE scheme, for images that podkey nodes must
// still pull.
type jweWrapper struct{ ec *config.EncryptConfig }

func (jweWrapper) AnnotationID() string { return "org.opencontainers.image.enc.keys.jwe" }
func (w jweWrapper) Wrap(opts []byte) ([]byte, error) {
	return jwe.NewKeyWrapper().WrapKeys(w.ec, opts)
}

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

// encryptedImages: the kubelet pulls images from a registry on 127.0.0.1
// through containerd's CRI and its ocicrypt stream processors, the layers
// decrypted by containerd's decoder through podkey-csi's keyprovider: an
// image encrypted by `podkey image encrypt` for 20 image keys (this
// node's last) runs; one encrypted for a key the policy does not give
// this node fails with podkey's reason in the pod's events; a JWE image
// still pulls beside them. keyd's audit shows the unwraps. It returns the
// layer keys, for the scan of the node's state and logs.
func (pc *podkeyCluster) encryptedImages(ctx context.Context) [][]byte {
	t := pc.t
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	ref := func(tag string) string { return host + "/podkey-e2e/app:" + tag }
	socket := filepath.Join(pc.node.Dir, "run-podkey", "keyprovider.sock")
	if err := pc.node.EnableImageDecryption(filepath.Join(pc.bin, "podkey-image-decoder"), socket); err != nil {
		t.Fatal(err)
	}
	// One image per variant, of the same sizes but their own data: the
	// runtime reuses layers it unpacked before, whatever image names them
	// (see the README on key_model "node"), so no variant may share a
	// layer with another.
	plain := map[string]v1.Image{}
	for _, tag := range []string{"plain", "jwe", "podkey", "podkey-ctd", "other"} {
		img, err := serviceImage(pc.node)
		if err != nil {
			t.Fatal(err)
		}
		plain[tag] = img
		r, _ := name.ParseReference(ref("src-" + tag))
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
	}
	plainRef, _ := name.ParseReference(ref("plain"))
	if err := remote.Write(plainRef, plain["plain"]); err != nil {
		t.Fatal(err)
	}

	// Image keys: this node's, 19 of other sites, and one no rule gives
	// this node. Recipient files are all encryption needs.
	keys := filepath.Join(pc.dir, "image-keys")
	_ = os.MkdirAll(keys, 0o700)
	var recipients []string
	create := func(id, suite string) string {
		f := filepath.Join(keys, id+".pem")
		if out, code := pc.admin("", "image", "keys", "create", id, "--suite", suite, "-o", f); code != 0 {
			t.Fatalf("image keys create %s: %s", id, out)
		}
		return f
	}
	for i := range 19 {
		recipients = append(recipients, "-r", create(fmt.Sprintf("site-%02d", i), "intl"))
	}
	recipients = append(recipients, "-r", create("kube-nodes", "intl"))
	other := create("other-cluster", "intl")
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
	encrypt := func(tag string, rs ...string) {
		args := append(append([]string{"image", "encrypt"}, rs...), ref("src-"+tag), ref(tag))
		if out, code := pc.admin("", args...); code != 0 {
			t.Fatalf("image encrypt: %s", out)
		} else {
			t.Logf("podkey image encrypt: %s", out)
		}
	}
	encrypt("podkey", recipients...)
	encrypt("podkey-ctd", recipients...)
	encrypt("other", "-r", other)
	if out, code := pc.admin("", "image", "inspect", ref("podkey")); code != 0 || strings.Count(out, "provider.podkey") != 5 {
		t.Fatalf("inspect: %s", out)
	} else {
		t.Logf("podkey image inspect:\n%s", out)
	}
	// A JWE image, its RSA key in the decoder's keys directory.
	jk, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&jk.PublicKey)
	jweCfg, err := config.EncryptWithJwe([][]byte{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})})
	if err != nil {
		t.Fatal(err)
	}
	jweImg, _, err := imageenc.EncryptWith(plain["jwe"], jweWrapper{jweCfg.EncryptConfig})
	if err != nil {
		t.Fatal(err)
	}
	if err := imageenc.Write(ctx, imageenc.Ref(ref("jwe")), jweImg); err != nil {
		t.Fatal(err)
	}
	privDER, _ := x509.MarshalPKCS8PrivateKey(jk)
	jweKey := filepath.Join(pc.node.OcicryptDir, "keys", "jwe.pem")
	_ = os.WriteFile(jweKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600)
	defer os.Remove(jweKey)

	times := map[string]time.Duration{}
	for _, tag := range []string{"plain", "jwe", "podkey"} {
		start := time.Now()
		p := pc.imagePod(ctx, "image-"+tag, ref(tag))
		pc.waitRunning(ctx, p, 3*time.Minute)
		times[tag] = time.Since(start)
		pc.deletePod(ctx, p)
	}
	t.Logf("pull to running (five layers, 30 MiB): plain %s, JWE %s, podkey %s (%.2f× plain)",
		times["plain"].Round(time.Millisecond), times["jwe"].Round(time.Millisecond), times["podkey"].Round(time.Millisecond),
		float64(times["podkey"])/float64(times["plain"]))

	// The same kind of image through imgcrypt's ctd-decoder: the protocol
	// is ocicrypt's, whichever decoder containerd runs.
	if err := pc.node.EnableImageDecryption(ctdDecoder(t), socket); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	viaCtd := pc.imagePod(ctx, "image-podkey-ctd", ref("podkey-ctd"))
	pc.waitRunning(ctx, viaCtd, 3*time.Minute)
	t.Logf("pull to running through ctd-decoder: %s", time.Since(start).Round(time.Millisecond))
	pc.deletePod(ctx, viaCtd)
	if err := pc.node.EnableImageDecryption(filepath.Join(pc.bin, "podkey-image-decoder"), socket); err != nil {
		t.Fatal(err)
	}

	refusedPod := pc.imagePod(ctx, "image-other", ref("other"))
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
	if unwraps == 0 || refusals == 0 {
		t.Fatalf("audit: %d unwraps, %d refusals", unwraps, refusals)
	}
	t.Logf("keyd's audit: %d unwraps for kube-node-1 (five layers), %d refusals", unwraps, refusals)

	// The layer keys, unwrapped once more through the node's socket, must
	// appear nowhere on the node.
	enc, err := imageenc.Read(ctx, imageenc.Ref(ref("podkey")))
	if err != nil {
		t.Fatal(err)
	}
	var secrets [][]byte
	for _, k := range layerKeysOf(t, imageNode{sock: socket}, enc) {
		secrets = append(secrets, k, []byte(base64.StdEncoding.EncodeToString(k)))
	}
	return secrets
}
