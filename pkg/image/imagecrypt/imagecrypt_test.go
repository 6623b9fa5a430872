package imagecrypt_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/podkey/podkey/pkg/image/imagecrypt"
	"github.com/podkey/podkey/pkg/image/imagecrypt/imagecrypttest"
	"github.com/podkey/podkey/pkg/suite"
)

// holder is a recipient's private half in software, standing in for keyd.
type holder struct {
	r imagecrypt.Recipient
	k *imagecrypttest.Key
}

func newHolder(t testing.TB, kid string, st suite.Name) holder {
	k := imagecrypttest.NewKey(t, kid, st)
	return holder{r: k.Recipient, k: k}
}

func (h holder) unwrap(wrapped []byte) ([]byte, error) { return h.k.Unwrap(wrapped) }

func holders(t testing.TB, st suite.Name, n int) ([]holder, []imagecrypt.Recipient) {
	var hs []holder
	var rs []imagecrypt.Recipient
	for i := range n {
		h := newHolder(t, fmt.Sprintf("site-%02d", i), st)
		hs, rs = append(hs, h), append(rs, h.r)
	}
	return hs, rs
}

// open is what a node does: find its entry, unwrap it, open the options.
func open(t *testing.T, h holder, blob []byte) ([]byte, error) {
	t.Helper()
	bl, err := imagecrypt.Parse(blob)
	if err != nil {
		return nil, err
	}
	for _, e := range bl.Entries {
		if e.KeyID == h.r.KeyID {
			cek, err := h.unwrap(e.Wrapped)
			if err != nil {
				return nil, err
			}
			return imagecrypt.Open(bl, cek)
		}
	}
	return nil, errors.New("not a recipient")
}

func TestEveryRecipientOpensEveryLayer(t *testing.T) {
	for _, st := range suite.All {
		t.Run(string(st), func(t *testing.T) {
			hs, rs := holders(t, st, 5)
			s, err := imagecrypt.NewSealer(rs)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			layers := [][]byte{[]byte(`{"cipher":"AES_256_CTR_HMAC_SHA256","key":"bGF5ZXIx"}`), []byte(`{"key":"bGF5ZXIy"}`)}
			var blobs [][]byte
			for _, l := range layers {
				b, err := s.Seal(l)
				if err != nil {
					t.Fatal(err)
				}
				blobs = append(blobs, b)
			}
			for _, h := range hs {
				for i, b := range blobs {
					got, err := open(t, h, b)
					if err != nil || !bytes.Equal(got, layers[i]) {
						t.Fatalf("%s layer %d: %q, %v", h.r.KeyID, i, got, err)
					}
				}
			}
			// The layers share the recipient section and so the key set.
			b0, _ := imagecrypt.Parse(blobs[0])
			b1, _ := imagecrypt.Parse(blobs[1])
			k0, _ := imagecrypt.KeySet(b0.Suite, b0.Entries)
			k1, _ := imagecrypt.KeySet(b1.Suite, b1.Entries)
			if k0 != k1 || k0 != s.KeySet() || len(k0) != 16 {
				t.Fatalf("key sets %q %q %q", k0, k1, s.KeySet())
			}
			// A stranger's key opens nothing.
			stranger := newHolder(t, "site-00", st)
			if _, err := open(t, stranger, blobs[0]); !errors.Is(err, imagecrypt.ErrUnwrap) {
				t.Fatalf("another key of the same id: %v", err)
			}
		})
	}
}

