package cluster

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
)

// PodkeyImages' names on test nodes (imagePullPolicy Never).
const (
	KeydImage = "podkey.local/podkey-keyd"
	CSIImage  = "podkey.local/podkey-csi"
	ImageTag  = "e2e"
)

// ImportPodkey builds podkey's images (PodkeyImages) and imports them into
// the node's containerd.
func (n *Node) ImportPodkey(ctx context.Context, repoRoot string) error {
	keyd, csi, err := PodkeyImages(filepath.Join(n.Dir, "images"), repoRoot, KeydImage+":"+ImageTag, CSIImage+":"+ImageTag, ImageTag)
	if err != nil {
		return err
	}
	return n.Import(ctx, keyd, csi)
}

// PodkeyValues are the chart values that install podkey on node n of this
// cluster: the imported images, the kubelet's root directory, and - as the
// cluster has no Service proxy - keyd (on keydAddr, its token keys and
// metrics on free ports) and podkey-csi (metrics
// on metricsPort) on the host network, reaching the API server on
// loopback. Everything else is the chart's default.
func (c *Cluster) PodkeyValues(n *Node, keydAddr string, metricsPort int) map[string]any {
	_, apiPort, _ := net.SplitHostPort(c.URL[len("https://"):])
	_, keydPort, _ := net.SplitHostPort(keydAddr)
	port, _ := strconv.Atoi(keydPort)
	apiEnv := []any{map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}, map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": apiPort}}
	onNode := map[string]any{"kubernetes.io/hostname": n.Name}
	jwksPort, _ := FreePort() // on the host network, as keyd's own port
	keydMetrics, _ := FreePort()
	return map[string]any{
		"keyd": map[string]any{
			"image": map[string]any{"repository": KeydImage, "tag": ImageTag, "pullPolicy": "Never"},
			"port":  port, "jwksPort": jwksPort, "metricsPort": keydMetrics, "hostNetwork": true, "tlsNames": []any{"127.0.0.1"},
			"extraEnv": apiEnv, "nodeSelector": onNode,
		},
		"csi": map[string]any{
			"image":      map[string]any{"repository": CSIImage, "tag": ImageTag, "pullPolicy": "Never"},
			"kubeletDir": n.RootDir, "hostNetwork": true, "keydAddress": keydAddr, "metricsPort": metricsPort,
			"extraEnv": apiEnv, "nodeSelector": onNode, "objectOwners": true,
			// containerd's decoder reaches the socket at EnableImageDecryption's path.
			"imageKeyprovider": map[string]any{"enabled": true, "hostDir": filepath.Join(n.Dir, "run-podkey")},
		},
	}
}
