// Package imagecrypttest holds image keys in software, standing in for
// keyd in unit tests of the image-key scheme and the node's keyprovider.
package imagecrypttest

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync/atomic"
	"testing"

	"github.com/emmansun/gmsm/sm2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/suite"
)

// Key is an image key in memory.
type Key struct {
	Recipient imagecrypt.Recipient
	intl      *ecdsa.PrivateKey
	gm        *sm2.PrivateKey
}

// NewKey makes an image key of the suite.
func NewKey(t testing.TB, kid string, st suite.Name) *Key {
	t.Helper()
	if st == suite.GM {
		k, err := sm2.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return &Key{Recipient: imagecrypt.Recipient{KeyID: kid, Suite: st, Public: &k.PublicKey}, gm: k}
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{Recipient: imagecrypt.Recipient{KeyID: kid, Suite: st, Public: &k.PublicKey}, intl: k}
}

// Unwrap recovers the CEK of an entry wrapped for this key.
func (k *Key) Unwrap(wrapped []byte) ([]byte, error) {
	if k.gm != nil {
		return imagecrypt.UnwrapGM(k.gm, wrapped)
	}
	point, err := imagecrypt.IntlPoint(wrapped)
	if err != nil {
		return nil, err
	}
	priv, err := k.intl.ECDH()
	if err != nil {
		return nil, err
	}
	peer, err := ecdh.P256().NewPublicKey(point)
	if err != nil {
		return nil, imagecrypt.ErrMalformed
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, err
	}
	return imagecrypt.UnwrapIntl(k.Recipient.KeyID, wrapped, z)
}

// Keyd answers UnwrapImageKey from the keys it holds, like keyd with a
// policy that allows them all, and counts its calls.
type Keyd struct {
	Keys  map[string]*Key
	Calls atomic.Int64
	// Refuse, when set, is returned instead of an answer.
	Refuse error
}

// UnwrapImageKey implements imagekeys.Unwrapper.
func (d *Keyd) UnwrapImageKey(_ context.Context, in *keydv1.UnwrapImageKeyRequest, _ ...grpc.CallOption) (*keydv1.UnwrapImageKeyResponse, error) {
	d.Calls.Add(1)
	if d.Refuse != nil {
		return nil, d.Refuse
	}
	for _, e := range in.Entries {
		if k, ok := d.Keys[e.KeyId]; ok {
			cek, err := k.Unwrap(e.Wrapped)
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, err.Error())
			}
			return &keydv1.UnwrapImageKeyResponse{Cek: cek, KeyId: e.KeyId}, nil
		}
	}
	return nil, status.Error(codes.PermissionDenied, "no key held")
}
