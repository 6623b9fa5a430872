package keyring

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/suite"
)

// Image keys are the recipients of encrypted container images (package
// imagecrypt), one per site, cluster or node group, named by a key id:
//
//	podkey/image/<kid>       intl: P-256 key pair for ECDH only (token keys);
//	                         gm: SM2 private key, PKCS#8 wrapped under the KEK
//	podkey/image/<kid>/pub   the recipient file (public PEM with id and suite)
//
// They are not generational: an image names the key it was encrypted for,
// so a new key is a new id, and images move to it by re-encryption.
const imagePrefix = "podkey/image/"

func imageLabel(kid string) string    { return imagePrefix + kid }
func imagePubLabel(kid string) string { return imagePrefix + kid + "/pub" }

// ErrNoImageKey is returned for an image key id the token does not hold.
var ErrNoImageKey = errors.New("image key not found")

// imageKey is a loaded image key: its recipient, and for gm its private
// key in memory (intl keys are used on the token by label).
type imageKey struct {
	rec imagecrypt.Recipient
	gm  *sm2.PrivateKey
	// native: a gm key pair on the token, decrypting through sm2Decrypt.
	native bool
}

// nativeSM2Decrypt reports whether gm image keys can be SM2 key pairs on
// the token, decrypting through the vendor mechanism.
func nativeSM2Decrypt(tok *hsm.Token) bool {
	m := tok.Mechanisms()
	return m.SM2Decrypt != 0 && m.SM2KeyGen != 0
}

// CreateImageKey makes a new image key on the token and returns its public
// half. An existing id is refused (hsm.ErrObjectExists).
func (kr *Keyring) CreateImageKey(ctx context.Context, kid string, s suite.Name) (imagecrypt.Recipient, error) {
	if !imagecrypt.ValidKeyID(kid) {
		return imagecrypt.Recipient{}, fmt.Errorf("keyring: invalid image key id %q (lower case, digits, '-' and '.', at most 63)", kid)
	}
	if ok, err := kr.tok.Exists(ctx, hsm.Data, imagePubLabel(kid)); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("keyring: image key %q: %w", kid, hsm.ErrObjectExists)
		}
		return imagecrypt.Recipient{}, err
	}
	label := imageLabel(kid)
	rec := imagecrypt.Recipient{KeyID: kid, Suite: s}
	if s == suite.Intl {
		if err := kr.tok.GenerateECDHKeyPair(ctx, label); err != nil {
			return rec, err
		}
		pub, err := kr.tok.ECPublicKey(ctx, label)
		if err != nil {
			return rec, err
		}
		rec.Public = pub
	} else if nativeSM2Decrypt(kr.tok) {
		if err := kr.tok.GenerateSM2DecryptionKeyPair(ctx, label); err != nil {
			return rec, err
		}
		pub, err := kr.tok.SM2PublicKey(ctx, label)
		if err != nil {
			return rec, err
		}
		rec.Public = pub
	} else {
		k, err := sm2.GenerateKey(rand.Reader)
		if err != nil {
			return rec, err
		}
		defer zeroSM2(k)
		der, err := smx509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return rec, err
		}
		defer secmem.Zero(der)
		if err := putWrapped(ctx, kr.tok, kr.currentKEK(), label, der); err != nil {
			return rec, err
		}
		pub := k.PublicKey
		rec.Public = &pub
	}
	pemBytes, err := imagecrypt.MarshalRecipient(rec)
	if err != nil {
		return rec, err
	}
	if err := kr.tok.PutData(ctx, imagePubLabel(kid), pemBytes, false); err != nil {
		return rec, err
	}
	kr.mu.Lock()
	delete(kr.imageMisses, kid)
	if kr.imageIDs != nil { // copy on write: readers hold the old map
		ids := make(map[string]bool, len(kr.imageIDs)+1)
		for id := range kr.imageIDs {
			ids[id] = true
		}
		ids[kid] = true
		kr.imageIDs = ids
	}
	kr.mu.Unlock()
	return rec, nil
}

// ImageKeys lists the token's image keys, public halves, by id.
func (kr *Keyring) ImageKeys(ctx context.Context) ([]imagecrypt.Recipient, error) {
	objs, err := kr.tok.List(ctx, imagePrefix)
	if err != nil {
		return nil, err
	}
	var out []imagecrypt.Recipient
	for _, o := range objs {
		kid, ok := strings.CutSuffix(strings.TrimPrefix(o.Label, imagePrefix), "/pub")
		if !ok || o.Class != hsm.Data {
			continue
		}
		r, err := kr.ImageKey(ctx, kid)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].KeyID < out[j].KeyID })
	return out, nil
}

// ImageKey is one image key's public half.
func (kr *Keyring) ImageKey(ctx context.Context, kid string) (imagecrypt.Recipient, error) {
	k, err := kr.imageKey(ctx, kid)
	if err != nil {
		return imagecrypt.Recipient{}, err
	}
	return k.rec, nil
}

// HasImageKey reports whether the token holds the image key. Images are
// often encrypted for other sites' keys too: a key found missing is not
// looked up on the token again for a few seconds.
func (kr *Keyring) HasImageKey(ctx context.Context, kid string) bool {
	_, err := kr.imageKey(ctx, kid)
	return err == nil
}

