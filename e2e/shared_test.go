package e2e

import (
	"os"
	"sync"
	"testing"

	"github.com/podkey/podkey/e2e/cluster"
)

var (
	clusterOnce sync.Once
	shared      *cluster.Cluster
	clusterErr  error
)

// sharedCluster starts one control plane for every test and benchmark of
// the package that needs it; TestMain stops it.
func sharedCluster(t testing.TB) *cluster.Cluster {
	t.Helper()
	clusterOnce.Do(func() { shared, clusterErr = cluster.Start("..") })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return shared
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	if binDir != "" {
		_ = os.RemoveAll(binDir) // built per run, a few hundred MB
	}
	os.Exit(code)
}
