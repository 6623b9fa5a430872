package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/podkey/podkey/internal/keyd/store/pgtest"
	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/keydclient"
)

// replicaSet is several podkey-keyd processes sharing one SoftHSM2 token
// directory and one PostgreSQL database, reviewing tokens with the real
// API server, each on its own socket and TLS port.
type replicaSet struct {
	w       *world
	args    []string
	socks   []string
	addrs   []string
	procs   []*exec.Cmd
	caFile  string
	cluster string // the kubeconfig keyd reviews tokens with
}

// replicaStore is where a replica set keeps its state.
type replicaStore int

const (
	onPostgres        replicaStore = iota // a test server (no fsync)
	onDurablePostgres                     // a server syncing every commit
	onBolt                                // one replica's bbolt file
)

func startReplicas(t testing.TB, n int, where replicaStore) *replicaSet {
	ctx := context.Background()
	w := newWorld(t)
	var storeArgs []string
	switch where {
	case onBolt:
		if n != 1 {
			t.Fatal("bbolt has one replica")
		}
		storeArgs = []string{"--store", filepath.Join(w.dir, "keyd.db")}
	default:
		pg := pgtest.Start
		if where == onDurablePostgres {
			pg = pgtest.StartDurable
		}
		dsn := filepath.Join(w.dir, "postgres")
		_ = os.WriteFile(dsn, []byte(pg(t).NewDatabase(t)+"\n"), 0o600)
		storeArgs = []string{"--postgres-file", dsn}
	}
	c := sharedCluster(t)
	if err := c.Node(ctx, "node-1"); err != nil {
		t.Fatal(err)
	}
	keydToken, err := c.KeydIdentity(ctx, "podkey", "podkey-keyd")
	if err != nil {
		t.Fatal(err)
	}
	rs := &replicaSet{w: w, cluster: filepath.Join(w.dir, "kubeconfig")}
	if err := c.WriteKubeconfig(rs.cluster, keydToken); err != nil {
		t.Fatal(err)
	}
	rs.args = append(storeArgs, "--kubeconfig", rs.cluster, "--node-service-account", "podkey/podkey-csi")
	for i := 0; i < n; i++ {
		rs.socks = append(rs.socks, filepath.Join(w.dir, fmt.Sprintf("keyd-%d.sock", i)))
		rs.addrs = append(rs.addrs, freePort(t))
		rs.procs = append(rs.procs, nil)
		rs.start(i)
	}
	conn, err := keydclient.Dial(keydclient.Options{Socket: rs.socks[0]})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca, err := keydv1.NewKeydClient(conn).CABundle(ctx, &keydv1.CABundleRequest{Suite: "intl"})
	if err != nil {
		t.Fatal(err)
	}
	rs.caFile = filepath.Join(w.dir, "ca.pem")
	_ = os.WriteFile(rs.caFile, ca.Pem, 0o600)
	return rs
}

func (rs *replicaSet) start(i int) {
	rs.procs[i] = rs.w.startKeydAt(context.Background(), rs.socks[i], append([]string{"--listen", rs.addrs[i]}, rs.args...)...)
}

