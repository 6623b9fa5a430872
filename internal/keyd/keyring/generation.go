package keyring

import (
	"context"
	"crypto"
	"crypto/rand"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"

	"github.com/podkey/podkey/internal/host/secmem"
	"github.com/podkey/podkey/internal/keyd/ca"
	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/pkg/suite"
)

// nativeSM3 reports whether gm HMAC keys can live on the token as native
// keys, through the vendor HMAC-SM3 mechanism.
func nativeSM3(tok *hsm.Token) bool { return tok.Mechanisms().SM3HMAC != 0 }

// nativeSM2 reports whether gm CA and token-signing keys can be SM2 key
// pairs on the token, signing through the vendor SM2 mechanism.
func nativeSM2(tok *hsm.Token) bool {
	m := tok.Mechanisms()
	return m.SM2Sign != 0 && m.SM2KeyGen != 0
}

// createGeneration makes one generation of a root key on the token.
func createGeneration(ctx context.Context, tok *hsm.Token, kek int, p Purpose, s suite.Name, gen int) error {
	label := Label(p, s, gen)
	switch {
	case (p == MAC || p == Derive) && (s == suite.Intl || nativeSM3(tok)):
		return tok.GenerateHMACKey(ctx, label)
	case p == MAC || p == Derive:
		k := make([]byte, 32)
		if _, err := io.ReadFull(rand.Reader, k); err != nil {
			return err
		}
		defer secmem.Zero(k)
		return putWrapped(ctx, tok, kek, label, k)
	case s == suite.Intl: // ca, jwt
		if err := tok.GenerateECKeyPair(ctx, label); err != nil {
			return err
		}
		if p == CA {
			signer, err := tok.ECDSASigner(ctx, label)
			if err != nil {
				return err
			}
			return putRoot(ctx, tok, p, s, gen, signer)
		}
		return nil
	case nativeSM2(tok): // gm ca, jwt: an SM2 key pair on the token
		if err := tok.GenerateSM2KeyPair(ctx, label); err != nil {
			return err
		}
		if p == CA {
			signer, err := tok.SM2Signer(ctx, label)
			if err != nil {
				return err
			}
			return putRoot(ctx, tok, p, s, gen, signer)
		}
		return nil
	default: // gm ca, jwt: SM2 key wrapped under the KEK
		k, err := sm2.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		defer zeroSM2(k)
		der, err := smx509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		defer secmem.Zero(der)
		if err := putWrapped(ctx, tok, kek, label, der); err != nil {
			return err
		}
		if p == CA {
			return putRoot(ctx, tok, p, s, gen, k)
		}
		return nil
	}
}

// putRoot self-signs the CA certificate of a new generation and stores it
// beside the key as a public data object.
func putRoot(ctx context.Context, tok *hsm.Token, p Purpose, s suite.Name, gen int, signer crypto.Signer) error {
	der, err := ca.NewRoot(s, gen, signer, fmt.Sprintf("podkey root CA %s g%d", s, gen), caValidity)
	if err != nil {
		return err
	}
	return tok.PutData(ctx, certLabel(p, s, gen), der, false)
}

