package cluster

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Images the test nodes know; they are built here and imported into
// containerd, since the test machines have no registry.
const (
	PauseImage   = "podkey.local/pause:e2e"
	BusyboxImage = "podkey.local/busybox:e2e"
	// ExamplesImage is busybox plus the example workload and backend
	// (/bin/example-workload, /bin/example-backend).
	ExamplesImage = "podkey.local/examples:e2e"
)

type imageFile struct {
	path    string // in the image
	data    []byte
	mode    int64
	symlink string
}

// writeImage writes a one-layer image as a docker archive that
// `ctr images import` reads.
func writeImage(out, ref string, files []imageFile, cfg v1.Config) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f.path); d != "." && d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d[1:] + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
		}
		h := &tar.Header{Name: f.path[1:], Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}
		if f.symlink != "" {
			h = &tar.Header{Name: f.path[1:], Typeflag: tar.TypeSymlink, Linkname: f.symlink, Mode: 0o777}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if f.symlink == "" {
			if _, err := tw.Write(f.data); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Config = "amd64", "linux", cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, tag, img)
}

// buildImages writes the pause, busybox and examples images into dir.
func buildImages(dir, repoRoot string) ([]string, error) {
	if err := goBuild(repoRoot, dir, false, "", "./e2e/images/pause"); err != nil {
		return nil, err
	}
	pause, err := os.ReadFile(filepath.Join(dir, "pause"))
	if err != nil {
		return nil, err
	}
	bb, err := busybox()
	if err != nil {
		return nil, err
	}
	pauseTar, bbTar := filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar")
	if err := writeImage(pauseTar, PauseImage, []imageFile{{path: "/pause", data: pause, mode: 0o755}},
		v1.Config{Entrypoint: []string{"/pause"}}); err != nil {
		return nil, err
	}
	files := []imageFile{{path: "/bin/busybox", data: bb, mode: 0o755}}
	for _, tool := range []string{"sh", "cat", "ls", "stat", "sleep", "grep", "sha256sum", "mount", "id", "test", "echo", "cp", "true", "mkdir", "httpd", "wget"} {
		files = append(files, imageFile{path: "/bin/" + tool, symlink: "busybox"})
	}
	if err := writeImage(bbTar, BusyboxImage, files, v1.Config{Entrypoint: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}); err != nil {
		return nil, err
	}
	exDir := filepath.Join(dir, "examples")
	if err := goBuild(repoRoot, exDir, false, "", "./cmd/example-workload", "./cmd/example-backend"); err != nil {
		return nil, err
	}
	for _, ex := range []string{"example-workload", "example-backend"} {
		b, err := os.ReadFile(filepath.Join(exDir, ex))
		if err != nil {
			return nil, err
		}
		files = append(files, imageFile{path: "/bin/" + ex, data: b, mode: 0o755})
	}
	exTar := filepath.Join(dir, "examples.tar")
	if err := writeImage(exTar, ExamplesImage, files, v1.Config{Env: []string{"PATH=/bin"}}); err != nil {
		return nil, err
	}
	return []string{pauseTar, bbTar, exTar}, nil
}

// softhsmConf is SoftHSM2's configuration in the keyd image: Debian's
// /etc/softhsm is readable by the softhsm group only, so the image carries
// its own, world-readable copy, with the tokens on keyd's data volume
// ('podkey hsm init --init-token' creates the directory).
const softhsmConf = `directories.tokendir = /var/lib/podkey/softhsm-tokens/
objectstore.backend = file
log.level = ERROR
slots.removable = false
`