// imageKeyListed reports whether the token's listing of image keys, at
// most imageMissTTL old (listed again at most that often), names kid.
func (kr *Keyring) imageKeyListed(ctx context.Context, kid string) (bool, error) {
	kr.mu.RLock()
	ids, at := kr.imageIDs, kr.imageIDsAt
	kr.mu.RUnlock()
	if ids[kid] || time.Since(at) < imageMissTTL {
		return ids[kid], nil
	}
	objs, err := kr.tok.List(ctx, imagePrefix)
	if err != nil {
		return false, err
	}
	ids = map[string]bool{}
	for _, o := range objs {
		if id, ok := strings.CutSuffix(strings.TrimPrefix(o.Label, imagePrefix), "/pub"); ok && o.Class == hsm.Data {
			ids[id] = true
		}
	}
	kr.mu.Lock()
	kr.imageIDs, kr.imageIDsAt = ids, time.Now()
	kr.mu.Unlock()
	return ids[kid], nil
}

// imageMissTTL is how long an image key id found missing stays missing.
const imageMissTTL = 10 * time.Second

// imageKey loads an image key on first use. Keys created through another
// keyd replica are found the same way.
func (kr *Keyring) imageKey(ctx context.Context, kid string) (*imageKey, error) {
	kr.mu.RLock()
	k, ok := kr.images[kid]
	missed, wasMissing := kr.imageMisses[kid]
	kr.mu.RUnlock()
	if ok {
		return k, nil
	}
	if !imagecrypt.ValidKeyID(kid) || (wasMissing && time.Since(missed) < imageMissTTL) {
		return nil, fmt.Errorf("keyring: image key %q: %w", kid, ErrNoImageKey)
	}
	// Unknown ids cost the token one listing per imageMissTTL, however
	// many a caller sends: only an id the listing names is looked up.
	if known, err := kr.imageKeyListed(ctx, kid); err != nil {
		return nil, err
	} else if !known {
		return nil, fmt.Errorf("keyring: image key %q: %w", kid, ErrNoImageKey)
	}
	pemBytes, err := kr.tok.GetData(ctx, imagePubLabel(kid))
	if errors.Is(err, hsm.ErrObjectNotFound) {
		kr.mu.Lock()
		if len(kr.imageMisses) > 4096 {
			clear(kr.imageMisses)
		}
		kr.imageMisses[kid] = time.Now()
		kr.mu.Unlock()
		return nil, fmt.Errorf("keyring: image key %q: %w", kid, ErrNoImageKey)
	}
	if err != nil {
		return nil, err
	}
	rec, err := imagecrypt.ParseRecipient(pemBytes)
	if err != nil || rec.KeyID != kid {
		return nil, fmt.Errorf("keyring: image key %q: bad public object: %v", kid, err)
	}
	k = &imageKey{rec: rec}
	if rec.Suite == suite.GM {
		if k.native, err = kr.tok.Exists(ctx, hsm.PrivateKey, imageLabel(kid)); err != nil {
			return nil, err
		}
	}
	if rec.Suite == suite.GM && !k.native {
		pt, err := kr.unwrap(ctx, imageLabel(kid))
		if err != nil {
			return nil, err
		}
		parsed, err := smx509.ParsePKCS8PrivateKey(pt)
		secmem.Zero(pt)
		if err != nil {
			return nil, fmt.Errorf("keyring: image key %q: %w", kid, err)
		}
		sk, ok := parsed.(*sm2.PrivateKey)
		if !ok || !sk.PublicKey.Equal(rec.Public) {
			zeroSM2(sk)
			return nil, fmt.Errorf("keyring: image key %q: private half does not match its public object", kid)
		}
		k.gm = sk
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if prev, ok := kr.images[kid]; ok { // loaded meanwhile
		zeroSM2(k.gm)
		return prev, nil
	}
	kr.images[kid] = k
	delete(kr.imageMisses, kid)
	return k, nil
}

// UnwrapImageEntry recovers the CEK wrapped in one recipient entry: one
// ECDH on the token (intl) or one SM2 decryption, on the token when it
// has sm2Decrypt, else in locked memory (gm).
// The caller zeroes the result.
func (kr *Keyring) UnwrapImageEntry(ctx context.Context, s suite.Name, e imagecrypt.Entry) ([]byte, error) {
	k, err := kr.imageKey(ctx, e.KeyID)
	if err != nil {
		return nil, err
	}
	if k.rec.Suite != s {
		return nil, fmt.Errorf("keyring: image key %q is %s, the image is %s: %w", e.KeyID, k.rec.Suite, s, imagecrypt.ErrUnwrap)
	}
	if s == suite.GM && k.native {
		return imagecrypt.UnwrapGMWith(func(ct []byte) ([]byte, error) {
			cek, err := kr.tok.SM2Decrypt(ctx, imageLabel(e.KeyID), ct)
			if errors.Is(err, hsm.ErrDecrypt) {
				return nil, imagecrypt.ErrUnwrap
			}
			return cek, err
		}, e.Wrapped)
	}
	if s == suite.GM {
		return imagecrypt.UnwrapGM(k.gm, e.Wrapped)
	}
	point, err := imagecrypt.IntlPoint(e.Wrapped)
	if err != nil {
		return nil, err
	}
	// A point off the curve is the blob's fault: refuse it before the token.
	if _, err := ecdh.P256().NewPublicKey(point); err != nil {
		return nil, fmt.Errorf("%w: ephemeral point is not on P-256", imagecrypt.ErrMalformed)
	}
	z, err := kr.tok.ECDH(ctx, imageLabel(e.KeyID), point)
	if err != nil {
		return nil, err
	}
	defer secmem.Zero(z)
	return imagecrypt.UnwrapIntl(e.KeyID, e.Wrapped, z)
}
