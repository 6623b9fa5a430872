// Package imageenc encrypts container images for podkey image keys and
// describes encrypted images, reading and writing registries and OCI image
// layouts with go-containerregistry.
//
// Layers are encrypted as ocicrypt encrypts them (AES-256-CTR with
// HMAC-SHA256 under a fresh key per layer, media type "+encrypted", the
// layer's public options in org.opencontainers.image.enc.pubopts); only the
// wrapping of the layer's private options is podkey's (package imagecrypt,
// annotation org.opencontainers.image.enc.keys.provider.podkey). The result
// is a standard encrypted OCI image: containerd's decoder with a podkey
// keyprovider configured decrypts it, and so does any ocicrypt tool with
// the same configuration.
package imageenc

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containers/ocicrypt/blockcipher"
	"github.com/containers/ocicrypt/config"
	"github.com/containers/ocicrypt/keywrap/jwe"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/podkey/podkey/pkg/image/imagecrypt"
)

// Annotations ocicrypt reads.
const (
	annotationPubOpts = "org.opencontainers.image.enc.pubopts"
	annotationKeys    = "org.opencontainers.image.enc.keys."
	encryptedSuffix   = "+encrypted"
)

// Ref names an image: "oci:DIR" or "oci:DIR:TAG" for an OCI image layout
// (TAG matches org.opencontainers.image.ref.name; default: the layout's
// only image), anything else a registry reference.
type Ref string

func (r Ref) layout() (dir, tag string, ok bool) {
	rest, ok := strings.CutPrefix(string(r), "oci:")
	if !ok {
		return "", "", false
	}
	if i := strings.LastIndex(rest, ":"); i > 0 && !strings.Contains(rest[i:], "/") {
		return rest[:i], rest[i+1:], true
	}
	return rest, "", true
}

// Read fetches an image (for platform linux/amd64 where the reference is
// an index).
func Read(ctx context.Context, r Ref) (v1.Image, error) {
	if dir, tag, ok := r.layout(); ok {
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", r, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", r, err)
		}
		var found []v1.Descriptor
		for _, d := range im.Manifests {
			if tag == "" || d.Annotations["org.opencontainers.image.ref.name"] == tag {
				found = append(found, d)
			}
		}
		if len(found) != 1 {
			return nil, fmt.Errorf("image %s: %d images match in the layout (name one with oci:DIR:TAG)", r, len(found))
		}
		return idx.Image(found[0].Digest)
	}
	ref, err := name.ParseReference(string(r))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", r, err)
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", r, err)
	}
	return img, nil
}

// Write stores an image.
func Write(ctx context.Context, r Ref, img v1.Image) error {
	if dir, tag, ok := r.layout(); ok {
		p, err := layout.FromPath(dir)
		if err != nil {
			if p, err = layout.Write(dir, empty.Index); err != nil {
				return fmt.Errorf("image %s: %w", r, err)
			}
		}
		var opts []layout.Option
		if tag != "" {
			opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
		}
		return p.AppendImage(img, opts...)
	}
	ref, err := name.ParseReference(string(r))
	if err != nil {
		return fmt.Errorf("image %s: %w", r, err)
	}
	return remote.Write(ref, img, remote.WithContext(ctx))
}

// encryptedType is the media type of a layer once encrypted.
func encryptedType(mt types.MediaType) (types.MediaType, error) {
	switch mt {
	case types.DockerLayer:
		return types.OCILayer + encryptedSuffix, nil
	case types.DockerUncompressedLayer:
		return types.OCIUncompressedLayer + encryptedSuffix, nil
	case types.OCILayer, types.OCIUncompressedLayer, types.OCILayerZStd:
		return mt + encryptedSuffix, nil
	}
	if strings.HasSuffix(string(mt), encryptedSuffix) {
		return "", fmt.Errorf("layer is encrypted already (%s)", mt)
	}
	return "", fmt.Errorf("layer media type %s cannot be encrypted", mt)
}

// Result says what Encrypt did.
type Result struct {
	Layers int
	KeySet string // podkey's scheme only
	Digest v1.Hash
}

