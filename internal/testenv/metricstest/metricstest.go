// Package metricstest lists the metrics podkey's binaries register, from
// their real constructors (keyd on a SoftHSM2 token, a CSI driver, the
// node certificate's gauge), for tests that check alerts, dashboards and
// documents against them.
package metricstest

import (
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/mount-utils"

	"github.com/podkey/podkey/internal/keyd/keydtest"
	"github.com/podkey/podkey/internal/keyd/service"
	"github.com/podkey/podkey/internal/node/csidriver"
	"github.com/podkey/podkey/internal/node/spc"
	"github.com/podkey/podkey/internal/node/volume"
	"github.com/podkey/podkey/pkg/keydclient"
)

// recorder is a Registerer that keeps what is registered: metric names
// and their label names, without values.
type recorder struct{ metrics map[string]map[string]bool }

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			continue
		}
		labels := map[string]bool{}
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels[l] = true
			}
		}
		r.metrics[m[1]] = labels
	}
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *recorder) Unregister(prometheus.Collector) bool { return true }

// Exported maps every podkey metric name to its label names.
func Exported(t *testing.T) map[string]map[string]bool {
	t.Helper()
	r := &recorder{metrics: map[string]map[string]bool{}}
	e := keydtest.Start(t, func(o *service.Options) { o.Registerer = r })
	dir := t.TempDir()
	if _, err := csidriver.New(csidriver.Options{NodeID: "n", StateDir: filepath.Join(dir, "state"), PodsDir: filepath.Join(dir, "pods"),
		Issuer: e.Keyd, Revoker: e.Keyd, Classes: spc.Static{}, Volumes: volume.NewMounter(mount.NewFakeMounter(nil)),
		Registerer: r, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
		t.Fatal(err)
	}
	r.MustRegister(keydclient.NodeCertificateExpiry(time.Now))
	return r.metrics
}

// Lookup finds a metric, including a histogram's _bucket, _sum and _count
// series (a _bucket series has the label le too).
func Lookup(have map[string]map[string]bool, name string) (map[string]bool, bool) {
	if labels, ok := have[name]; ok {
		return labels, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if labels, ok := have[base]; ok {
			out := map[string]bool{}
			for l := range labels {
				out[l] = true
			}
			if suffix == "_bucket" {
				out["le"] = true
			}
			return out, true
		}
	}
	return nil, false
}
