package hsm

import (
	"context"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// Class is a PKCS#11 object class podkey uses.
type Class uint

const (
	SecretKey  Class = pkcs11.CKO_SECRET_KEY
	PrivateKey Class = pkcs11.CKO_PRIVATE_KEY
	PublicKey  Class = pkcs11.CKO_PUBLIC_KEY
	Data       Class = pkcs11.CKO_DATA
)

func (c Class) String() string {
	switch c {
	case SecretKey:
		return "secret-key"
	case PrivateKey:
		return "private-key"
	case PublicKey:
		return "public-key"
	case Data:
		return "data"
	}
	return fmt.Sprintf("class(0x%x)", uint(c))
}

// Application is the CKA_APPLICATION of podkey's data objects.
const Application = "podkey"

type objectKey struct {
	class Class
	label string
}

// handle resolves an object by class and label, caching the handle. Cached
// handles are dropped when the token reports them invalid.
func (t *Token) handle(sh pkcs11.SessionHandle, class Class, label string) (pkcs11.ObjectHandle, error) {
	k := objectKey{class, label}
	t.handlesMu.RLock()
	h, ok := t.handles[k]
	t.handlesMu.RUnlock()
	if ok {
		return h, nil
	}
	hs, err := t.findByLabel(sh, class, label, 2)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		if !t.loggedIn(sh) {
			// Private objects are invisible to a logged-out session: have
			// do log in again instead of reporting the key missing.
			return 0, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		return 0, fmt.Errorf("hsm: %s %q: %w", class, label, ErrObjectNotFound)
	case 1:
	default:
		return 0, fmt.Errorf("hsm: %s %q: more than one object has this label", class, label)
	}
	t.handlesMu.Lock()
	t.handles[k] = hs[0]
	t.handlesMu.Unlock()
	return hs[0], nil
}

// loggedIn reports whether the session sees the token as logged in.
func (t *Token) loggedIn(sh pkcs11.SessionHandle) bool {
	info, err := t.p.GetSessionInfo(sh)
	if err != nil {
		return true // let the caller's own error surface
	}
	return info.State == pkcs11.CKS_RW_USER_FUNCTIONS || info.State == pkcs11.CKS_RO_USER_FUNCTIONS
}

func (t *Token) flushHandles() {
	t.handlesMu.Lock()
	t.handles = map[objectKey]pkcs11.ObjectHandle{}
	t.handlesMu.Unlock()
}

func (t *Token) find(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	t.objects.RLock()
	defer t.objects.RUnlock()
	if err := t.p.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := t.p.FindObjects(sh, 64)
		if err != nil {
			_ = t.p.FindObjectsFinal(sh)
			return nil, err
		}
		all = append(all, hs...)
		if len(hs) == 0 || (max > 0 && len(all) >= max) {
			break
		}
	}
	return all, t.p.FindObjectsFinal(sh)
}

// findByLabel finds up to max objects of the class with the label.
func (t *Token) findByLabel(sh pkcs11.SessionHandle, class Class, label string, max int) ([]pkcs11.ObjectHandle, error) {
	return t.find(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, uint(class)),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, max)
}

// Exists reports whether an object of the class has the label.
func (t *Token) Exists(ctx context.Context, class Class, label string) (bool, error) {
	var found bool
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		hs, err := t.findByLabel(sh, class, label, 1)
		if err == nil && len(hs) == 0 && !t.loggedIn(sh) {
			return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		found = len(hs) > 0
		return err
	})
	return found, err
}

// Object describes a token object without its value.
type Object struct {
	Class Class
	Label string
}

// List returns podkey's objects whose label starts with prefix.
func (t *Token) List(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		out = out[:0]
		if !t.loggedIn(sh) {
			return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		hs, err := t.find(sh, nil, 0)
		if err != nil {
			return err
		}
		for _, h := range hs {
			attrs, err := t.attributes(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			})
			if err != nil {
				continue
			}
			label := string(attrs[1].Value)
			if !strings.HasPrefix(label, prefix) {
				continue
			}
			out = append(out, Object{Class: Class(bytesToUint(attrs[0].Value)), Label: label})
		}
		return nil
	})
	return out, err
}

func bytesToUint(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- { // PKCS#11 CK_ULONG in host (little-endian) order
		v = v<<8 | uint(b[i])
	}
	return v
}