// Wrapper wraps each layer's private options for an image's recipients,
// under its annotation.
type Wrapper interface {
	AnnotationID() string
	Wrap(opts []byte) ([]byte, error)
}

// podkeyWrapper is podkey's scheme: one content key for the whole image.
type podkeyWrapper struct{ *imagecrypt.Sealer }

func (podkeyWrapper) AnnotationID() string               { return imagecrypt.AnnotationID }
func (w podkeyWrapper) Wrap(opts []byte) ([]byte, error) { return w.Seal(opts) }

// jweWrapper is ocicrypt's JWE scheme.
type jweWrapper struct{ ec *config.EncryptConfig }

func (jweWrapper) AnnotationID() string { return annotationKeys + "jwe" }
func (w jweWrapper) Wrap(opts []byte) ([]byte, error) {
	return jwe.NewKeyWrapper().WrapKeys(w.ec, opts)
}

// JWE wraps with ocicrypt's JWE scheme for the recipients of ec
// (config.EncryptWithJwe): images of another scheme, for comparisons and
// for showing that they still pull beside podkey's.
func JWE(ec *config.EncryptConfig) Wrapper { return jweWrapper{ec} }

// Encrypt encrypts every layer of img for the recipients with podkey's
// scheme, all layers under one content key (one recipient section, so a
// node unwraps once per image).
func Encrypt(img v1.Image, rs []imagecrypt.Recipient) (v1.Image, Result, error) {
	sealer, err := imagecrypt.NewSealer(rs)
	if err != nil {
		return nil, Result{}, err
	}
	defer sealer.Close()
	enc, res, err := EncryptWith(img, podkeyWrapper{sealer})
	res.KeySet = sealer.KeySet()
	return enc, res, err
}

// EncryptWith encrypts every layer of img as ocicrypt does, its options
// wrapped by w (another scheme, for comparisons and interoperability
// tests). The image config is unchanged: its diff_ids still name the plain
// layers, as containerd checks after decrypting.
func EncryptWith(img v1.Image, w Wrapper) (v1.Image, Result, error) {
	var res Result
	src, err := img.Manifest()
	if err != nil {
		return nil, res, err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return nil, res, err
	}
	out := &encrypted{config: config, blobs: map[v1.Hash]blob{}}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Annotations: src.Annotations,
		Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Size: src.Config.Size, Digest: src.Config.Digest}}
	layers, err := img.Layers()
	if err != nil {
		return nil, res, err
	}
	for i, l := range layers {
		d, err := encryptLayer(l, w)
		if err != nil {
			return nil, res, fmt.Errorf("layer %d: %w", i+1, err)
		}
		out.blobs[d.desc.Digest] = d
		m.Layers = append(m.Layers, d.desc)
	}
	if out.manifest, err = json.Marshal(m); err != nil {
		return nil, res, err
	}
	enc, err := partial.CompressedToImage(out)
	if err != nil {
		return nil, res, err
	}
	res.Layers = len(m.Layers)
	res.Digest, err = enc.Digest()
	return enc, res, err
}

func encryptLayer(l v1.Layer, w Wrapper) (blob, error) {
	mt, err := l.MediaType()
	if err != nil {
		return blob{}, err
	}
	encType, err := encryptedType(mt)
	if err != nil {
		return blob{}, err
	}
	dg, err := l.Digest()
	if err != nil {
		return blob{}, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return blob{}, err
	}
	defer rc.Close()
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		return blob{}, err
	}
	encReader, fin, err := h.Encrypt(rc, blockcipher.AES256CTR)
	if err != nil {
		return blob{}, err
	}
	data, err := io.ReadAll(encReader)
	if err != nil {
		return blob{}, err
	}
	opts, err := fin()
	if err != nil {
		return blob{}, err
	}
	opts.Private.Digest = digest.Digest(dg.String())
	priv, err := json.Marshal(opts.Private)
	if err != nil {
		return blob{}, err
	}
	defer clear(priv)
	clear(opts.Private.SymmetricKey)
	pub, err := json.Marshal(opts.Public)
	if err != nil {
		return blob{}, err
	}
	wrapped, err := w.Wrap(priv)
	if err != nil {
		return blob{}, err
	}
	sum, size, err := v1.SHA256(bytes.NewReader(data))
	if err != nil {
		return blob{}, err
	}
	return blob{data: data, desc: v1.Descriptor{MediaType: encType, Size: size, Digest: sum, Annotations: map[string]string{
		w.AnnotationID():  base64.StdEncoding.EncodeToString(wrapped),
		annotationPubOpts: base64.StdEncoding.EncodeToString(pub),
	}}}, nil
}

