package cli

import (
	"errors"
	"os"

	"github.com/spf13/pflag"

	"github.com/podkey/podkey/pkg/command"
	"github.com/podkey/podkey/pkg/hsm"
)

// hsmFlags select the HSM token. The PIN is read from a file or the
// environment only: a flag value would be visible to every user of the
// machine in the process list.
type hsmFlags struct {
	module, label, pinFile, mechanisms string
	maxSessions                        int
}

func (h *hsmFlags) register(f *pflag.FlagSet) {
	f.StringVar(&h.module, "hsm-module", command.EnvOr("PODKEY_HSM_MODULE", hsm.DefaultModule), "PKCS#11 module (env PODKEY_HSM_MODULE)")
	f.StringVar(&h.label, "hsm-token", command.EnvOr("PODKEY_HSM_TOKEN", "podkey"), "token label (env PODKEY_HSM_TOKEN)")
	f.StringVar(&h.pinFile, "hsm-pin-file", os.Getenv("PODKEY_HSM_PIN_FILE"), "file holding the user PIN (env PODKEY_HSM_PIN_FILE); otherwise env "+hsm.PINEnv)
	f.StringVar(&h.mechanisms, "hsm-mechanisms", os.Getenv("PODKEY_HSM_MECHANISMS"), "YAML table of vendor SM mechanism codes (env PODKEY_HSM_MECHANISMS)")
	f.IntVar(&h.maxSessions, "hsm-max-sessions", hsm.DefaultMaxSessions, "bound on concurrent HSM sessions")
}

func (h *hsmFlags) config() (hsm.Config, error) {
	pin, err := hsm.ReadPIN(h.pinFile)
	if err != nil {
		return hsm.Config{}, exitError(ExitUsage, err)
	}
	cfg := hsm.Config{ModulePath: h.module, TokenLabel: h.label, PIN: pin, MaxSessions: h.maxSessions}
	if h.mechanisms != "" {
		data, err := os.ReadFile(h.mechanisms)
		if err != nil {
			return cfg, exitError(ExitUsage, err)
		}
		if cfg.Mechanisms, err = hsm.ParseMechanisms(data); err != nil {
			return cfg, exitError(ExitUsage, err)
		}
	}
	return cfg, nil
}

func (h *hsmFlags) open() (*hsm.Token, error) {
	cfg, err := h.config()
	if err != nil {
		return nil, err
	}
	tok, err := hsm.Open(cfg)
	switch {
	case errors.Is(err, hsm.ErrPINIncorrect):
		return nil, exitError(ExitDenied, err)
	case errors.Is(err, hsm.ErrTokenNotFound):
		return nil, exitError(ExitNotFound, err)
	case err != nil:
		return nil, exitError(ExitUnavailable, err)
	}
	return tok, nil
}
