package csidriver

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/pod"
)

// Volume attributes, as the kubelet passes them with podInfoOnMount and
// tokenRequests, and as pods write them.
const (
	AttrClass          = "secretProviderClass"
	attrPodName        = "csi.storage.k8s.io/pod.name"
	attrPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	AttrPodUID         = "csi.storage.k8s.io/pod.uid"
	attrServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	attrEphemeral      = "csi.storage.k8s.io/ephemeral"
	AttrTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
	kubeletPrefix      = "csi.storage.k8s.io/"
)

// publishRequest is a validated NodePublishVolume request.
type publishRequest struct {
	volumeID, target string
	class            string
	pod              pod.Identity // without the node: the driver's own
	gid              int          // -1 when no fsGroup
	token            string
}

func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}

// validTarget confines a target path to the kubelet's pods directory:
// absolute, clean, strictly below podsDir, and reached without following a
// symbolic link (a link in the path would mount, write or remove at its
// destination). Path components that do not exist yet are created by the
// publish itself.
func validTarget(p, podsDir string) error {
	if p == "" {
		return invalid("target path is required")
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.Contains(p, "/../") || strings.ContainsAny(p, "\x00\n") {
		return invalid("target path %q must be absolute and clean", p)
	}
	rel, err := filepath.Rel(podsDir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return invalid("target path %q is not below the kubelet's pods directory %s", p, podsDir)
	}
	cur := podsDir
	for _, part := range strings.Split(rel, "/") {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if errors.Is(err, syscall.ENOTDIR) {
			return invalid("target path %q passes through %s, which is not a directory", p, cur)
		}
		if err != nil {
			return status.Errorf(codes.Internal, "inspecting target path %q: %v", p, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return invalid("target path %q passes through the symbolic link %s", p, cur)
		}
	}
	return nil
}

func validVolumeID(id string) error {
	if id == "" {
		return invalid("volume ID is required")
	}
	if len(id) > 512 || strings.ContainsAny(id, "\x00\n") {
		return invalid("volume ID is malformed")
	}
	return nil
}

// parsePublish validates everything in a publish request before anything
// is done. Messages name the attribute at fault and never its value when
// that value could be a token.
func parsePublish(req *csi.NodePublishVolumeRequest, audience, podsDir string) (*publishRequest, error) {
	if err := validVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := validTarget(req.GetTargetPath(), podsDir); err != nil {
		return nil, err
	}
	capability := req.GetVolumeCapability()
	if capability == nil {
		return nil, invalid("volume capability is required")
	}
	if capability.GetBlock() != nil {
		return nil, invalid("podkey volumes are filesystem volumes, not block devices")
	}
	if m := capability.GetAccessMode().GetMode(); m != csi.VolumeCapability_AccessMode_UNKNOWN &&
		m != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER && m != csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY &&
		m != csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && m != csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER {
		return nil, invalid("podkey volumes are single-node volumes (access mode %s)", m)
	}
	ctx := req.GetVolumeContext()
	if ctx[attrEphemeral] != "true" {
		return nil, invalid("podkey volumes are inline ephemeral volumes: declare them under the pod's volumes with csi.driver")
	}
	if !req.GetReadonly() {
		return nil, invalid("podkey volumes must be declared readOnly: true")
	}
	for k := range ctx {
		if k != AttrClass && !strings.HasPrefix(k, kubeletPrefix) {
			return nil, invalid("unknown volume attribute %q (podkey takes only %q)", k, AttrClass)
		}
	}
	p := &publishRequest{volumeID: req.VolumeId, target: req.TargetPath, gid: -1}
	var err error
	if p.class, p.pod, err = PodAttributes(ctx); err != nil {
		return nil, err
	}
	if g := capability.GetMount().GetVolumeMountGroup(); g != "" {
		gid, err := strconv.Atoi(g)
		if err != nil || gid < 0 || gid > 1<<31-2 {
			return nil, invalid("volume mount group %q is not a group ID", g)
		}
		p.gid = gid
	}
	tokens, err := podTokens(req)
	if err != nil {
		return nil, err
	}
	if p.token, err = TokenFor(tokens, audience, invalid); err != nil {
		return nil, err
	}
	return p, nil
}

// PodAttributes reads the class and the pod from the kubelet's volume
// attributes (podInfoOnMount).
func PodAttributes(attrs map[string]string) (class string, p pod.Identity, err error) {
	class = attrs[AttrClass]
	p = pod.Identity{Namespace: attrs[attrPodNamespace], Name: attrs[attrPodName], UID: attrs[AttrPodUID], ServiceAccount: attrs[attrServiceAccount]}
	if class == "" {
		return "", p, invalid("volume attribute %s is required: name the pod's SecretProviderClass", AttrClass)
	}
	if !object.ValidName(class) {
		return "", p, invalid("volume attribute %s: %q is not a valid name", AttrClass, class)
	}
	for _, f := range []struct{ attr, v string }{
		{attrPodNamespace, p.Namespace}, {attrPodName, p.Name}, {AttrPodUID, p.UID}, {attrServiceAccount, p.ServiceAccount},
	} {
		if f.v == "" {
			return "", p, invalid("volume attribute %s is missing: the CSIDriver object must set podInfoOnMount: true", f.attr)
		}
		if len(f.v) > 253 || strings.ContainsAny(f.v, "/\x00\n") {
			return "", p, invalid("volume attribute %s is malformed", f.attr)
		}
	}
	return class, p, nil
}

// TokenFor picks the token for audience out of the kubelet's tokens
// attribute (JSON by audience); a missing one is refused through missing,
// which says what the caller's CSIDriver lacks.
func TokenFor(tokens, audience string, missing func(format string, a ...any) error) (string, error) {
	if tokens == "" {
		return "", missing("no service account token: the CSIDriver object must request one for audience %q (tokenRequests)", audience)
	}
	var parsed map[string]struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(tokens), &parsed); err != nil {
		return "", invalid("volume attribute %s is not valid JSON", AttrTokens)
	}
	token := parsed[audience].Token
	if token == "" {
		return "", missing("no service account token for audience %q: add it to the CSIDriver's tokenRequests", audience)
	}
	if len(token) > 16<<10 {
		return "", invalid("service account token is larger than 16 KiB")
	}
	return token, nil
}

// podTokens is the kubelet's tokens attribute. Where the CSIDriver has the
// kubelet pass tokens in the request's secrets (serviceAccountTokenInSecrets),
// they are taken from there only, and the same key in the volume context
// is refused: there only the pod's own volumeAttributes can have put it.
// Otherwise (older clusters) the kubelet writes the key into the volume
// context over anything the pod declared, and it is taken from there.
func podTokens(req *csi.NodePublishVolumeRequest) (string, error) {
	inContext, fromPod := req.GetVolumeContext()[AttrTokens]
	if tokens, ok := req.GetSecrets()[AttrTokens]; ok {
		if fromPod {
			return "", invalid("volume attribute %s is set by the pod: the kubelet passes tokens in the request's secrets, and a pod may not supply its own", AttrTokens)
		}
		return tokens, nil
	}
	return inContext, nil
}

func (p *publishRequest) String() string { return p.pod.String() }