// PodkeyImages builds podkey's images without a container engine, the
// same content as the Dockerfile's keyd and csi targets: keyd (and the
// podkey CLI) built with cgo, with the SoftHSM2 module and every shared
// library the three need, taken from this machine's Debian packages; the
// CSI plugin static, with a mount(8) (busybox) for mount-utils. It writes
// docker archives into dir and returns their paths.
func PodkeyImages(dir, repoRoot, keydRef, csiRef, version string) (keydTar, csiTar string, err error) {
	ldflags := "-s -w -X github.com/podkey/podkey/internal/version.Version=" + version
	bin := filepath.Join(dir, "podkey-bin")
	if err := goBuild(repoRoot, bin, true, ldflags, "./cmd/podkey-keyd", "./cmd/podkey"); err != nil {
		return "", "", err
	}
	if err := goBuild(repoRoot, bin, false, ldflags, "./cmd/podkey-csi"); err != nil {
		return "", "", err
	}
	const module = "/usr/lib/softhsm/libsofthsm2.so" // hsm.DefaultModule
	keydBins := []string{filepath.Join(bin, "podkey-keyd"), filepath.Join(bin, "podkey"), module}
	libs, err := sharedLibraries(keydBins...)
	if err != nil {
		return "", "", err
	}
	var files []imageFile
	for _, f := range []struct{ src, dst string }{{keydBins[0], "/usr/local/bin/podkey-keyd"}, {keydBins[1], "/usr/local/bin/podkey"}, {module, module}} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			return "", "", fmt.Errorf("%w (softhsm2 missing? run hack/install-deps.sh)", err)
		}
		files = append(files, imageFile{path: f.dst, data: b, mode: 0o755})
	}
	for _, l := range libs {
		b, err := os.ReadFile(l) // follows symlinks: the library lands at the path the loader asks for
		if err != nil {
			return "", "", err
		}
		files = append(files, imageFile{path: l, data: b, mode: 0o755})
	}
	files = append(files,
		imageFile{path: "/etc/podkey/softhsm2.conf", data: []byte(softhsmConf), mode: 0o644},
		imageFile{path: "/etc/passwd", data: []byte("root:x:0:0:root:/root:/sbin/nologin\npodkey:x:65532:65532:podkey:/var/lib/podkey:/sbin/nologin\n"), mode: 0o644},
		imageFile{path: "/etc/group", data: []byte("root:x:0:\npodkey:x:65532:\n"), mode: 0o644},
		imageFile{path: "/var/lib/podkey/.keep", mode: 0o644},
	)
	keydTar = filepath.Join(dir, "podkey-keyd.tar")
	if err := writeImage(keydTar, keydRef, files, v1.Config{
		Entrypoint: []string{"/usr/local/bin/podkey-keyd"},
		User:       "65532:65532",
		Env:        []string{"PATH=/usr/local/bin", "SOFTHSM2_CONF=/etc/podkey/softhsm2.conf", "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"},
	}); err != nil {
		return "", "", err
	}
	csi, err := os.ReadFile(filepath.Join(bin, "podkey-csi"))
	if err != nil {
		return "", "", err
	}
	bb, err := busybox()
	if err != nil {
		return "", "", err
	}
	csiFiles := []imageFile{{path: "/usr/local/bin/podkey-csi", data: csi, mode: 0o755}, {path: "/bin/busybox", data: bb, mode: 0o755},
		{path: "/bin/mount", symlink: "busybox"}, {path: "/bin/umount", symlink: "busybox"}}
	csiTar = filepath.Join(dir, "podkey-csi.tar")
	if err := writeImage(csiTar, csiRef, csiFiles, v1.Config{Entrypoint: []string{"/usr/local/bin/podkey-csi"}, Env: []string{"PATH=/usr/local/bin:/bin"}}); err != nil {
		return "", "", err
	}
	return keydTar, csiTar, nil
}

// goBuild builds pkgs into the directory out, with cgo or without, trimmed
// and with ldflags when given.
func goBuild(repoRoot, out string, cgo bool, ldflags string, pkgs ...string) error {
	args := []string{"build", "-trimpath", "-o", out + "/"}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Dir = repoRoot
	cgoEnv := "CGO_ENABLED=0"
	if cgo {
		cgoEnv = "CGO_ENABLED=1"
	}
	cmd.Env = append(os.Environ(), cgoEnv)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %v: %v\n%s", pkgs, err, o)
	}
	return nil
}

// busybox is Debian's busybox-static binary.
func busybox() ([]byte, error) {
	bb, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox-static missing: run hack/install-deps.sh: %w", err)
	}
	return bb, nil
}

// sharedLibraries lists, with ldd, every shared library the given ELF
// files load (the dynamic loader included), each once.
func sharedLibraries(files ...string) ([]string, error) {
	seen := map[string]bool{}
	var libs []string
	for _, f := range files {
		out, err := exec.Command("ldd", f).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", f, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			fields := strings.Fields(line)
			var path string
			switch {
			case len(fields) >= 3 && fields[1] == "=>":
				path = fields[2]
			case len(fields) >= 1 && strings.HasPrefix(fields[0], "/"):
				path = fields[0]
			}
			if strings.HasPrefix(path, "/") && !seen[path] {
				seen[path] = true
				libs = append(libs, path)
			}
		}
	}
	return libs, nil
}
