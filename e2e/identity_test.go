package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mount "k8s.io/mount-utils"
	sscsi "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/podkey/podkey/e2e/cluster"
	"github.com/podkey/podkey/internal/keyd/identity"
	"github.com/podkey/podkey/internal/keyd/identity/localtoken"
	"github.com/podkey/podkey/internal/keyd/identity/tokenreview"
	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	keydv1 "github.com/podkey/podkey/pkg/api/keydv1"
	"github.com/podkey/podkey/pkg/apikey/accesskey"
	"github.com/podkey/podkey/pkg/keydclient"
	"github.com/podkey/podkey/pkg/podfiles"
	"github.com/podkey/podkey/pkg/suite"
)

// trust is keyd verifying identities against the real API server, and one
// CSI node driver per node talking to it over mTLS with its node
// certificate.
type trust struct {
	t      *testing.T
	keyd   *keydtest.Env
	caFile string
	nodes  map[string]*csidriver.Driver
	conns  map[string]*keydclient.NodeConn
	// podsDir stands for the kubelet's pods directory: targets go below it.
	podsDir string
	// local is keyd's local token verifier, in local mode.
	local *localtoken.Verifier
	// direct answers for a token as keyd's verifier does, without its
	// review cache: tr.local, or the TokenReview client.
	direct identity.Reviewer
}

func classFor(ns string) *sscsi.SecretProviderClass {
	c := &sscsi.SecretProviderClass{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "creds"}}
	c.Spec.Provider = "podkey"
	c.Spec.Parameters = map[string]string{"objects": "- {name: ledger-api, kind: apiKey, file: ledger-api.json}\n"}
	return c
}

func newTrust(t *testing.T, nodeCertTTL, cacheTTL time.Duration) *trust {
	return newTrustWith(t, nodeCertTTL, cacheTTL, "tokenreview")
}