// create runs a generation step unless an object of the class already has
// the label: root keys are never overwritten.
func (t *Token) create(ctx context.Context, class Class, label string, gen func(sh pkcs11.SessionHandle) error) error {
	return t.do(ctx, func(sh pkcs11.SessionHandle) error {
		hs, err := t.findByLabel(sh, class, label, 1)
		if err != nil {
			return err
		}
		if len(hs) > 0 {
			return fmt.Errorf("hsm: %s %q: %w", class, label, ErrObjectExists)
		}
		if !t.loggedIn(sh) {
			return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		t.objects.Lock()
		defer t.objects.Unlock()
		return gen(sh)
	})
}

// attributes reads attributes of an object (a read of the object store).
func (t *Token) attributes(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, tmpl []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	t.objects.RLock()
	defer t.objects.RUnlock()
	return t.p.GetAttributeValue(sh, h, tmpl)
}

func protectedKey(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
	}
}

// GenerateAESKey creates a 256-bit, sensitive, non-extractable AES token key
// for encryption and key wrapping (podkey's key-encryption key).
func (t *Token) GenerateAESKey(ctx context.Context, label string) error {
	return t.create(ctx, SecretKey, label, func(sh pkcs11.SessionHandle) error {
		attrs := append(protectedKey(label),
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		)
		_, err := t.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, attrs)
		return err
	})
}

// GenerateKEK creates a key-encryption key: an SM4 key when the
// mechanism table has SM4-GCM (sm4Gcm, sm4KeyGen, sm4KeyType), otherwise
// AES-256. EncryptGCM and DecryptGCM use the GCM mechanism of its type.
func (t *Token) GenerateKEK(ctx context.Context, label string) error {
	m := t.cfg.Mechanisms
	if m.SM4GCM == 0 {
		return t.GenerateAESKey(ctx, label)
	}
	return t.create(ctx, SecretKey, label, func(sh pkcs11.SessionHandle) error {
		attrs := append(protectedKey(label),
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, m.SM4KeyType),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		)
		_, err := t.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM4KeyGen, nil)}, attrs)
		if err != nil {
			return fmt.Errorf("%w (mechanism sm4KeyGen %#x)", err, m.SM4KeyGen)
		}
		return nil
	})
}

// gcmMechanism is the GCM mechanism for a secret key: the table's SM4-GCM
// for an SM4 key, AES-GCM otherwise. Cached by label with the handles.
func (t *Token) gcmMechanism(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, label string) (uint, error) {
	m := t.cfg.Mechanisms
	if m.SM4GCM == 0 {
		return pkcs11.CKM_AES_GCM, nil
	}
	k := objectKey{keyTypeClass, label}
	t.handlesMu.RLock()
	kt, ok := t.handles[k]
	t.handlesMu.RUnlock()
	if !ok {
		a, err := t.attributes(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
		if err != nil {
			return 0, err
		}
		kt = pkcs11.ObjectHandle(bytesToUint(a[0].Value))
		t.handlesMu.Lock()
		t.handles[k] = kt
		t.handlesMu.Unlock()
	}
	if uint(kt) == m.SM4KeyType {
		return m.SM4GCM, nil
	}
	return pkcs11.CKM_AES_GCM, nil
}

// keyTypeClass keys the cache of secret keys' types beside their handles
// (both are dropped together when the token invalidates handles).
const keyTypeClass Class = ^Class(0)

// GenerateHMACKey creates a 256-bit, sensitive, non-extractable generic
// secret token key for HMAC.
func (t *Token) GenerateHMACKey(ctx context.Context, label string) error {
	return t.create(ctx, SecretKey, label, func(sh pkcs11.SessionHandle) error {
		attrs := append(protectedKey(label),
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		)
		_, err := t.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, attrs)
		return err
	})
}

// oidP256 is the DER encoding of the P-256 curve OID, CKA_EC_PARAMS.
var oidP256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// GenerateECKeyPair creates an ECDSA P-256 key pair; the private half is a
// sensitive, non-extractable token object. Both halves carry the label.
func (t *Token) GenerateECKeyPair(ctx context.Context, label string) error {
	return t.generateEC(ctx, label, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY)
}

// GenerateECDHKeyPair creates a P-256 key pair for key agreement
// (CKM_ECDH1_DERIVE) only; the private half is a sensitive,
// non-extractable token object.
func (t *Token) GenerateECDHKeyPair(ctx context.Context, label string) error {
	return t.generateEC(ctx, label, pkcs11.CKA_DERIVE, pkcs11.CKA_DERIVE)
}

