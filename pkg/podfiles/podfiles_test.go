package podfiles

import (
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/language"
	"golang.org/x/text/unicode/norm"
)

// Over every code point: a name holding one is refused when it is
// invisible (default-ignorable), a control or a line or paragraph
// separator, and when it is white space at an end; every name accepted
// folds to one form whatever its normalization, case or kind of space, so
// two names that look alike collide.
func TestNamesOverAllOfUnicode(t *testing.T) {
	accepted := 0
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		c := string(r)
		name := "a" + c + "b"
		err := ValidName(name)
		invisible := unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Cf, unicode.Variation_Selector)
		breaking := unicode.IsControl(r) || unicode.In(r, unicode.Zl, unicode.Zp)
		space := unicode.IsSpace(r) || unicode.Is(unicode.Zs, r)
		switch {
		case invisible || breaking || r == '/' || r == '\\':
			if err == nil {
				t.Errorf("%U: a name holding it was accepted", r)
			}
			continue
		case err != nil:
			t.Errorf("%U: %q refused: %v", r, name, err)
			continue
		}
		accepted++
		if space {
			if ValidName(c+"b") == nil || ValidName("a"+c) == nil {
				t.Errorf("%U: white space at an end accepted", r)
			}
			if FoldName(name) != FoldName("a b") {
				t.Errorf("%U: %q and %q do not collide", r, name, "a b")
			}
		}
		f := FoldName(name)
		for _, alike := range []string{norm.NFD.String(name), norm.NFC.String(name), norm.NFKD.String(name),
			cases.Upper(language.Und).String(name), cases.Lower(language.Und).String(name), f} {
			if ValidName(alike) == nil && FoldName(alike) != f {
				t.Errorf("%U: %q and its look-alike %q fold apart (%q, %q)", r, name, alike, f, FoldName(alike))
			}
		}
		for _, fr := range f {
			if unicode.In(fr, unicode.Other_Default_Ignorable_Code_Point, unicode.Cf, unicode.Variation_Selector) || unicode.IsControl(fr) {
				t.Errorf("%U: fold %q holds %U", r, f, fr)
			}
		}
	}
	if accepted < 200000 {
		t.Fatalf("only %d code points accepted", accepted)
	}
}

// The look-alikes found in review, by name.
func TestLookAlikesFoundInReview(t *testing.T) {
	for _, r := range []rune{0x034F, 0xFE0F, 0xE0101, 0x180B, 0x115F, 0x3164, 0xFFA0, 0x2028, 0x2029, 0x200B, 0x202E} {
		if ValidName("key"+string(r)+"file") == nil {
			t.Errorf("%U accepted inside a name", r)
		}
	}
	for _, n := range []string{" key", "key ", "key\u00a0", "\u3000key", "key\t"} {
		if ValidName(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
	for _, pair := range [][2]string{
		{"caf\u00e9", "cafe\u0301"},        // NFC and NFD
		{"Key", "key"},                     // case
		{"a b", "a\u00a0b"},                // no-break space
		{"a b", "a\u3000b"},                // ideographic space
		{"ｋｅｙ", "key"},                     // full-width
		{"stra\u00dfe", "STRASSE"},         // case folding beyond one rune
		{"\u212bngstrom", "\u00c5ngstrom"}, // Angstrom sign and A with ring
	} {
		if FoldName(pair[0]) != FoldName(pair[1]) {
			t.Errorf("%q and %q fold apart: %q %q", pair[0], pair[1], FoldName(pair[0]), FoldName(pair[1]))
		}
	}
}