func TestTamperingFailsClearly(t *testing.T) {
	for _, st := range suite.All {
		t.Run(string(st), func(t *testing.T) {
			hs, rs := holders(t, st, 3)
			s, err := imagecrypt.NewSealer(rs)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			blob, err := s.Seal([]byte(`{"key":"c2VjcmV0"}`))
			if err != nil {
				t.Fatal(err)
			}
			bl, err := imagecrypt.Parse(blob)
			if err != nil {
				t.Fatal(err)
			}
			mutate := func(f func(b *imagecrypt.Blob)) []byte {
				c, _ := imagecrypt.Parse(blob)
				f(c)
				out, err := c.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			cases := map[string][]byte{
				// Another recipient's entry changed: node 0's own entry is
				// intact, and the header binding still refuses the layer.
				"other entry": mutate(func(b *imagecrypt.Blob) { b.Entries[2].Wrapped[len(b.Entries[2].Wrapped)-1] ^= 1 }),
				"own entry":   mutate(func(b *imagecrypt.Blob) { b.Entries[0].Wrapped[len(b.Entries[0].Wrapped)-1] ^= 1 }),
				"entry added": mutate(func(b *imagecrypt.Blob) {
					b.Entries = append(b.Entries, imagecrypt.Entry{KeyID: "intruder", Wrapped: bl.Entries[1].Wrapped})
				}),
				"entry removed": mutate(func(b *imagecrypt.Blob) { b.Entries = b.Entries[:2] }),
				"sealed":        mutate(func(b *imagecrypt.Blob) { b.Sealed[0] ^= 1 }),
				"nonce":         mutate(func(b *imagecrypt.Blob) { b.Nonce[0] ^= 1 }),
			}
			for name, b := range cases {
				if got, err := open(t, hs[0], b); err == nil {
					t.Errorf("%s: opened %q", name, got)
				} else if !errors.Is(err, imagecrypt.ErrUnwrap) && !errors.Is(err, imagecrypt.ErrMalformed) {
					t.Errorf("%s: unclear error %v", name, err)
				}
			}
			// Truncation at every length is malformed, never a panic.
			for i := range len(blob) {
				if _, err := imagecrypt.Parse(blob[:i]); !errors.Is(err, imagecrypt.ErrMalformed) {
					t.Fatalf("truncated to %d: %v", i, err)
				}
			}
			if _, err := imagecrypt.Parse(append(append([]byte(nil), blob...), 0)); !errors.Is(err, imagecrypt.ErrMalformed) {
				t.Fatal("trailing byte accepted")
			}
		})
	}
}

func TestSealerRefusesBadRecipients(t *testing.T) {
	_, intl := holders(t, suite.Intl, 2)
	_, gm := holders(t, suite.GM, 1)
	if _, err := imagecrypt.NewSealer(append(intl, gm...)); err == nil {
		t.Fatal("mixed suites accepted")
	}
	if _, err := imagecrypt.NewSealer([]imagecrypt.Recipient{intl[0], intl[0]}); err == nil {
		t.Fatal("a key id twice accepted")
	}
	bad := intl[0]
	bad.Suite = suite.GM
	if _, err := imagecrypt.NewSealer([]imagecrypt.Recipient{bad}); err == nil {
		t.Fatal("a P-256 key accepted as gm")
	}
	bad = intl[0]
	bad.KeyID = "Bad/Id"
	if _, err := imagecrypt.NewSealer([]imagecrypt.Recipient{bad}); err == nil {
		t.Fatal("an invalid key id accepted")
	}
	if _, err := imagecrypt.NewSealer(nil); err == nil {
		t.Fatal("no recipients accepted")
	}
}

func TestRecipientFileRoundTrip(t *testing.T) {
	for _, st := range suite.All {
		h := newHolder(t, "cluster-a", st)
		pemBytes, err := imagecrypt.MarshalRecipient(h.r)
		if err != nil {
			t.Fatal(err)
		}
		r, err := imagecrypt.ParseRecipient(pemBytes)
		if err != nil {
			t.Fatal(err)
		}
		if r.KeyID != "cluster-a" || r.Suite != st || !r.Public.Equal(h.r.Public) {
			t.Fatalf("%s: round trip gave %+v", st, r)
		}
		wrongSuite := bytes.Replace(pemBytes, []byte("Podkey-Suite: "+string(st)), []byte("Podkey-Suite: "+string(other(st))), 1)
		if _, err := imagecrypt.ParseRecipient(wrongSuite); err == nil {
			t.Fatalf("%s key read as %s", st, other(st))
		}
	}
	if _, err := imagecrypt.ParseRecipient([]byte("not pem")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func other(s suite.Name) suite.Name {
	if s == suite.GM {
		return suite.Intl
	}
	return suite.GM
}

func FuzzParse(f *testing.F) {
	for _, st := range suite.All {
		_, rs := holders(f, st, 3)
		s, err := imagecrypt.NewSealer(rs)
		if err != nil {
			f.Fatal(err)
		}
		b, err := s.Seal([]byte(`{"key":"AAAA"}`))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("PKI1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bl, err := imagecrypt.Parse(data)
		if err != nil {
			if !errors.Is(err, imagecrypt.ErrMalformed) {
				t.Fatalf("error not marked malformed: %v", err)
			}
			return
		}
		// What parses re-encodes to the same bytes, and opening it with a
		// wrong key fails without a panic.
		out, err := bl.Marshal()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		_, _ = imagecrypt.Open(bl, make([]byte, bl.Suite.AEADKeySize()))
		for _, e := range bl.Entries {
			_, _ = imagecrypt.UnwrapIntl(e.KeyID, e.Wrapped, make([]byte, 32))
		}
	})
}
