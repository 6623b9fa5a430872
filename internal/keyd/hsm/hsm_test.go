package hsm_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
)

func TestTokensCreatedAfterLoadAreFound(t *testing.T) {
	hsmtest.Each(t, testTokensCreatedAfterLoadAreFound)
}

func testTokensCreatedAfterLoadAreFound(t *testing.T, m hsmtest.Module) {
	a := hsmtest.OpenOn(t, m) // loads the module
	cfg := m.Token(t)
	b, err := hsm.Open(cfg)
	if err != nil {
		t.Fatalf("token initialised after the module was loaded: %v", err)
	}
	defer b.Close()
	if a.Label() == b.Label() {
		t.Fatal("labels must differ")
	}
}

func TestOpenErrors(t *testing.T) {
	cfg := hsmtest.Token(t)
	bad := cfg
	bad.PIN = "wrong-pin"
	_, err := hsm.Open(bad)
	if !errors.Is(err, hsm.ErrPINIncorrect) {
		t.Fatalf("wrong PIN: got %v", err)
	}
	if strings.Contains(err.Error(), "wrong-pin") {
		t.Fatal("error reveals the PIN")
	}
	missing := cfg
	missing.TokenLabel = "no-such-token"
	if _, err := hsm.Open(missing); !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Fatalf("missing token: got %v", err)
	}
	noModule := cfg
	noModule.ModulePath = "/nonexistent/libpkcs11.so"
	if _, err := hsm.Open(noModule); err == nil {
		t.Fatal("missing module: no error")
	}
}

func TestSecretNeverPrints(t *testing.T) {
	cfg := hsm.Config{PIN: "s3cr3t"}
	for _, s := range []string{
		strings.Join([]string{cfg.PIN.String()}, ""),
		fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.PIN),
	} {
		if strings.Contains(s, "s3cr3t") {
			t.Fatalf("PIN printed: %s", s)
		}
	}
}

func TestRootKeysAreProtectedAndNeverOverwritten(t *testing.T) {
	hsmtest.Each(t, testRootKeysAreProtectedAndNeverOverwritten)
}

func testRootKeysAreProtectedAndNeverOverwritten(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	if err := tok.GenerateAESKey(ctx, "kek"); err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateAESKey(ctx, "kek"); !errors.Is(err, hsm.ErrObjectExists) {
		t.Fatalf("second generate: %v", err)
	}
	if err := tok.GenerateHMACKey(ctx, "mac"); err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateECKeyPair(ctx, "ca"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		c hsm.Class
		l string
	}{{hsm.SecretKey, "kek"}, {hsm.SecretKey, "mac"}, {hsm.PrivateKey, "ca"}} {
		a, err := tok.Attributes(ctx, k.c, k.l)
		if err != nil {
			t.Fatal(err)
		}
		if !a.Token || !a.Sensitive || a.Extractable || !a.Private {
			t.Fatalf("%s: attributes %+v", k.l, a)
		}
	}
}

func TestOperations(t *testing.T) { hsmtest.Each(t, testOperations) }

func testOperations(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	must(t, tok.GenerateAESKey(ctx, "kek"))
	must(t, tok.GenerateHMACKey(ctx, "mac"))
	must(t, tok.GenerateECKeyPair(ctx, "ca"))

	blob, err := tok.EncryptGCM(ctx, "kek", []byte("hello"), []byte("ctx-a"))
	must(t, err)
	pt, err := tok.DecryptGCM(ctx, "kek", blob, []byte("ctx-a"))
	must(t, err)
	if string(pt) != "hello" {
		t.Fatalf("round trip: %q", pt)
	}
	if _, err := tok.DecryptGCM(ctx, "kek", blob, []byte("ctx-b")); !errors.Is(err, hsm.ErrDecrypt) {
		t.Fatalf("wrong AAD: %v", err)
	}
	blob[len(blob)-1] ^= 1
	if _, err := tok.DecryptGCM(ctx, "kek", blob, []byte("ctx-a")); !errors.Is(err, hsm.ErrDecrypt) {
		t.Fatalf("tampered: %v", err)
	}

	m1, err := tok.HMACSHA256(ctx, "mac", []byte("data"))
	must(t, err)
	m2, err := tok.HMACSHA256(ctx, "mac", []byte("data"))
	must(t, err)
	if len(m1) != 32 || !bytes.Equal(m1, m2) {
		t.Fatalf("HMAC not deterministic: %x %x", m1, m2)
	}
	if m3, _ := tok.HMACSHA256(ctx, "mac", []byte("datb")); bytes.Equal(m1, m3) || hmac.Equal(m1, sha256.New().Sum(nil)) {
		t.Fatal("HMAC ignores its input")
	}

	s, err := tok.ECDSASigner(ctx, "ca")
	must(t, err)
	d := sha256.Sum256([]byte("msg"))
	sig, err := s.Sign(nil, d[:], nil)
	must(t, err)
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("ECDSA signature does not verify")
	}
	if _, err := tok.HMACSHA256(ctx, "absent", nil); !errors.Is(err, hsm.ErrObjectNotFound) {
		t.Fatalf("absent key: %v", err)
	}

	r1, err := tok.Random(ctx, 32)
	must(t, err)
	r2, err := tok.Random(ctx, 32)
	must(t, err)
	if len(r1) != 32 || bytes.Equal(r1, r2) || bytes.Equal(r1, make([]byte, 32)) {
		t.Fatalf("random bytes: %x %x", r1, r2)
	}
}

