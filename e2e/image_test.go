package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	godigest "github.com/opencontainers/go-digest"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/image/imageenc"
)

// imageNode is a podkey-csi process serving the image keyprovider for a
// node, with its node certificate from the node's bound token.
type imageNode struct {
	sock string
	log  *syncBuffer
}

func (rs *replicaSet) startImageNode(t *testing.T, ctx context.Context, node string) imageNode {
	c := sharedCluster(t)
	if err := c.Node(ctx, node); err != nil {
		t.Fatal(err)
	}
	csiPod, err := c.Pod(ctx, "podkey", fmt.Sprintf("csi-image-%d", podSeq.Add(1)), "podkey-csi", node)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, "podkey", "podkey-csi", "podkey-node", csiPod)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pkimg") // short socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tokFile := filepath.Join(dir, "token")
	_ = os.WriteFile(tokFile, []byte(tok), 0o600)
	_ = os.Mkdir(filepath.Join(dir, "classes"), 0o700)
	n := imageNode{sock: filepath.Join(dir, "keyprovider.sock"), log: &syncBuffer{}}
	metrics := freePort(t)
	cmd := exec.CommandContext(ctx, filepath.Join(rs.w.bin, "podkey-csi"), "--node-name", node,
		"--endpoint", filepath.Join(dir, "csi.sock"), "--registration-dir", "", "--state-dir", filepath.Join(dir, "state"),
		"--pods-dir", filepath.Join(dir, "pods"), "--secret-provider-class-dir", filepath.Join(dir, "classes"),
		"--keyd-addr", strings.Join(rs.addrs, ","), "--keyd-ca-file", rs.caFile, "--keyd-server-name", "localhost",
		"--node-token-file", tokFile, "--keyprovider-socket", n.sock, "--metrics-addr", metrics,
		"--log-format", "json", "--log-level", "debug")
	cmd.Env, cmd.Stderr = rs.w.env, n.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitHealthy(t, metrics, n.log)
	return n
}

// decryptLayers decrypts every layer of an image in an OCI layout with
// ocicrypt's library through the node's keyprovider socket, as
// containerd's decoder does, and checks each against the plain layer's
// digest.
func decryptLayers(t *testing.T, n imageNode, enc, plain v1.Image) error {
	t.Helper()
	ocicrypt.RegisterKeyWrapper("provider."+imagecrypt.Scheme,
		keyprovider.NewKeyWrapper(imagecrypt.Scheme, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + n.sock}))
	m, err := enc.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	plainLayers, err := plain.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range m.Layers {
		desc := imageenc.OCIDescriptor(d)
		l, err := enc.LayerByDigest(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		r, _, err := ocicrypt.DecryptLayer(&config.DecryptConfig{}, rc, desc, false)
		if err != nil {
			rc.Close()
			return err
		}
		got, err := io.ReadAll(r)
		rc.Close()
		if err != nil {
			return err
		}
		want, _ := plainLayers[i].Digest()
		if godigest.FromBytes(got).String() != want.String() {
			t.Fatalf("layer %d decrypted to another blob", i)
		}
	}
	return nil
}

