// Package hsmflags is the command-line selection of an HSM token, shared
// by the commands that open one (podkey and podkey-keyd): the PKCS#11
// module, the token label, the PIN file, the vendor mechanism table and
// the session bound. The PIN is read from a file or the environment only:
// a flag value would be visible to every user of the machine in the
// process list.
package hsmflags

import (
	"errors"
	"os"

	"github.com/spf13/pflag"

	"github.com/podkey/podkey/internal/cmd/command"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// Flags select the HSM token.
type Flags struct {
	Module, Label, PINFile, mechanisms string
	maxSessions                        int
}

// Register adds the --hsm-* flags to f.
func (h *Flags) Register(f *pflag.FlagSet) {
	f.StringVar(&h.Module, "hsm-module", command.EnvOr("PODKEY_HSM_MODULE", hsm.DefaultModule), "PKCS#11 module (env PODKEY_HSM_MODULE)")
	f.StringVar(&h.Label, "hsm-token", command.EnvOr("PODKEY_HSM_TOKEN", "podkey"), "token label (env PODKEY_HSM_TOKEN)")
	f.StringVar(&h.PINFile, "hsm-pin-file", os.Getenv("PODKEY_HSM_PIN_FILE"), "file holding the user PIN (env PODKEY_HSM_PIN_FILE); otherwise env "+hsm.PINEnv)
	f.StringVar(&h.mechanisms, "hsm-mechanisms", os.Getenv("PODKEY_HSM_MECHANISMS"), "YAML table of vendor SM mechanism codes (env PODKEY_HSM_MECHANISMS)")
	f.IntVar(&h.maxSessions, "hsm-max-sessions", hsm.DefaultMaxSessions, "bound on concurrent HSM sessions")
}

// Config reads the PIN and the mechanism table; their absence or a
// malformed table is a usage error.
func (h *Flags) Config() (hsm.Config, error) {
	pin, err := hsm.ReadPIN(h.PINFile)
	if err != nil {
		return hsm.Config{}, command.Exit(command.ExitUsage, err)
	}
	cfg := hsm.Config{ModulePath: h.Module, TokenLabel: h.Label, PIN: pin, MaxSessions: h.maxSessions}
	if h.mechanisms != "" {
		data, err := os.ReadFile(h.mechanisms)
		if err != nil {
			return cfg, command.Exit(command.ExitUsage, err)
		}
		if cfg.Mechanisms, err = hsm.ParseMechanisms(data); err != nil {
			return cfg, command.Exit(command.ExitUsage, err)
		}
	}
	return cfg, nil
}

// Open opens the token, mapping a wrong PIN to ExitDenied, a missing token
// to ExitNotFound and anything else to ExitUnavailable.
func (h *Flags) Open() (*hsm.Token, error) {
	cfg, err := h.Config()
	if err != nil {
		return nil, err
	}
	tok, err := hsm.Open(cfg)
	switch {
	case errors.Is(err, hsm.ErrPINIncorrect):
		return nil, command.Exit(command.ExitDenied, err)
	case errors.Is(err, hsm.ErrTokenNotFound):
		return nil, command.Exit(command.ExitNotFound, err)
	case err != nil:
		return nil, command.Exit(command.ExitUnavailable, err)
	}
	return tok, nil
}
