package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// tlcpOnANode gives two pods on the real node a tlcp volume each; the
// pods list the five files, and the pairs as the node wrote them (read
// through the host's view of each pod's tmpfs) complete a mutually
// authenticated TLCP handshake with an independent stack
// (e2e/tlcpinterop), the first pod's pair serving, the second's
// connecting.
func (pc *podkeyCluster) tlcpOnANode(ctx context.Context) {
	t := pc.t
	pc.class(ctx, "payments", "tlcp", "- {name: link, kind: tlcp, ttl: 2h}\n")
	if out, code := pc.admin("", "policy", "add", "--namespace=payments", "--service-account=payments", "--object=link"); code != 0 {
		t.Fatal(out)
	}
	server := pc.pod(ctx, "payments", "tlcp-server", "payments", "tlcp", true)
	client := pc.pod(ctx, "payments", "tlcp-client", "payments", "tlcp", true)
	defer pc.deletePod(ctx, server)
	defer pc.deletePod(ctx, client)
	for _, p := range []*corev1.Pod{server, client} {
		l := pc.waitLog(p, "READY", 2*time.Minute)
		for _, f := range []string{"link.sign.key", "link.sign.crt", "link.enc.key", "link.enc.crt", "link.ca.crt"} {
			if !strings.Contains(l, "FILE "+f+" 440 2000") {
				t.Fatalf("pod %s did not read %s with mode 440 and group 2000:\n%s", p.Name, f, l)
			}
		}
	}
	bin := filepath.Join(t.TempDir(), "tlcpinterop")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "tlcpinterop"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the interop program: %v\n%s", err, out)
	}
	out, _ := exec.Command(bin, "-server", pc.volumeDir(server), "-client", pc.volumeDir(client), "-suite", "ecc").Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r struct {
		OK                       bool
		Suite, Echo, Error       string
		ServerCerts, ClientCerts int
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil || !r.OK || r.Suite != "0xe013" || r.ServerCerts != 2 || r.Echo != "echo:hello" {
		t.Fatalf("a TLCP handshake between the two pods' pairs: %+v %v\n%s", r, err, out)
	}
	t.Logf("TLCP between two pods' pairs on the real node: %s", lines[len(lines)-1])
}
