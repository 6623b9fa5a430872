package csidriver

import (
	"github.com/podkey/podkey/pkg/object"
	"github.com/podkey/podkey/pkg/podfiles"
)

// pageSize is tmpfs's unit of allocation: every file takes whole pages.
const pageSize = 4096

func pages(bytes int) int64 { return int64((bytes + pageSize - 1) / pageSize * pageSize) }

// maxFileBytes bounds, per kind, what one object's files can take on a
// tmpfs, in whole pages. Secrets are counted at the largest value keyd
// enrolls, since the node cannot know a value's size before it is issued;
// a CA bundle leaves room for many CA generations.
func maxFileBytes(sp object.Spec) int64 {
	switch sp.Kind {
	case object.Secret:
		return pages(object.MaxSecretSize)
	case object.Certificate:
		return certificateBytes(sp)
	case object.TLCP:
		return 4*pages(2048) + pages(16384) // two keys, two certificates, the CA bundle
	case object.Token:
		n := 2048
		for _, a := range sp.Audience {
			n += len(a) + 8
		}
		return pages(n)
	}
	return pages(1024) // apiKey JSON, derivedKey bytes
}

// certificateBytes bounds a certificate's files in its formats: the PEM
// key, chain and CA bundle, and each keystore holding as much plus its
// framing (a trust store the CA bundle), and their password.
func certificateBytes(sp object.Spec) int64 {
	const key, chain, bundle, framing = 2048, 8192, 16384, 4096
	var n int64
	if len(sp.Format) == 0 || sp.Format.Has(object.FormatPEM) {
		n += pages(key) + pages(chain) + pages(bundle)
	}
	for _, f := range []string{object.FormatPKCS12, object.FormatJKS} {
		if sp.Format.Has(f) {
			n += pages(key + chain + bundle + framing)
		}
	}
	if sp.Format.Has(object.FormatTrustStore) {
		n += pages(bundle + framing)
	}
	if sp.Format.Keystore() {
		n += pages(64) // the password
	}
	return n
}

// shortSymlink is the longest symbolic link target, its terminating NUL
// included, that tmpfs keeps in the inode (the kernel's
// SHORT_SYMLINK_LEN); a longer one takes a page of its own.
const shortSymlink = 128

// links is what the volume's user-visible symbolic links take: one per
// file, "<name>" -> "..data/<name>", shared by the generations.
func links(specs []object.Spec) int64 {
	var n int64
	for _, name := range append([]string{podfiles.MetadataFile}, files(specs)...) {
		if len(podfiles.DataDir)+1+len(name)+1 > shortSymlink {
			n += pageSize
		}
	}
	return n
}

func files(specs []object.Spec) []string {
	var out []string
	for i := range specs {
		out = append(out, specs[i].Files()...)
	}
	return out
}

// twoGenerations bounds what a volume of these objects needs at its
// fullest: the published generation and the one a renewal writes beside it
// (package volume keeps no more), each with the metadata file, and the
// links to them. A class that fits is refused nothing for want of room
// at any renewal.
func twoGenerations(specs []object.Spec) int64 {
	gen := pages(1024 + 512*len(specs)) // podkey-metadata.json
	for _, sp := range specs {
		gen += maxFileBytes(sp)
	}
	return 2*gen + links(specs)
}
