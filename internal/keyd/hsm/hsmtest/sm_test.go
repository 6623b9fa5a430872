package hsmtest_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/miekg/pkcs11"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
)

// smSession opens a read/write session on a fresh SM-module token through
// the module's own PKCS#11 interface, logged in as the user unless
// loggedOut.
func smSession(t *testing.T, loggedOut bool) (*pkcs11.Ctx, pkcs11.SessionHandle, hsm.Config) {
	t.Helper()
	cfg := hsmtest.SMToken(t)
	p := pkcs11.New(cfg.ModulePath)
	if p == nil {
		t.Fatal("loading the module")
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || ti.Label != cfg.TokenLabel {
			continue
		}
		sh, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.CloseSession(sh) })
		if !loggedOut {
			if err := p.Login(sh, pkcs11.CKU_USER, string(cfg.PIN)); err != nil {
				t.Fatal(err)
			}
		}
		return p, sh, cfg
	}
	t.Fatalf("token %s not found", cfg.TokenLabel)
	return nil, 0, cfg
}

func rvOf(err error) uint {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

func secretTemplate(label string, keyType uint, extractable bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
	}
}

// A sensitive or non-extractable key's value never leaves the module:
// not as an attribute, not wrapped; an extractable key wraps and unwraps
// into the same key.
func TestSMModuleKeepsKeysInside(t *testing.T) {
	p, sh, cfg := smSession(t, false)
	m := cfg.Mechanisms
	sm4Gen := []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM4KeyGen, nil)}
	kek, err := p.GenerateKey(sh, sm4Gen, secretTemplate("kek", m.SM4KeyType, false))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		tmpl []*pkcs11.Attribute
	}{
		{"sensitive", append(secretTemplate("s", pkcs11.CKK_GENERIC_SECRET, true), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32))},
		{"not extractable", append(secretTemplate("n", pkcs11.CKK_GENERIC_SECRET, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32))},
	} {
		k, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, c.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.GetAttributeValue(sh, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); rvOf(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%s key: reading its value: %v", c.name, err)
		}
	}
	pub, priv, err := p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM2KeyGen, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetAttributeValue(sh, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); rvOf(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
		t.Errorf("SM2 private key: reading its value: %v", err)
	}
	if _, err := p.GetAttributeValue(sh, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)}); err != nil {
		t.Errorf("SM2 public key: %v", err)
	}

	gcm := func() []*pkcs11.Mechanism {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM4GCM, pkcs11.NewGCMParams(make([]byte, 12), []byte("aad"), 128))}
	}
	if _, err := p.WrapKey(sh, gcm(), kek, kek); rvOf(err) != pkcs11.CKR_KEY_UNEXTRACTABLE {
		t.Errorf("wrapping a non-extractable key: %v", err)
	}
	mac, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
		append(secretTemplate("mac", pkcs11.CKK_GENERIC_SECRET, true), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32)))
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := p.WrapKey(sh, gcm(), kek, mac)
	if err != nil {
		t.Fatal(err)
	}
	back, err := p.UnwrapKey(sh, gcm(), kek, wrapped, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
	if err != nil {
		t.Fatal(err)
	}
	macOf := func(k pkcs11.ObjectHandle) []byte {
		t.Helper()
		if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM3HMAC, nil)}, k); err != nil {
			t.Fatal(err)
		}
		v, err := p.Sign(sh, []byte("data"))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if !bytes.Equal(macOf(mac), macOf(back)) {
		t.Error("the unwrapped key is not the wrapped one")
	}
	wrapped[0] ^= 1
	if _, err := p.UnwrapKey(sh, gcm(), kek, wrapped, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET)}); rvOf(err) != pkcs11.CKR_WRAPPED_KEY_INVALID {
		t.Errorf("unwrapping a tampered key: %v", err)
	}
}