func TestDataObjects(t *testing.T) { hsmtest.Each(t, testDataObjects) }

func testDataObjects(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	must(t, tok.PutData(ctx, "podkey/x", []byte("v1"), true))
	if err := tok.PutData(ctx, "podkey/x", []byte("v2"), true); !errors.Is(err, hsm.ErrObjectExists) {
		t.Fatalf("overwrite: %v", err)
	}
	v, err := tok.GetData(ctx, "podkey/x")
	must(t, err)
	if string(v) != "v1" {
		t.Fatalf("got %q", v)
	}
	objs, err := tok.List(ctx, "podkey/")
	must(t, err)
	if len(objs) != 1 || objs[0].Label != "podkey/x" || objs[0].Class != hsm.Data {
		t.Fatalf("list: %+v", objs)
	}
}

// TestRecoversFromStaleHandles logs the token out and destroys and
// recreates a key behind the pool's back: operations must recover.
func TestRecoversFromStaleHandles(t *testing.T) { hsmtest.Each(t, testRecoversFromStaleHandles) }

func testRecoversFromStaleHandles(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	must(t, tok.GenerateHMACKey(ctx, "mac"))
	m1, err := tok.HMACSHA256(ctx, "mac", []byte("x"))
	must(t, err)
	// Replace the key through a second Token so the first keeps a stale handle.
	other, err := hsm.Open(hsm.Config{ModulePath: tok.ModulePath(), TokenLabel: tok.Label(), PIN: hsmtest.PIN})
	must(t, err)
	must(t, other.Destroy(ctx, hsm.SecretKey, "mac"))
	must(t, other.GenerateHMACKey(ctx, "mac"))
	other.Close()
	m2, err := tok.HMACSHA256(ctx, "mac", []byte("x"))
	if err != nil {
		t.Fatalf("after handle change: %v", err)
	}
	if bytes.Equal(m1, m2) {
		t.Fatal("still using the destroyed key")
	}
	must(t, tok.Ping(ctx))
}

func TestPoolIsBoundedAndConcurrent(t *testing.T) { hsmtest.Each(t, testPoolIsBoundedAndConcurrent) }

func testPoolIsBoundedAndConcurrent(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	cfg := m.Token(t)
	cfg.MaxSessions = 2
	tok, err := hsm.Open(cfg)
	must(t, err)
	defer tok.Close()
	must(t, tok.GenerateHMACKey(ctx, "mac"))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tok.HMACSHA256(ctx, "mac", []byte("x")); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	// With a cancelled context and both sessions idle, work still proceeds
	// (idle sessions are taken first); a closed token refuses.
	tok.Close()
	if _, err := tok.HMACSHA256(cctx, "mac", nil); !errors.Is(err, hsm.ErrClosed) {
		t.Fatalf("closed token: %v", err)
	}
}

// Objects are created, read and destroyed from many goroutines at once, as
// keyd's replicas and handlers do (image keys made in parallel, anchors
// written while another replica reads them): every call succeeds. On
// SoftHSM2's file store unordered, a creation met by a lookup failed with
// CKR_GENERAL_ERROR and a read of an object being destroyed with
// CKR_ATTRIBUTE_VALUE_INVALID.
func TestObjectsCreatedReadAndDestroyedInParallel(t *testing.T) {
	hsmtest.Each(t, testObjectsCreatedReadAndDestroyedInParallel)
}

