// Package keyringtest gives tests a real SoftHSM2 token with podkey's root
// keys already created, as 'podkey hsm init' leaves it.
package keyringtest

import (
	"context"
	"testing"

	"github.com/podkey/podkey/internal/keyd/hsm"
	"github.com/podkey/podkey/internal/keyd/hsm/hsmtest"
	"github.com/podkey/podkey/internal/keyd/keyring"
)

// Token initialises a fresh SoftHSM2 token with root keys and returns its
// config; nothing holds it open.
func Token(t testing.TB) hsm.Config {
	t.Helper()
	return TokenOn(t, hsmtest.Modules[0])
}

// TokenOn is Token on a module of the matrix.
func TokenOn(t testing.TB, m hsmtest.Module) hsm.Config {
	t.Helper()
	cfg := m.Token(t)
	tok, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	if _, err := keyring.Init(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Open initialises a fresh token with root keys and opens its keyring,
// closing both when the test ends.
func Open(t testing.TB) *keyring.Keyring {
	t.Helper()
	return OpenOn(t, hsmtest.Modules[0])
}

// OpenOn is Open on a module of the matrix.
func OpenOn(t testing.TB, m hsmtest.Module) *keyring.Keyring {
	t.Helper()
	tok, err := hsm.Open(TokenOn(t, m))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	kr, err := keyring.Open(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kr.Close)
	return kr
}