// identityCluster is the shared cluster with the Node objects node-1 and
// node-2, and a token of keyd's own least-privileged identity.
func identityCluster(t testing.TB) (*cluster.Cluster, string) {
	ctx := context.Background()
	c := sharedCluster(t)
	for _, n := range []string{"node-1", "node-2"} {
		if err := c.Node(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	keydToken, err := c.KeydIdentity(ctx, "podkey", "podkey-keyd")
	if err != nil {
		t.Fatal(err)
	}
	return c, keydToken
}

// benchPodToken is a pod on node-1 named name, with its podkey token.
func benchPodToken(t testing.TB, c *cluster.Cluster, name string) (*corev1.Pod, string) {
	ctx := context.Background()
	p, err := c.Pod(ctx, "payments", name, "payments", "node-1")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, "payments", "payments", "podkey", p)
	if err != nil {
		t.Fatal(err)
	}
	return p, tok
}

// newTrustWith is newTrust with keyd verifying tokens as mode says
// (keyd --pod-identity): tokenreview, or local (no fallback, so every
// answer is the local verifier's).
func newTrustWith(t *testing.T, nodeCertTTL, cacheTTL time.Duration, mode string) *trust {
	ctx := context.Background()
	c, keydToken := identityCluster(t)
	rev, err := tokenreview.New(c.Config(keydToken)) // keyd's own, least-privileged identity
	if err != nil {
		t.Fatal(err)
	}
	tr := &trust{t: t, nodes: map[string]*csidriver.Driver{}, conns: map[string]*keydclient.NodeConn{}, podsDir: t.TempDir()}
	var reviewer identity.Reviewer = rev
	tr.direct = rev
	if mode == "local" {
		tr.local = startLocal(t, c.Config(keydToken), localtoken.Options{})
		reviewer, cacheTTL = localtoken.Fallback{Local: tr.local}, -1
		tr.direct = tr.local
	}
	v := identity.NewVerifier(reviewer, identity.Options{NodeServiceAccount: "podkey/podkey-csi", CacheTTL: cacheTTL})
	tr.keyd = keydtest.Start(t, func(o *service.Options) {
		o.Identity, o.InsecureLocalIdentity, o.NodeCertTTL = v, false, nodeCertTTL
	})
	ca, err := tr.keyd.Keyd.CABundle(ctx, &keydv1.CABundleRequest{Suite: "intl"})
	if err != nil {
		t.Fatal(err)
	}
	tr.caFile = filepath.Join(t.TempDir(), "ca.pem")
	_ = os.WriteFile(tr.caFile, ca.Pem, 0o600)
	classes := spc.Static{"payments/creds": classFor("payments"), "shop/creds": classFor("shop")}
	for _, n := range []string{"node-1", "node-2"} {
		nc := tr.nodeConn(n)
		rctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		go nc.Run(rctx)
		kc := keydv1.NewKeydClient(nc)
		d, err := csidriver.New(csidriver.Options{NodeID: n, StateDir: filepath.Join(t.TempDir(), n), PodsDir: tr.podsDir, Issuer: kc, Revoker: kc,
			Classes: classes, Volumes: volume.NewMounter(mount.NewFakeMounter(nil))})
		if err != nil {
			t.Fatal(err)
		}
		tr.nodes[n], tr.conns[n] = d, nc
	}
	return tr
}

// settle waits until the deletion of tok's pod has reached whatever
// answers for the token: keyd's own caches in local mode, which must see it
// within 2 s; in tokenreview mode the kube-apiserver's, whose token
// authenticator looks pods up in its own informer, so a TokenReview made
// the moment after a delete can still find the pod (seen once in CI).
func (tr *trust) settle(tok string) {
	bound := 2 * time.Second
	if tr.local == nil {
		bound = 10 * time.Second
	}
	start := time.Now()
	for {
		r, err := tr.direct.Review(context.Background(), tok, []string{"podkey"})
		if err == nil && !r.Authenticated {
			return
		}
		if time.Since(start) > bound {
			tr.t.Fatalf("a deleted pod's token is still accepted after %v: %+v %v", time.Since(start), r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var podSeq atomic.Int64

// nodeConn obtains a node certificate for node's podkey-csi pod.
func (tr *trust) nodeConn(node string) *keydclient.NodeConn {
	t := tr.t
	ctx := context.Background()
	c := sharedCluster(t)
	pod, err := c.Pod(ctx, "podkey", fmt.Sprintf("csi-%s-%d", node, podSeq.Add(1)), "podkey-csi", node)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(ctx, "podkey", "podkey-csi", "podkey-node", pod)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), node+"-token")
	_ = os.WriteFile(tokFile, []byte(tok), 0o600)
	nc, err := keydclient.DialNode(ctx, keydclient.NodeOptions{Address: tr.keyd.Opts.Listen, CAFile: tr.caFile,
		ServerName: "localhost", TokenFile: tokFile})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// refused checks a publish fails with one of codes, says why, and does not
// echo the token.
func refused(t *testing.T, err error, token, why string, want ...codes.Code) {
	t.Helper()
	st := status.Convert(err)
	ok := false
	for _, c := range want {
		ok = ok || st.Code() == c
	}
	if !ok {
		t.Fatalf("got %v, want one of %v", err, want)
	}
	if !strings.Contains(st.Message(), why) {
		t.Fatalf("message %q does not say %q", st.Message(), why)
	}
	if token != "" && strings.Contains(st.Message(), token) {
		t.Fatal("the refusal echoes the token")
	}
}

// TestTrustChain runs with keyd verifying tokens by TokenReview, and
// locally (keyd --pod-identity local).
func TestTrustChain(t *testing.T) {
	for _, mode := range []string{"tokenreview", "local"} {
		t.Run(mode, func(t *testing.T) { trustChain(t, mode) })
	}
}

func trustChain(t *testing.T, mode string) {
	ctx := context.Background()
	tr := newTrustWith(t, time.Hour, 10*time.Second, mode)
	c := sharedCluster(t)
	sfx := map[string]string{"tokenreview": "", "local": "-l"}[mode] // pod names, unique per mode
	target := func(name string) string { return filepath.Join(tr.podsDir, name) }
	pod := func(ns, name, sa, node string) (string, string) {
		p, err := c.Pod(ctx, ns, name, sa, node)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.Token(ctx, ns, sa, "podkey", p)
		if err != nil {
			t.Fatal(err)
		}
		return string(p.UID), tok
	}

	uidA, tokA := pod("payments", "pay-a"+sfx, "payments", "node-1")
	reqA := podPublishRequest(target("a"), "payments", "pay-a"+sfx, uidA, "payments", tokA)
	reqA.VolumeContext["secretProviderClass"] = "creds"

	t.Run("pod token through its own node is served", func(t *testing.T) {
		if _, err := tr.nodes["node-1"].NodePublishVolume(ctx, reqA); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the same token through another node is refused", func(t *testing.T) {
		r := podPublishRequest(target("a2"), "payments", "pay-a"+sfx, uidA, "payments", tokA)
		r.VolumeContext["secretProviderClass"] = "creds"
		_, err := tr.nodes["node-2"].NodePublishVolume(ctx, r)
		refused(t, err, tokA, `caller is node "node-2"`, codes.PermissionDenied)
	})
	t.Run("a token for another pod than the volume's is refused", func(t *testing.T) {
		r := podPublishRequest(target("a3"), "payments", "pay-x"+sfx, "some-other-uid", "payments", tokA)
		r.VolumeContext["secretProviderClass"] = "creds"
		_, err := tr.nodes["node-1"].NodePublishVolume(ctx, r)
		refused(t, err, tokA, "not the volume's pod", codes.PermissionDenied)
	})
	t.Run("a token of a deleted pod is refused", func(t *testing.T) {
		uidB, tokB := pod("payments", "pay-b"+sfx, "payments", "node-1")
		if err := c.DeletePod(ctx, "payments", "pay-b"+sfx); err != nil {
			t.Fatal(err)
		}
		tr.settle(tokB)
		r := podPublishRequest(target("b"), "payments", "pay-b"+sfx, uidB, "payments", tokB)
		r.VolumeContext["secretProviderClass"] = "creds"
		_, err := tr.nodes["node-1"].NodePublishVolume(ctx, r)
		refused(t, err, tokB, "pod token", codes.Unauthenticated)
	})
	t.Run("a token for another audience is refused", func(t *testing.T) {
		p, _ := c.Pod(ctx, "payments", "pay-c"+sfx, "payments", "node-1")
		tok, err := c.Token(ctx, "payments", "payments", "vault", p)
		if err != nil {
			t.Fatal(err)
		}
		r := podPublishRequest(target("c"), "payments", "pay-c"+sfx, string(p.UID), "payments", tok)
		r.VolumeContext["secretProviderClass"] = "creds"
		_, err = tr.nodes["node-1"].NodePublishVolume(ctx, r)
		refused(t, err, tok, "pod token", codes.Unauthenticated)
	})
	t.Run("an unbound token is refused", func(t *testing.T) {
		p, _ := c.Pod(ctx, "payments", "pay-d"+sfx, "payments", "node-1")
		tok, err := c.Token(ctx, "payments", "payments", "podkey", nil)
		if err != nil {
			t.Fatal(err)
		}
		r := podPublishRequest(target("d"), "payments", "pay-d"+sfx, string(p.UID), "payments", tok)
		r.VolumeContext["secretProviderClass"] = "creds"
		_, err = tr.nodes["node-1"].NodePublishVolume(ctx, r)
		refused(t, err, tok, "not bound to a pod", codes.Unauthenticated)
	})
	t.Run("a service account without a policy rule is refused", func(t *testing.T) {
		uid, tok := pod("shop", "web-a"+sfx, "web", "node-1")
		r := podPublishRequest(target("w"), "shop", "web-a"+sfx, uid, "web", tok)
		r.VolumeContext["secretProviderClass"] = "creds"
		_, err := tr.nodes["node-1"].NodePublishVolume(ctx, r)
		refused(t, err, tok, "policy does not allow service account shop/web", codes.PermissionDenied)
	})
	t.Run("a node cannot revoke, and so poison, a pod keyd never served through it", func(t *testing.T) {
		uidE, tokE := pod("payments", "pay-e"+sfx, "payments", "node-1")
		_, err := keydv1.NewKeydClient(tr.conns["node-2"]).Revoke(ctx, &keydv1.RevokeRequest{Pod: &keydv1.PodIdentity{
			Namespace: "payments", ServiceAccount: "payments", PodName: "pay-e" + sfx, PodUid: uidE}})
		refused(t, err, "", `node "node-2" may not revoke`, codes.PermissionDenied)
		// The pod, on its own node, is served and its API key verifies.
		r := podPublishRequest(target("e"), "payments", "pay-e"+sfx, uidE, "payments", tokE)
		r.VolumeContext["secretProviderClass"] = "creds"
		if _, err := tr.nodes["node-1"].NodePublishVolume(ctx, r); err != nil {
			t.Fatal(err)
		}
		verifyVolumeKey(t, tr.keyd.Keyd, r.TargetPath, uidE)
	})
	t.Run("only the serving node may revoke a pod whose token is gone", func(t *testing.T) {
		// node-2 tries to revoke pod A (served through node-1) without a token.
		_, err := keydv1.NewKeydClient(tr.conns["node-2"]).Revoke(ctx, &keydv1.RevokeRequest{Pod: &keydv1.PodIdentity{
			Namespace: "payments", ServiceAccount: "payments", PodName: "pay-a" + sfx, PodUid: uidA}})
		refused(t, err, "", `node "node-2" may not revoke`, codes.PermissionDenied)
		if err := c.DeletePod(ctx, "payments", "pay-a"+sfx); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.nodes["node-1"].NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: reqA.VolumeId, TargetPath: reqA.TargetPath}); err != nil {
			t.Fatal(err)
		}
		if q := tr.nodes["node-1"].QueuedRevocations(); q != 0 {
			t.Fatalf("revocation of a deleted pod by its node was not accepted (%d queued)", q)
		}
	})
	t.Run("every refusal is audited with its reason", func(t *testing.T) {
		all := strings.Join(tr.keyd.AuditLines(), "\n")
		for _, want := range []string{`caller is node \"node-2\"`, "not bound to a pod", "policy does not allow", `may not revoke`} {
			if !strings.Contains(all, want) {
				t.Fatalf("audit lacks %q", want)
			}
		}
		if strings.Contains(all, tokA) {
			t.Fatal("audit contains a token")
		}
		// Issuances name the token they were made on by its jti.
		if !regexp.MustCompile(`"action":"issue","result":"ok"[^}]*"tokenID":"[0-9a-f-]{36}"`).MatchString(all) {
			t.Fatal("no issuance record names its token's jti")
		}
	})
}

// TestNodeCertificateExpiryAndRenewal: an expired node certificate is
// refused with a message saying so; a renewing connection keeps working
// across several certificate lifetimes without a failed call.
func TestNodeCertificateExpiryAndRenewal(t *testing.T) {
	ctx := context.Background()
	tr := newTrust(t, 3*time.Second, 10*time.Second)
	c := sharedCluster(t)
	p, err := c.Pod(ctx, "payments", "pay-r", "payments", "node-1")
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := c.Token(ctx, "payments", "payments", "podkey", p)
	issue := func(cl keydv1.KeydClient) error {
		_, err := cl.Issue(ctx, &keydv1.IssueRequest{PodToken: tok, Pod: &keydv1.PodIdentity{Namespace: "payments",
			ServiceAccount: "payments", PodName: "pay-r", PodUid: string(p.UID)}, Objects: []*keydv1.ObjectRequest{{Name: "k", Kind: "apiKey"}}})
		return err
	}
	stale := tr.nodeConn("node-1") // never renewed
	if err := issue(keydv1.NewKeydClient(stale)); err != nil {
		t.Fatalf("fresh certificate: %v", err)
	}
	time.Sleep(time.Until(stale.Expiry()) + 500*time.Millisecond)
	refused(t, issue(keydv1.NewKeydClient(stale)), tok, "node client certificate expired", codes.Unauthenticated)

	renewing := tr.conns["node-1"] // renewed in the background at 2/3 of 3s
	first := renewing.Expiry()
	cl := keydv1.NewKeydClient(renewing)
	calls := 0
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); calls++ {
		if err := issue(cl); err != nil {
			t.Fatalf("call %d failed during renewal: %v", calls, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !renewing.Expiry().After(first.Add(2 * time.Second)) {
		t.Fatalf("certificate not renewed: %v then %v", first, renewing.Expiry())
	}
	t.Logf("%d calls across renewals, none failed", calls)
}

// verifyVolumeKey checks that the API key written in the volume at target
// verifies through keyd, for the pod uid.
func verifyVolumeKey(t *testing.T, keyd keydv1.KeydClient, target, uid string) {
	t.Helper()
	v, err := keyd.Verify(context.Background(), volumeKeyRequest(t, target))
	if err != nil || v.PodUid != uid {
		t.Fatalf("the volume's API key does not verify: %v %v", v, err)
	}
}

// volumeKeyRequest is a Verify request signed with the API key written in
// the volume at target.
func volumeKeyRequest(t *testing.T, target string) *keydv1.VerifyRequest {
	t.Helper()
	var ak podfiles.APIKeyFile
	raw, err := os.ReadFile(filepath.Join(target, "ledger-api.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &ak); err != nil {
		t.Fatal(err)
	}
	secret, _ := base64.RawURLEncoding.DecodeString(ak.SecretKey)
	msg := []byte("GET /ledger")
	return &keydv1.VerifyRequest{AccessKeyId: ak.AccessKeyID, StringToSign: msg,
		Signature: accesskey.Sign(suite.Name(ak.Suite), secret, msg)}
}