// SM2 signatures over a precomputed e and HMAC-SM3 match what software
// computes (gmsm), with the key read from the module only in a test that
// made it extractable.
func TestSMModuleAlgorithmsMatchSoftware(t *testing.T) {
	p, sh, cfg := smSession(t, false)
	m := cfg.Mechanisms
	pubH, privH, err := p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM2KeyGen, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.GetAttributeValue(sh, pubH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		t.Fatal(err)
	}
	pt := a[0].Value[2:] // DER OCTET STRING of 65 bytes
	pub, err := sm2.NewPublicKey(pt)
	if err != nil {
		t.Fatal(err)
	}
	e, err := sm2.CalculateSM2Hash(pub, []byte("message"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM2Sign, nil)}, privH); err != nil {
		t.Fatal(err)
	}
	sig, err := p.Sign(sh, e)
	if err != nil {
		t.Fatal(err)
	}
	if len(sig) != 64 || !sm2.VerifyWithSM2(pub, nil, []byte("message"), new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatalf("the module's SM2 signature does not verify in software (%d bytes)", len(sig))
	}
	if err := p.VerifyInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM2Sign, nil)}, pubH); err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(sh, e, sig); err != nil {
		t.Fatalf("the module refuses its own signature: %v", err)
	}

	key := make([]byte, 32)
	rand.Read(key)
	k, err := p.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, key), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM3HMAC, nil)}, k); err != nil {
		t.Fatal(err)
	}
	got, err := p.Sign(sh, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	h := hmac.New(sm3.New, key)
	h.Write([]byte("data"))
	if !bytes.Equal(got, h.Sum(nil)) {
		t.Fatal("the module's HMAC-SM3 differs from software's")
	}
	data := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(data, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "mac", "-digest", "SM3", "-macopt", "hexkey:"+hex.EncodeToString(key), "-in", data, "HMAC").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl mac: %v\n%s", err, out)
	}
	if !strings.EqualFold(strings.TrimSpace(string(out)), hex.EncodeToString(got)) {
		t.Fatalf("the module's HMAC-SM3 %x, OpenSSL's %s", got, out)
	}
}

// Without a login, private objects are invisible and cannot be made; a
// wrong PIN is refused; a read-only session cannot make token objects;
// the PIN is nowhere in the token directory.
func TestSMModuleEnforcesSessionsAndLogin(t *testing.T) {
	p, sh, cfg := smSession(t, true)
	m := cfg.Mechanisms
	if err := p.Login(sh, pkcs11.CKU_USER, "wrong-pin"); rvOf(err) != pkcs11.CKR_PIN_INCORRECT {
		t.Fatalf("a wrong PIN: %v", err)
	}
	gen := []*pkcs11.Mechanism{pkcs11.NewMechanism(m.SM4KeyGen, nil)}
	if _, err := p.GenerateKey(sh, gen, secretTemplate("k", m.SM4KeyType, false)); rvOf(err) != pkcs11.CKR_USER_NOT_LOGGED_IN {
		t.Fatalf("a private key without a login: %v", err)
	}
	if err := p.Login(sh, pkcs11.CKU_USER, string(cfg.PIN)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GenerateKey(sh, gen, secretTemplate("k", m.SM4KeyType, false)); err != nil {
		t.Fatal(err)
	}
	info, err := p.GetSessionInfo(sh)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := p.OpenSession(info.SlotID, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(ro)
	if _, err := p.GenerateKey(ro, gen, secretTemplate("k2", m.SM4KeyType, false)); rvOf(err) != pkcs11.CKR_SESSION_READ_ONLY {
		t.Fatalf("a token key from a read-only session: %v", err)
	}
	find := func() int {
		t.Helper()
		if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "k")}); err != nil {
			t.Fatal(err)
		}
		hs, _, err := p.FindObjects(sh, 10)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.FindObjectsFinal(sh); err != nil {
			t.Fatal(err)
		}
		return len(hs)
	}
	if n := find(); n != 1 {
		t.Fatalf("logged in, %d keys found", n)
	}
	if err := p.Logout(sh); err != nil {
		t.Fatal(err)
	}
	if n := find(); n != 0 {
		t.Fatalf("logged out, %d private keys visible", n)
	}
	dir := os.Getenv("PODKEY_SMHSM_DIR")
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(cfg.PIN)) {
				t.Errorf("%s holds the PIN", path)
			}
		}
		return nil
	})
}
