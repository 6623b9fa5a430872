package csidriver_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podkey/podkey/internal/node/volume"
)

// TestTLCPInterop: two pods' tlcp volumes, as the driver writes them,
// complete a mutually authenticated TLCP handshake (GM/T 0024, 0x0101,
// ECC_SM4_CBC_SM3) with an independent implementation (tjfoc/gmsm
// gmtls, run from its own module, e2e/tlcpinterop), and exchange data;
// the server presents its signing certificate first. (That
// implementation's ECDHE_SM4_CBC_SM3 server is a stub that panics, in
// v1.4.1 as served: the ECDHE suite cannot be tested against it.) Swapped certificates,
// an encryption certificate without keyEncipherment and an encryption
// key of another pod are each refused.
func TestTLCPInterop(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	dirs := map[string]string{}
	for _, uid := range []string{"uid-tlcp-a", "uid-tlcp-b"} {
		target := h.Target(uid)
		if _, err := h.D.NodePublishVolume(ctx, publishReq(target, uid, "tlcp")); err != nil {
			t.Fatal(err)
		}
		files, _ := volume.Current(target)
		if got := strings.Join(files, ","); got != "link.ca.crt,link.enc.crt,link.enc.key,link.sign.crt,link.sign.key,podkey-metadata.json" {
			t.Fatalf("files %s", got)
		}
		dirs[uid] = target
	}
	bin := filepath.Join(t.TempDir(), "tlcpinterop")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "../../../e2e/tlcpinterop"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the interop program: %v\n%s", err, out)
	}
	type result struct {
		OK                       bool
		Version, Suite, Echo     string
		ServerCerts, ClientCerts int
		ServerFirstKU            int
		ServerCN, ClientCN       string
		Error                    string
	}
	run := func(server, client, suite string) result {
		cmd := exec.Command(bin, "-server", server, "-client", client, "-suite", suite)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, _ := cmd.Output()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n") // gmtls prints its own errors first
		var r result
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
			t.Fatalf("interop output %q: %v\n%s", out, err, stderr.String())
		}
		return r
	}
	for suite, id := range map[string]string{"ecc": "0xe013"} {
		r := run(dirs["uid-tlcp-a"], dirs["uid-tlcp-b"], suite)
		if !r.OK || r.Version != "0x0101" || r.Suite != id || r.Echo != "echo:hello" || r.ServerCerts != 2 || r.ClientCerts < 1 ||
			r.ServerFirstKU&1 == 0 || r.ClientCN != "system:serviceaccount:payments:payments" {
			t.Fatalf("%s handshake: %+v", suite, r)
		}
		t.Logf("%s: %+v", suite, r)
	}

	// Broken pairs, in copies of pod A's volume (its files as written).
	variant := func(name string, edit func(dir string)) string {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.CopyFS(dir, os.DirFS(dirs["uid-tlcp-a"])); err != nil {
			t.Fatal(err)
		}
		edit(dir)
		return dir
	}
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(to)
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	swap := func(dir, a, b string) {
		pa, pb := filepath.Join(dir, a), filepath.Join(dir, b)
		ba, _ := os.ReadFile(pa)
		copyFile(pb, pa)
		_ = os.WriteFile(pb, ba, 0o600)
	}
	for name, dir := range map[string]string{
		"signing and encryption pairs swapped": variant("swapped", func(d string) {
			swap(d, "link.sign.crt", "link.enc.crt")
			swap(d, "link.sign.key", "link.enc.key")
		}),
		"an encryption certificate without keyEncipherment": variant("sign-as-enc", func(d string) {
			copyFile(filepath.Join(d, "link.sign.crt"), filepath.Join(d, "link.enc.crt"))
			copyFile(filepath.Join(d, "link.sign.key"), filepath.Join(d, "link.enc.key"))
		}),
		"another pod's encryption key": variant("foreign-key", func(d string) {
			copyFile(filepath.Join(dirs["uid-tlcp-b"], "link.enc.key"), filepath.Join(d, "link.enc.key"))
		}),
	} {
		for _, suite := range []string{"ecc"} {
			if r := run(dir, dirs["uid-tlcp-b"], suite); r.OK || r.Error == "" {
				t.Errorf("%s (%s): accepted: %+v", name, suite, r)
			} else {
				t.Logf("%s (%s): refused: %s", name, suite, r.Error)
			}
		}
	}
}
