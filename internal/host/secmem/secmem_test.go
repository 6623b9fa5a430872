package secmem

import (
	"bytes"
	"testing"
)

func TestBufferCopiesZeroesAndCloses(t *testing.T) {
	src := []byte("0123456789abcdef")
	want := bytes.Clone(src)
	b, err := New(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Fatal("content differs")
	}
	if !bytes.Equal(src, make([]byte, len(src))) {
		t.Fatal("source not zeroed")
	}
	view := b.Bytes()
	_ = view
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if b.Bytes() != nil {
		t.Fatal("bytes after close")
	}
	if err := b.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if _, err := New(nil); err == nil {
		t.Fatal("empty buffer accepted")
	}
}
