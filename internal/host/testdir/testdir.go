// Package testdir gives a test process a scratch directory of its own that
// outlives any one test: named by the process id, and removed by the next
// process that asks for one with the same prefix once this process is
// gone. It suits state a process cannot remove when it exits (a loaded
// PKCS#11 module's token directory) or may not get to remove (a run killed
// by its timeout).
package testdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ForProcess returns a new, empty directory <tmp>/<prefix><pid> (mode 0700),
// after removing the directories with that prefix whose process no longer
// runs.
func ForProcess(prefix string) (string, error) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), prefix))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, fs.ErrNotExist) {
			_ = os.RemoveAll(d)
		}
	}
	dir := filepath.Join(os.TempDir(), prefix+strconv.Itoa(os.Getpid()))
	if err := os.RemoveAll(dir); err != nil { // a dead process's, under a reused pid
		return "", err
	}
	return dir, os.Mkdir(dir, 0o700)
}