// nodeConn is node-1's podkey-csi connection to every replica, with its
// node certificate.
func (rs *replicaSet) nodeConn(t testing.TB) *keydclient.NodeConn {
	ctx := context.Background()
	c := sharedCluster(t)
	csiPod, err := c.Pod(ctx, "podkey", fmt.Sprintf("csi-replicas-%d", podSeq.Add(1)), "podkey-csi", "node-1")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, "podkey", "podkey-csi", "podkey-node", csiPod)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(rs.w.dir, csiPod.Name+"-token")
	_ = os.WriteFile(tokFile, []byte(tok), 0o600)
	nc, err := keydclient.DialNode(ctx, keydclient.NodeOptions{Address: strings.Join(rs.addrs, ","), CAFile: rs.caFile,
		ServerName: "localhost", TokenFile: tokFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// kill ends replica i with SIGKILL: no graceful stop, calls in flight cut.
func (rs *replicaSet) kill(i int) {
	_ = rs.procs[i].Process.Kill()
	_ = rs.procs[i].Wait()
}

// local is a client of replica i's socket.
func (rs *replicaSet) local(t testing.TB, i int) (keydv1.KeydClient, keydv1.AdminClient) {
	return socketClients(t, rs.socks[i])
}

// TestKeydReplicaKilledInABurst: three keyd replicas on one database and
// one HSM token; a node reaches all three by their addresses. One is
// killed with SIGKILL in the middle of a burst of publishes: every publish
// succeeds (the node's client retries the calls cut by the kill on another
// replica, with no retry by a kubelet), every unpublish's revocation holds
// at every surviving replica, and the shared audit chain verifies.
func TestKeydReplicaKilledInABurst(t *testing.T) {
	ctx := context.Background()
	rs := startReplicas(t, 3, onPostgres)
	c := sharedCluster(t)
	kc := keydv1.NewKeydClient(rs.nodeConn(t))
	podsDir := t.TempDir()
	d, err := csidriver.New(csidriver.Options{NodeID: "node-1", StateDir: filepath.Join(t.TempDir(), "state"), PodsDir: podsDir,
		Issuer: kc, Revoker: kc, Classes: spc.Static{"payments/creds": classFor("payments")}, Volumes: volume.NewMounter(mount.NewFakeMounter(nil))})
	if err != nil {
		t.Fatal(err)
	}

	const pods = 60
	reqs := make([]*csi.NodePublishVolumeRequest, pods)
	uids := make([]string, pods)
	for i := range reqs {
		p, err := c.Pod(ctx, "payments", fmt.Sprintf("burst-%d-%d", podSeq.Add(1), i), "payments", "node-1")
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.Token(ctx, "payments", "payments", "podkey", p)
		if err != nil {
			t.Fatal(err)
		}
		uids[i] = string(p.UID)
		reqs[i] = podPublishRequest(filepath.Join(podsDir, fmt.Sprint(i)), "payments", p.Name, uids[i], "payments", tok)
		reqs[i].VolumeContext["secretProviderClass"] = "creds"
	}
	var done atomic.Int64
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		for done.Load() < pods/3 {
			time.Sleep(time.Millisecond)
		}
		rs.kill(0)
	}()
	var wg sync.WaitGroup
	var failed atomic.Int64
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if _, err := d.NodePublishVolume(ctx, reqs[i]); err != nil {
					failed.Add(1)
					t.Errorf("publish %d: %v", i, err)
				}
				done.Add(1)
			}
		}()
	}
	for i := range reqs {
		work <- i
	}
	close(work)
	wg.Wait()
	<-killed
	if failed.Load() > 0 {
		t.Fatalf("%d of %d publishes failed with one replica killed", failed.Load(), pods)
	}
	survivors := []int{1, 2}
	for _, i := range survivors {
		k, _ := rs.local(t, i)
		verifyVolumeKey(t, k, reqs[pods-1].TargetPath, uids[pods-1])
	}
	// Read every key before unpublishing wipes it, then revoke them all.
	keys := make([]*keydv1.VerifyRequest, pods)
	for i := range reqs {
		keys[i] = volumeKeyRequest(t, reqs[i].TargetPath)
	}
	for i := range reqs {
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: reqs[i].VolumeId, TargetPath: reqs[i].TargetPath}); err != nil {
			t.Fatalf("unpublish %d: %v", i, err)
		}
	}
	for _, i := range survivors {
		k, admin := rs.local(t, i)
		for j, req := range keys {
			if _, err := k.Verify(ctx, req); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("pod %d's key after its unpublish, at replica %d: %v", j, i, err)
			}
		}
		v, err := admin.VerifyAudit(ctx, &keydv1.VerifyAuditRequest{})
		if err != nil || !v.Intact {
			t.Fatalf("the shared audit chain at replica %d: %v %v", i, v, err)
		}
		t.Logf("replica %d: audit chain intact, %d records", i, v.Records)
	}
	// The killed replica comes back on the same state and refuses them too.
	rs.start(0)
	k, _ := rs.local(t, 0)
	if _, err := k.Verify(ctx, keys[0]); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a revoked key at the restarted replica: %v", err)
	}
}
