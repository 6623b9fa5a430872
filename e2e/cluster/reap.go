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
// directory, the containers' processes (children of those shims, which
// would outlive them), and mounts (pod volumes, tmpfs, overlays, network
// namespaces) below it.
func (c *Cluster) reap() {
	self := os.Getpid()
	ours := map[int]bool{}
	parents := map[int]int{}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == self {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(p, "cmdline")); err == nil && strings.Contains(string(b), c.Dir) {
			ours[pid] = true
		}
		if st, err := os.ReadFile(filepath.Join(p, "stat")); err == nil {
			// pid (comm) state ppid ...: comm may hold spaces, so after ')'.
			if i := strings.LastIndexByte(string(st), ')'); i > 0 {
				if f := strings.Fields(string(st[i+1:])); len(f) > 1 {
					parents[pid], _ = strconv.Atoi(f[1])
				}
			}
		}
	}
	for pid, ppid := range parents {
		if ours[ppid] && !ours[pid] {
			_ = syscall.Kill(pid, syscall.SIGKILL) // a container's first process
		}
	}
	for pid := range ours {
		_ = syscall.Kill(pid, syscall.SIGKILL)
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
