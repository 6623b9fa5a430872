package imagecrypt

import (
	"crypto/ecdsa"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/pkg/suite"
)

// PEM headers of a recipient file: a standard PUBLIC KEY block that also
// names the image key and its suite.
const (
	headerKeyID = "Podkey-Image-Key"
	headerSuite = "Podkey-Suite"
)

// MarshalRecipient renders an image key's public half as a recipient file,
// which is all `podkey image encrypt` needs: no HSM, no keyd.
func MarshalRecipient(r Recipient) ([]byte, error) {
	if !ValidKeyID(r.KeyID) {
		return nil, fmt.Errorf("imagecrypt: invalid key id %q", r.KeyID)
	}
	if r.Public == nil || !r.Suite.MatchesKey(r.Public) {
		return nil, fmt.Errorf("imagecrypt: image key %q is not a %s public key", r.KeyID, r.Suite)
	}
	der, err := smx509.MarshalPKIXPublicKey(r.Public)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der,
		Headers: map[string]string{headerKeyID: r.KeyID, headerSuite: string(r.Suite)}}), nil
}

// ParseRecipient reads a recipient file.
func ParseRecipient(data []byte) (Recipient, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return Recipient{}, errors.New("not a PEM PUBLIC KEY block (export one with 'podkey image keys export KID')")
	}
	kid := blk.Headers[headerKeyID]
	if !ValidKeyID(kid) {
		return Recipient{}, fmt.Errorf("the %s header is missing or invalid (export the key with 'podkey image keys export KID')", headerKeyID)
	}
	st, err := suite.Parse(blk.Headers[headerSuite])
	if err != nil || blk.Headers[headerSuite] == "" {
		return Recipient{}, fmt.Errorf("image key %q: the %s header must be gm or intl", kid, headerSuite)
	}
	pub, err := smx509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return Recipient{}, fmt.Errorf("image key %q: %w", kid, err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || !st.MatchesKey(ec) {
		return Recipient{}, fmt.Errorf("image key %q: not a %s public key", kid, st)
	}
	return Recipient{KeyID: kid, Suite: st, Public: ec}, nil
}