// TestEncryptedImageThroughTheNodeKeyprovider: an image encrypted by
// 'podkey image encrypt' from exported recipient files (20 image keys,
// the node's last) decrypts with ocicrypt's library through podkey-csi's
// keyprovider socket, which holds a node certificate from the node's
// bound token and asks podkey-keyd (on SoftHSM2, tokens reviewed by the
// real API server) once per image; a node the policy does not name is
// refused with podkey's reason; keyd's audit shows one unwrap per image;
// no layer key appears in any log.
func TestEncryptedImageThroughTheNodeKeyprovider(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rs := startReplicas(t, 1, onBolt)
	w, sock := rs.w, rs.socks[0]
	podkey := func(args ...string) string {
		t.Helper()
		out, code := w.run("", "podkey", append([]string{"--socket", sock}, args...)...)
		if code != 0 {
			t.Fatalf("podkey %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	keys := filepath.Join(w.dir, "recipients")
	_ = os.Mkdir(keys, 0o700)
	var recipients []string
	for _, k := range []struct{ id, suite string }{{"cluster-a", "intl"}, {"cluster-a-gm", "gm"}} {
		podkey("image", "keys", "create", k.id, "--suite", k.suite)
	}
	for i := range 19 {
		id := fmt.Sprintf("site-%02d", i)
		podkey("image", "keys", "create", id, "-o", filepath.Join(keys, id+".pem"))
		recipients = append(recipients, "-r", filepath.Join(keys, id+".pem"))
	}
	podkey("image", "keys", "export", "cluster-a", "-o", filepath.Join(keys, "cluster-a.pem"))
	recipients = append(recipients, "-r", filepath.Join(keys, "cluster-a.pem"))
	if out := podkey("image", "keys", "list"); !strings.Contains(out, "cluster-a-gm  gm") || strings.Count(out, "\n") != 22 {
		t.Fatalf("keys list:\n%s", out)
	}
	policy := filepath.Join(w.dir, "image-policy.yaml")
	_ = os.WriteFile(policy, []byte("version: v1\nrules: []\nimageRules:\n- {nodes: [node-1], imageKeys: [cluster-a, cluster-a-gm]}\n"), 0o600)
	podkey("policy", "set", policy)

	// A five-layer image in an OCI layout, encrypted by the CLI.
	plain, err := random.Image(256<<10, 5)
	if err != nil {
		t.Fatal(err)
	}
	plainDir, encDir := filepath.Join(w.dir, "plain"), filepath.Join(w.dir, "enc")
	if err := imageenc.Write(ctx, imageenc.Ref("oci:"+plainDir+":app"), plain); err != nil {
		t.Fatal(err)
	}
	out := podkey(append(append([]string{"image", "encrypt"}, recipients...), "oci:"+plainDir+":app", "oci:"+encDir+":app")...)
	if !strings.Contains(out, "encrypted 5 layers for 20 image keys (intl") {
		t.Fatalf("encrypt:\n%s", out)
	}
	t.Logf("podkey image encrypt: %s", out)
	inspect := podkey("image", "inspect", "oci:"+encDir+":app")
	if strings.Count(inspect, "provider.podkey") != 5 || !strings.Contains(inspect, "cluster-a") {
		t.Fatalf("inspect:\n%s", inspect)
	}
	t.Logf("podkey image inspect:\n%s", inspect)
	// Encrypting needs no keyd: the same command without a socket.
	if out, code := runBinary(t, os.Environ(), "", filepath.Join(w.bin, "podkey"), append(append([]string{"--socket", "/nonexistent", "image", "encrypt"}, recipients...), "oci:"+plainDir+":app", "oci:"+encDir+":again")...); code != 0 {
		t.Fatalf("encrypt without keyd: %d %s", code, out)
	}
	enc, err := imageenc.Read(ctx, imageenc.Ref("oci:"+encDir+":app"))
	if err != nil {
		t.Fatal(err)
	}

	node1 := rs.startImageNode(t, ctx, "node-1")
	if err := decryptLayers(t, node1, enc, plain); err != nil {
		t.Fatalf("node-1: %v", err)
	}
	// The second encryption (another key set) costs node-1 one more unwrap.
	again, err := imageenc.Read(ctx, imageenc.Ref("oci:"+encDir+":again"))
	if err != nil {
		t.Fatal(err)
	}
	if err := decryptLayers(t, node1, again, plain); err != nil {
		t.Fatalf("node-1, second image: %v", err)
	}

	node2 := rs.startImageNode(t, ctx, "node-2")
	err = decryptLayers(t, node2, enc, plain)
	if err == nil || !strings.Contains(err.Error(), `policy does not allow node "node-2"`) {
		t.Fatalf("node-2: %v", err)
	}
	t.Logf("node-2 as ocicrypt reports it: %v", err)

	// keyd's audit: one unwrap per image for node-1, node-2's refusal.
	var unwraps, refusals int
	for _, line := range strings.Split(strings.TrimSpace(podkey("audit", "export")), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Action != audit.ActionImageUnwrap {
			continue
		}
		switch {
		case r.Result == audit.ResultOK && r.Node == "node-1" && r.Objects[0] == "image-key/cluster-a":
			unwraps++
		case r.Result == audit.ResultDenied && r.Node == "node-2":
			refusals++
		default:
			t.Fatalf("unexpected image record %+v", r)
		}
	}
	if unwraps != 2 || refusals == 0 {
		t.Fatalf("audit: %d unwraps (want 2: one per image), %d refusals", unwraps, refusals)
	}
	if out := podkey("audit", "verify"); !strings.Contains(out, "intact") {
		t.Fatalf("audit verify: %s", out)
	}

	// No layer key in any log: the layer keys are what ocicrypt unwrapped.
	layerKeys := layerKeysOf(t, node1, enc)
	for name, log := range map[string]string{"keyd": w.keydErr.String(), "node-1": node1.log.String(), "node-2": node2.log.String()} {
		for _, k := range layerKeys {
			if strings.Contains(log, base64.StdEncoding.EncodeToString(k)) || strings.Contains(log, string(k)) {
				t.Fatalf("a layer key in %s's log", name)
			}
		}
	}
}

// layerKeysOf unwraps each layer's options through the node and returns
// the layer keys.
func layerKeysOf(t testing.TB, n imageNode, enc v1.Image) [][]byte {
	m, _ := enc.Manifest()
	kw := keyprovider.NewKeyWrapper(imagecrypt.Scheme, keyproviderconfig.KeyProviderAttrs{Grpc: "unix://" + n.sock})
	var keys [][]byte
	for _, d := range m.Layers {
		raw, err := base64.StdEncoding.DecodeString(d.Annotations[imagecrypt.AnnotationID])
		if err != nil {
			t.Fatal(err)
		}
		optsData, err := kw.UnwrapKey(&config.DecryptConfig{}, raw)
		if err != nil {
			t.Fatal(err)
		}
		var opts blockcipher.PrivateLayerBlockCipherOptions
		if err := json.Unmarshal(optsData, &opts); err != nil || len(opts.SymmetricKey) != 32 {
			t.Fatalf("layer options: %v", err)
		}
		keys = append(keys, opts.SymmetricKey)
	}
	return keys
}
