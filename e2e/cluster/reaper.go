package cluster

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// reaperEnv names, in a reaper's environment, the cluster directory it
// guards.
const reaperEnv = "PODKEY_CLUSTER_REAPER"

// A cluster's processes outlive the process that started it when that one
// dies without running Stop: a test binary panicking at go test's
// -timeout, a SIGTERM or SIGKILL. containerd and the kubelet go with it
// (Pdeathsig), but container shims, containers and mounts stay. So Start
// also starts a reaper: the same executable, in its own session, ignoring
// the signals a terminal or a job control sends, that waits for its
// parent's end (its stdin pipe closes with the parent's last file
// descriptor) and then removes whatever of the cluster is left.
func init() {
	if dir := os.Getenv(reaperEnv); dir != "" {
		runReaper(dir)
	}
}

func runReaper(dir string) {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	_, _ = io.Copy(io.Discard, os.Stdin)
	if _, err := os.Stat(dir); err == nil {
		c := &Cluster{Dir: dir}
		c.reap()
		c.removeDir()
	}
	os.Exit(0)
}

// startReaper starts the cluster's reaper; Stop closes its pipe once it
// has torn the cluster down itself, and the reaper finds nothing to do.
func (c *Cluster) startReaper() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), reaperEnv+"="+c.Dir)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("reaper: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	c.reaper = w
	return nil
}

// removeDir removes the cluster's directory unless PODKEY_KEEP_CLUSTER_DIR
// asks to keep it for a post-mortem.
func (c *Cluster) removeDir() {
	if os.Getenv("PODKEY_KEEP_CLUSTER_DIR") == "" {
		_ = os.RemoveAll(c.Dir)
	}
}