// GenerateSM2KeyPair creates an SM2 signing key pair through the vendor
// mechanisms of the table (sm2KeyGen, sm2KeyType); the private half is a
// sensitive, non-extractable token object.
func (t *Token) GenerateSM2KeyPair(ctx context.Context, label string) error {
	m := t.cfg.Mechanisms
	if m.SM2KeyGen == 0 {
		return fmt.Errorf("hsm: SM2 key %q: the mechanism table has no sm2KeyGen", label)
	}
	return t.generateKeyPair(ctx, label, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, m.SM2KeyGen, m.SM2KeyType, oidSM2)
}

// GenerateSM2DecryptionKeyPair creates an SM2 key pair for SM2
// public-key encryption (the table's sm2Decrypt); the private half is a
// sensitive, non-extractable token object that only decrypts.
func (t *Token) GenerateSM2DecryptionKeyPair(ctx context.Context, label string) error {
	m := t.cfg.Mechanisms
	if m.SM2KeyGen == 0 || m.SM2Decrypt == 0 {
		return fmt.Errorf("hsm: SM2 key %q: the mechanism table has no sm2KeyGen or sm2Decrypt", label)
	}
	return t.generateKeyPair(ctx, label, pkcs11.CKA_DECRYPT, pkcs11.CKA_ENCRYPT, m.SM2KeyGen, m.SM2KeyType, oidSM2)
}

// oidSM2 is the DER OID of the SM2 curve (1.2.156.10197.1.301).
var oidSM2 = []byte{0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d}

// generateEC creates a P-256 key pair whose private half may do privUse and
// whose public half may do pubUse.
func (t *Token) generateEC(ctx context.Context, label string, privUse, pubUse uint) error {
	return t.generateKeyPair(ctx, label, privUse, pubUse, pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKK_EC, oidP256)
}

func (t *Token) generateKeyPair(ctx context.Context, label string, privUse, pubUse, mech, keyType uint, curve []byte) error {
	return t.create(ctx, PrivateKey, label, func(sh pkcs11.SessionHandle) error {
		pub := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pubUse, true),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, curve),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		}
		priv := append(protectedKey(label),
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(privUse, true),
		)
		_, _, err := t.p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
		if err != nil {
			return fmt.Errorf("%w (mechanism %#x)", err, mech)
		}
		return nil
	})
}

// PutData stores a value as an unmodifiable data object. private=true keeps
// it readable only after login (wrapped key blobs); false suits certificates.
func (t *Token) PutData(ctx context.Context, label string, value []byte, private bool) error {
	return t.create(ctx, Data, label, func(sh pkcs11.SessionHandle) error {
		_, err := t.p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, private),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, Application),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		return err
	})
}

// GetData reads a data object's value.
func (t *Token) GetData(ctx context.Context, label string) ([]byte, error) {
	var v []byte
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, Data, label)
		if err != nil {
			return err
		}
		attrs, err := t.attributes(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return err
		}
		v = attrs[0].Value
		return nil
	})
	return v, err
}

// Destroy removes an object. Used for tests and pruning retired generations.
func (t *Token) Destroy(ctx context.Context, class Class, label string) error {
	return t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, class, label)
		if err != nil {
			return err
		}
		t.flushHandles()
		t.objects.Lock()
		defer t.objects.Unlock()
		return t.p.DestroyObject(sh, h)
	})
}

// KeyAttributes reports the protection attributes of a key, so that set-up
// and tests can prove root keys are sensitive and non-extractable.
type KeyAttributes struct {
	Token, Sensitive, Extractable, Private bool
	// KeyType is CKA_KEY_TYPE (a vendor code for SM2 and SM4 keys).
	KeyType uint
}

// Attributes reads a key's protection attributes.
func (t *Token) Attributes(ctx context.Context, class Class, label string) (KeyAttributes, error) {
	var ka KeyAttributes
	err := t.do(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := t.handle(sh, class, label)
		if err != nil {
			return err
		}
		attrs, err := t.attributes(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		})
		if err != nil {
			return err
		}
		b := func(a *pkcs11.Attribute) bool { return len(a.Value) > 0 && a.Value[0] != 0 }
		ka = KeyAttributes{Token: b(attrs[0]), Sensitive: b(attrs[1]), Extractable: b(attrs[2]), Private: b(attrs[3]), KeyType: bytesToUint(attrs[4].Value)}
		return nil
	})
	return ka, err
}
