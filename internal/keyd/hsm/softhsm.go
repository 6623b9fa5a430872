package hsm

import (
	"bufio"
	"errors"
	"os"
	"strings"
)

// EnsureSoftHSMTokenDir creates SoftHSM2's token directory, as named by
// directories.tokendir in the file $SOFTHSM2_CONF, when it does not exist
// yet: SoftHSM2 fails to initialise without it, and on a fresh volume
// nothing else creates it. Without SOFTHSM2_CONF it does nothing.
func EnsureSoftHSMTokenDir() error {
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		return nil
	}
	f, err := os.Open(conf)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok || strings.TrimSpace(k) != "directories.tokendir" {
			continue
		}
		dir := strings.TrimSpace(v)
		if dir == "" {
			return errors.New("hsm: " + conf + ": empty directories.tokendir")
		}
		return os.MkdirAll(dir, 0o700)
	}
	return sc.Err()
}
