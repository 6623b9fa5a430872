package cluster

import (
	"bufio"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// reap removes what a node leaves behind once its kubelet and containerd
// are gone: container shims and processes started under the cluster's
// directory, and mounts (pod volumes, tmpfs, overlays, network namespaces)
// below it.
func (c *Cluster) reap() {
	self := os.Getpid()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		pid, err := strconv.Atoi(strings.Split(p, "/")[2])
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), c.Dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	unmountBelow(c.Dir)
}

// unmountBelow detaches every mount at or below dir, deepest first.
func unmountBelow(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}
