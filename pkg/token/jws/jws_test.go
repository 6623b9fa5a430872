package jws

import (
	"crypto"
	"crypto/ecdsa"
	"strings"
	"testing"

	"github.com/podkey/podkey/pkg/suite"
)

// A token has one spelling: a segment whose last character carries set
// unused bits, or with a line break, is refused, as is a header asking
// for an extension ("crit"), which podkey does not understand.
func TestOneSpellingAndNoCriticalExtensions(t *testing.T) {
	for _, s := range suite.All {
		key, err := s.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		tok, err := Sign(s, key, "k1", []byte(`{"sub":"a"}`))
		if err != nil {
			t.Fatal(err)
		}
		pub := publicOf(t, key)
		if _, err := Verify(s, pub, tok); err != nil {
			t.Fatalf("%s: the genuine token: %v", s, err)
		}
		parts := strings.Split(tok, ".")
		for i, p := range parts {
			for _, v := range respell(p) {
				alt := append([]string(nil), parts...)
				alt[i] = v
				if _, err := Verify(s, pub, strings.Join(alt, ".")); err == nil {
					t.Errorf("%s: segment %d respelled %q verified", s, i, v)
				}
			}
		}
		crit := b64.EncodeToString([]byte(`{"alg":"` + Alg(s) + `","kid":"k1","crit":["exp"],"exp":1}`))
		signedCrit, err := signInput(s, key, crit+"."+parts[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(s, pub, signedCrit); err == nil || !strings.Contains(err.Error(), "critical") {
			t.Errorf("%s: a token with crit: %v", s, err)
		}
	}
}

func publicOf(t *testing.T, key crypto.Signer) *ecdsa.PublicKey {
	t.Helper()
	switch p := key.Public().(type) {
	case *ecdsa.PublicKey:
		return p
	default:
		t.Fatalf("public key %T", p)
		return nil
	}
}

// respell gives other spellings the lenient decoder takes for seg.
func respell(seg string) []string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	out := []string{seg[:1] + "\n" + seg[1:]}
	unused := map[int]int{2: 4, 3: 2}[len(seg)%4]
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	for low := 1; low < 1<<unused; low++ {
		out = append(out, seg[:len(seg)-1]+string(alphabet[last|low]))
	}
	return out
}
