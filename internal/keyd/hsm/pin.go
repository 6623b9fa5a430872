package hsm

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// PINEnv is the environment variable podkey reads the HSM user PIN from when
// no PIN file is given.
const PINEnv = "PODKEY_HSM_PIN"

// ReadPIN takes the PIN from file when one is named, otherwise from the
// environment variable PINEnv. A trailing newline in the file is dropped.
// PINs are never accepted as command-line values, which other users of the
// machine can read.
func ReadPIN(file string) (Secret, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read PIN file: %w", err)
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("PIN file %s is empty", file)
		}
		return Secret(pin), nil
	}
	if pin := os.Getenv(PINEnv); pin != "" {
		return Secret(pin), nil
	}
	return "", errors.New("no HSM PIN: give a PIN file or set " + PINEnv)
}