func testObjectsCreatedReadAndDestroyedInParallel(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	cfg := m.Token(t)
	// Two opens of one token, as two replicas in one process.
	a, err := hsm.Open(cfg)
	must(t, err)
	defer a.Close()
	b, err := hsm.Open(cfg)
	must(t, err)
	defer b.Close()
	must(t, a.GenerateHMACKey(ctx, "mac"))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 4 {
		tok := []*hsm.Token{a, b}[w%2]
		wg.Add(2)
		go func() { // creators and destroyers
			defer wg.Done()
			for i := range 10 {
				label := fmt.Sprintf("p-%d-%d", w, i)
				if err := tok.GenerateECKeyPair(ctx, label); err != nil {
					errs <- fmt.Errorf("generate %s: %w", label, err)
					return
				}
				if err := tok.PutData(ctx, "d-"+label, []byte(label), true); err != nil {
					errs <- fmt.Errorf("put d-%s: %w", label, err)
					return
				}
				if i%2 == 0 {
					if err := tok.Destroy(ctx, hsm.Data, "d-"+label); err != nil {
						errs <- fmt.Errorf("destroy d-%s: %w", label, err)
						return
					}
				}
			}
		}()
		go func() { // readers
			defer wg.Done()
			for range 20 {
				objs, err := tok.List(ctx, "d-")
				if err != nil {
					errs <- fmt.Errorf("list: %w", err)
					return
				}
				for _, o := range objs {
					v, err := tok.GetData(ctx, o.Label)
					if err != nil && !errors.Is(err, hsm.ErrObjectNotFound) {
						errs <- fmt.Errorf("get %s: %w", o.Label, err)
						return
					}
					if err == nil && "d-"+string(v) != o.Label {
						errs <- fmt.Errorf("%s holds %q", o.Label, v)
						return
					}
				}
				if _, err := tok.HMACSHA256(ctx, "mac", []byte("x")); err != nil {
					errs <- fmt.Errorf("hmac: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	objs, err := a.List(ctx, "d-")
	must(t, err)
	if len(objs) != 4*5 {
		t.Fatalf("%d data objects left, want %d", len(objs), 4*5)
	}
}

func TestParseMechanisms(t *testing.T) {
	m, err := hsm.ParseMechanisms([]byte("version: v1\nmechanisms:\n  sm3Hmac: \"0x8000000b\"\n"))
	must(t, err)
	if m.SM3HMAC != 0x8000000b {
		t.Fatalf("got %#x", m.SM3HMAC)
	}
	for _, bad := range []string{
		"version: v2\n",
		"version: v1\nmechanisms: {sm9: \"1\"}\n",
		"version: v1\nmechanisms: {sm3Hmac: \"zz\"}\n",
		"version: v1\nmechanisms: {sm3Hmac: \"0\"}\n",
		"version: v1\nmechanisms: {sm4Gcm: \"0x1\"}\n",
		"version: v1\nextra: 1\n",
	} {
		if _, err := hsm.ParseMechanisms([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzParseMechanisms(f *testing.F) {
	f.Add([]byte("version: v1\nmechanisms:\n  sm3Hmac: \"0x8000000b\"\n"))
	f.Add([]byte("version: v1\nmechanisms: {sm2Sign: '1', sm2KeyGen: '2', sm2KeyType: '3'}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := hsm.ParseMechanisms(data)
		if err != nil {
			return
		}
		if (m.SM4GCM != 0) != (m.SM4KeyGen != 0 && m.SM4KeyType != 0) {
			t.Fatalf("inconsistent table accepted: %+v", m)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestReloginAfterLogout(t *testing.T) { hsmtest.Each(t, testReloginAfterLogout) }

func testReloginAfterLogout(t *testing.T, m hsmtest.Module) {
	ctx := context.Background()
	tok := hsmtest.OpenOn(t, m)
	must(t, tok.GenerateHMACKey(ctx, "mac"))
	must(t, hsm.LogoutForTest(tok))
	if _, err := tok.HMACSHA256(ctx, "mac", []byte("x")); err != nil {
		t.Fatalf("after logout (cached handle): %v", err)
	}
	must(t, hsm.LogoutForTest(tok))
	// A lookup by label while logged out sees no private objects; it must
	// log in again rather than report the key missing.
	if err := tok.GenerateHMACKey(ctx, "mac2"); err != nil {
		t.Fatalf("after logout (new object): %v", err)
	}
	must(t, hsm.LogoutForTest(tok))
	if _, err := tok.HMACSHA256(ctx, "mac2", []byte("x")); err != nil {
		t.Fatalf("after logout (uncached): %v", err)
	}
	if s := tok.Stats(); s.Relogins != 3 || s.Errors != 0 {
		t.Fatalf("stats after three recovered logouts: %+v", s)
	}
}

func TestECDHMatchesSoftware(t *testing.T) { hsmtest.Each(t, testECDHMatchesSoftware) }

func testECDHMatchesSoftware(t *testing.T, m hsmtest.Module) {
	tok := hsmtest.OpenOn(t, m)
	ctx := context.Background()
	if err := tok.GenerateECDHKeyPair(ctx, "test/ecdh"); err != nil {
		t.Fatal(err)
	}
	pub, err := tok.ECPublicKey(ctx, "test/ecdh")
	if err != nil {
		t.Fatal(err)
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tok.ECDH(ctx, "test/ecdh", eph.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	pubECDH, err := pub.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	want, err := eph.ECDH(pubECDH)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("token's shared secret differs from software's")
	}
	before := tok.Stats().Errors
	if _, err := tok.ECDH(ctx, "test/ecdh", []byte{4, 1, 2, 3}); err == nil {
		t.Fatal("a point off the curve was accepted")
	}
	if tok.Stats().Errors != before+1 {
		t.Fatalf("a failed operation was not counted: %+v", tok.Stats())
	}
	// A signing key pair may not be used for key agreement.
	if err := tok.GenerateECKeyPair(ctx, "test/sign"); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.ECDH(ctx, "test/sign", eph.PublicKey().Bytes()); err == nil {
		t.Fatal("a signing key derived a secret")
	}
}

// TestRecoversFromAModuleRestart: the module is finalised and initialised
// again under the token (every session handle and the login gone, as
// when a vendor client library restarts); the next operation recovers.
func TestRecoversFromAModuleRestart(t *testing.T) {
	hsmtest.Each(t, func(t *testing.T, m hsmtest.Module) {
		ctx := context.Background()
		tok := hsmtest.OpenOn(t, m)
		must(t, tok.GenerateHMACKey(ctx, "mac"))
		before, err := tok.HMACSHA256(ctx, "mac", []byte("x"))
		must(t, err)
		p := pkcs11.New(tok.ModulePath())
		must(t, p.Finalize())
		must(t, p.Initialize())
		after, err := tok.HMACSHA256(ctx, "mac", []byte("x"))
		if err != nil {
			t.Fatalf("after the module restarted: %v", err)
		}
		if !bytes.Equal(before, after) {
			t.Fatal("another key after the restart")
		}
		if s := tok.Stats(); s.Relogins == 0 {
			t.Fatalf("no login after the restart: %+v", s)
		}
	})
}

// TestRecoversFromATokenRemovedAndReinserted: with the SM module's token
// taken away, operations fail naming the key and the mechanism; put back,
// the next operation logs in again and succeeds.
func TestRecoversFromATokenRemovedAndReinserted(t *testing.T) {
	ctx := context.Background()
	m := hsmtest.Modules[1]
	tok := hsmtest.OpenOn(t, m)
	must(t, tok.GenerateHMACKey(ctx, "mac"))
	want, err := tok.Sign(ctx, tok.Mechanisms().SM3HMAC, hsm.SecretKey, "mac", []byte("x"))
	must(t, err)
	dir := hsmtest.SMTokenDir(t, tok.Label())
	must(t, os.Rename(dir, dir+".out"))
	_, err = tok.Sign(ctx, tok.Mechanisms().SM3HMAC, hsm.SecretKey, "mac", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), `"mac"`) || !strings.Contains(err.Error(), fmt.Sprintf("sm3Hmac %#x", tok.Mechanisms().SM3HMAC)) {
		t.Fatalf("with the token removed: %v", err)
	}
	must(t, os.Rename(dir+".out", dir))
	got, err := tok.Sign(ctx, tok.Mechanisms().SM3HMAC, hsm.SecretKey, "mac", []byte("x"))
	if err != nil {
		t.Fatalf("with the token back: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("another key after reinsertion")
	}
}
