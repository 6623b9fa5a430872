package cluster

import (
	"context"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// SecretsStoreImage is the upstream secrets-store CSI driver on test
// nodes: its driver and fake provider (built by
// hack/secrets-store-driver.sh), a registrar standing in for the
// node-driver-registrar sidecar (e2e/images/registrar), and mount(8).
const SecretsStoreImage = "podkey.local/secrets-store:e2e"

// ImportSecretsStore builds SecretsStoreImage from the binaries in binDir
// and imports it into the node's containerd.
func (n *Node) ImportSecretsStore(ctx context.Context, repoRoot, binDir string) error {
	dir := filepath.Join(n.Dir, "images", "secrets-store")
	if err := goBuild(repoRoot, dir, false, "-s -w", "./e2e/images/registrar"); err != nil {
		return err
	}
	bb, err := busybox()
	if err != nil {
		return err
	}
	files := []imageFile{{path: "/bin/busybox", data: bb, mode: 0o755},
		{path: "/bin/mount", symlink: "busybox"}, {path: "/bin/umount", symlink: "busybox"}, {path: "/bin/sh", symlink: "busybox"}}
	for _, b := range []string{filepath.Join(binDir, "secrets-store-csi-driver"), filepath.Join(binDir, "fakeprovider"), filepath.Join(dir, "registrar")} {
		data, err := os.ReadFile(b)
		if err != nil {
			return err
		}
		files = append(files, imageFile{path: "/usr/local/bin/" + filepath.Base(b), data: data, mode: 0o755})
	}
	tar := filepath.Join(dir, "secrets-store.tar")
	if err := writeImage(tar, SecretsStoreImage, files, v1.Config{Env: []string{"PATH=/usr/local/bin:/bin"}}); err != nil {
		return err
	}
	return n.Import(ctx, tar)
}
