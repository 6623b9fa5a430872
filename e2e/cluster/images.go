package cluster

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

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
	pauseBin := filepath.Join(dir, "pause")
	cmd := exec.Command("go", "build", "-o", pauseBin, "./e2e/images/pause")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %v\n%s", err, out)
	}
	pause, err := os.ReadFile(pauseBin)
	if err != nil {
		return nil, err
	}
	bb, err := os.ReadFile("/usr/bin/busybox") // Debian's busybox-static
	if err != nil {
		return nil, fmt.Errorf("busybox-static missing: run hack/install-deps.sh: %w", err)
	}
	pauseTar, bbTar := filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar")
	if err := writeImage(pauseTar, PauseImage, []imageFile{{path: "/pause", data: pause, mode: 0o755}},
		v1.Config{Entrypoint: []string{"/pause"}}); err != nil {
		return nil, err
	}
	files := []imageFile{{path: "/bin/busybox", data: bb, mode: 0o755}}
	for _, tool := range []string{"sh", "cat", "ls", "stat", "sleep", "grep", "sha256sum", "mount", "id", "test", "echo", "cp", "true"} {
		files = append(files, imageFile{path: "/bin/" + tool, symlink: "busybox"})
	}
	if err := writeImage(bbTar, BusyboxImage, files, v1.Config{Entrypoint: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}); err != nil {
		return nil, err
	}
	exDir := filepath.Join(dir, "examples")
	cmd = exec.Command("go", "build", "-o", exDir+"/", "./cmd/example-workload", "./cmd/example-backend")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build examples: %v\n%s", err, out)
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