// blob is an encrypted layer held in memory.
type blob struct {
	data []byte
	desc v1.Descriptor
}

func (b blob) Digest() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b blob) Compressed() (io.ReadCloser, error)   { return io.NopCloser(bytes.NewReader(b.data)), nil }
func (b blob) Size() (int64, error)                 { return b.desc.Size, nil }
func (b blob) MediaType() (types.MediaType, error)  { return b.desc.MediaType, nil }
func (e *encrypted) RawConfigFile() ([]byte, error) { return e.config, nil }
func (e *encrypted) MediaType() (types.MediaType, error) {
	return types.OCIManifestSchema1, nil
}
func (e *encrypted) RawManifest() ([]byte, error) { return e.manifest, nil }

// encrypted is the encrypted image: the unchanged config, a new manifest
// and the encrypted layers.
type encrypted struct {
	config, manifest []byte
	blobs            map[v1.Hash]blob
}

func (e *encrypted) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if b, ok := e.blobs[h]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("no layer %s", h)
}

// OCIDescriptor is a go-containerregistry descriptor as ocicrypt and
// containerd's decoder payload take it.
func OCIDescriptor(d v1.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size, Annotations: d.Annotations}
}

// LayerInfo describes one layer for 'podkey image inspect': never a key.
type LayerInfo struct {
	Digest    string   `json:"digest"`
	MediaType string   `json:"mediaType"`
	Size      int64    `json:"size"`
	Encrypted bool     `json:"encrypted"`
	Schemes   []string `json:"schemes,omitempty"` // key-wrapping schemes present
	Suite     string   `json:"suite,omitempty"`   // podkey scheme
	KeySet    string   `json:"keySet,omitempty"`
	ImageKeys []string `json:"imageKeys,omitempty"`
}

// Inspect describes an image's layers and, for podkey-wrapped layers,
// their recipients.
func Inspect(img v1.Image) ([]LayerInfo, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var out []LayerInfo
	for _, d := range m.Layers {
		li := LayerInfo{Digest: d.Digest.String(), MediaType: string(d.MediaType), Size: d.Size,
			Encrypted: strings.HasSuffix(string(d.MediaType), encryptedSuffix)}
		for k := range d.Annotations {
			if s, ok := strings.CutPrefix(k, annotationKeys); ok {
				li.Schemes = append(li.Schemes, s)
			}
		}
		if v, ok := d.Annotations[imagecrypt.AnnotationID]; ok {
			bl, err := parseAnnotation(v)
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", d.Digest, err)
			}
			li.Suite, li.ImageKeys = string(bl.Suite), imagecrypt.KeyIDs(bl.Entries)
			li.KeySet, _ = imagecrypt.KeySet(bl.Suite, bl.Entries)
		}
		out = append(out, li)
	}
	return out, nil
}

// parseAnnotation reads the podkey annotation (base64 of the blob; ocicrypt
// joins several with commas, podkey writes one).
func parseAnnotation(v string) (*imagecrypt.Blob, error) {
	if strings.Contains(v, ",") {
		return nil, errors.New("several podkey blobs in one layer")
	}
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("%w: annotation is not base64", imagecrypt.ErrMalformed)
	}
	return imagecrypt.Parse(raw)
}

// ReadRecipients reads recipient files.
func ReadRecipients(paths []string) ([]imagecrypt.Recipient, error) {
	var rs []imagecrypt.Recipient
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		r, err := imagecrypt.ParseRecipient(data)
		if err != nil {
			return nil, fmt.Errorf("recipient %s: %w", p, err)
		}
		rs = append(rs, r)
	}
	return rs, nil
}