// load reads one generation from the token into the keyring.
func (kr *Keyring) load(ctx context.Context, p Purpose, s suite.Name, gen int) error {
	label := Label(p, s, gen)
	k := &key{label: label}
	native, err := kr.tok.Exists(ctx, hsm.SecretKey, label)
	if err != nil {
		return err
	}
	pair := false
	if s == suite.GM && (p == CA || p == JWT) {
		if pair, err = kr.tok.Exists(ctx, hsm.PrivateKey, label); err != nil {
			return err
		}
	}
	switch {
	case native || (s == suite.Intl && (p == MAC || p == Derive)):
		k.native = true
	case s == suite.Intl: // ca, jwt
		signer, err := kr.tok.ECDSASigner(ctx, label)
		if err != nil {
			return err
		}
		k.signer = signer
	case pair: // gm ca, jwt on the token
		signer, err := kr.tok.SM2Signer(ctx, label)
		if err != nil {
			return err
		}
		k.signer, k.native = signer, true
	default:
		pt, err := kr.unwrap(ctx, label)
		if err != nil {
			return err
		}
		if p == MAC || p == Derive {
			if k.sym, err = secmem.New(pt); err != nil {
				return err
			}
			break
		}
		parsed, err := smx509.ParsePKCS8PrivateKey(pt)
		secmem.Zero(pt)
		if err != nil {
			return fmt.Errorf("keyring: %s: %w", label, err)
		}
		sk, ok := parsed.(*sm2.PrivateKey)
		if !ok {
			return fmt.Errorf("keyring: %s: not an SM2 key", label)
		}
		k.signer = sk
	}
	if p == CA {
		der, err := kr.tok.GetData(ctx, certLabel(p, s, gen))
		if err != nil {
			return err
		}
		if k.ca, err = ca.New(s, gen, der, k.signer); err != nil {
			return err
		}
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if kr.keys[slot{p, s}] == nil {
		kr.keys[slot{p, s}] = map[int]*key{}
	}
	kr.keys[slot{p, s}][gen] = k
	return nil
}

func (kr *Keyring) unwrap(ctx context.Context, label string) ([]byte, error) {
	return readWrapped(ctx, kr.tok, label)
}

func (k *key) destroy() {
	if k.sym != nil {
		k.sym.Close()
	}
	if sk, ok := k.signer.(*sm2.PrivateKey); ok {
		zeroSM2(sk)
	}
}

// zeroSM2 overwrites the private scalar's words in place.
func zeroSM2(k *sm2.PrivateKey) {
	if k != nil && k.D != nil {
		clear(k.D.Bits())
	}
}

// Native reports whether generation gen of a root key is used inside the
// module, and why or why not: what `podkey hsm status` shows for it.
func (kr *Keyring) Native(p Purpose, s suite.Name, gen int) (bool, string) {
	k, err := kr.get(p, s, gen)
	if err != nil {
		return false, err.Error()
	}
	return nativeReason(kr.tok, p, s, k.native || s == suite.Intl)
}

// nativeReason says where a key of the purpose and suite is used.
func nativeReason(tok *hsm.Token, p Purpose, s suite.Name, native bool) (bool, string) {
	mech, have := "sm2Sign and sm2KeyGen", nativeSM2(tok)
	if p == MAC || p == Derive {
		mech, have = "sm3Hmac", nativeSM3(tok)
	}
	switch {
	case s == suite.Intl:
		return true, "inside the module"
	case native:
		return true, "inside the module, through the mechanism table's " + mech
	case !have:
		return false, "in keyd's memory, unwrapped at start: the mechanism table has no " + mech
	default:
		return false, "in keyd's memory, unwrapped at start: made before the mechanism table named " + mech + "; rotate it for a native generation"
	}
}

// imageReason says where an image key is used: an intl one is always a
// token key pair; a gm one is one where the table has sm2Decrypt.
func imageReason(tok *hsm.Token, native bool) (bool, string) {
	switch {
	case native:
		return true, "inside the module"
	case !nativeSM2Decrypt(tok):
		return false, "in keyd's memory, unwrapped on first use: the mechanism table has no sm2Decrypt"
	default:
		return false, "in keyd's memory, unwrapped on first use: made before the mechanism table named sm2Decrypt; make a new image key"
	}
}

// Location is where a root key generation is used.
type Location struct {
	Label  string
	Native bool
	Why    string
}

// Locations lists every root key generation and image key on the token
// with where keyd uses it (nativeReason), read from the token alone: `podkey hsm status`
// shows it without unwrapping anything.
func Locations(ctx context.Context, tok *hsm.Token) ([]Location, error) {
	objs, err := tok.List(ctx, "podkey/")
	if err != nil {
		return nil, err
	}
	native := map[string]bool{}
	var out []Location
	for _, o := range objs {
		if o.Class == hsm.SecretKey && (o.Label == KEKLabel || strings.HasPrefix(o.Label, KEKLabel+"/g")) {
			a, err := tok.Attributes(ctx, hsm.SecretKey, o.Label)
			if err != nil {
				return nil, err
			}
			why := "inside the module: AES-256-GCM (the mechanism table has no sm4Gcm)"
			if m := tok.Mechanisms(); m.SM4KeyType != 0 && a.KeyType == m.SM4KeyType {
				why = "inside the module: SM4-GCM, through the mechanism table's sm4Gcm"
			}
			out = append(out, Location{Label: o.Label, Native: true, Why: why})
			continue
		}
		if o.Class == hsm.SecretKey && (o.Label == AuditLabel || strings.HasPrefix(o.Label, AuditLabel+"/g")) {
			why := "inside the module: HMAC-SHA256 (the audit chain's batch keys)"
			if sm3, err := tok.Exists(ctx, hsm.Data, o.Label+"/hmac-sm3"); err != nil {
				return nil, err
			} else if sm3 {
				why = "inside the module: HMAC-SM3, through the mechanism table's sm3Hmac (the audit chain's batch keys)"
			}
			out = append(out, Location{Label: o.Label, Native: true, Why: why})
			continue
		}
		base, _, _ := strings.Cut(o.Label, "#")
		_, _, _, root := parseLabel(base)
		image := strings.HasPrefix(base, imagePrefix) && !strings.HasSuffix(base, "/pub")
		if !root && !image {
			continue
		}
		native[base] = native[base] || o.Class == hsm.SecretKey || o.Class == hsm.PrivateKey
	}
	for l, n := range native {
		var why string
		if p, s, _, root := parseLabel(l); root {
			n, why = nativeReason(tok, p, s, n)
		} else {
			n, why = imageReason(tok, n)
		}
		out = append(out, Location{Label: l, Native: n, Why: why})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out, nil
}

// SoftwareKeys lists the keys whose material this keyring holds in
// keyd's memory (root key generations unwrapped at start, gm image keys
// unwrapped on use): none on a module with every SM mechanism.
func (kr *Keyring) SoftwareKeys() []string {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	var out []string
	for sl, gens := range kr.keys {
		for gen, k := range gens {
			if _, sm2Key := k.signer.(*sm2.PrivateKey); k.sym != nil || sm2Key {
				out = append(out, Label(sl.p, sl.s, gen))
			}
		}
	}
	for kid, k := range kr.images {
		if k.gm != nil {
			out = append(out, imageLabel(kid))
		}
	}
	sort.Strings(out)
	return out
}
