package charts

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/podkey/podkey/internal/testenv/metricstest"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var (
	metricRE   = regexp.MustCompile(`\b(podkey_[a-z0-9_]+)(\{([^}]*)\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_]+)\s*(=~|!~|!=|=)`)
	byLabelsRE = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// checkExpr fails for a metric name podkey does not export, or a label
// it does not have, in a PromQL expression.
func checkExpr(t *testing.T, where, expr string, have map[string]map[string]bool) {
	t.Helper()
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced expression %q", where, expr)
	}
	found := 0
	for _, m := range metricRE.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		labels, ok := metricstest.Lookup(have, name)
		if !ok {
			t.Errorf("%s: %s is not a metric podkey exports", where, name)
			continue
		}
		found++
		for _, mm := range matcherRE.FindAllStringSubmatch(m[3], -1) {
			if !labels[mm[1]] {
				t.Errorf("%s: %s has no label %q", where, name, mm[1])
			}
		}
	}
	if found == 0 {
		t.Errorf("%s: no podkey metric in %q", where, expr)
	}
	// Aggregation labels are podkey's own or the scrape's target labels.
	for _, m := range byLabelsRE.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			l = strings.TrimSpace(l)
			known := l == "namespace" || l == "pod" || l == "le"
			for _, labels := range have {
				known = known || labels[l]
			}
			if !known {
				t.Errorf("%s: aggregation by unknown label %q", where, l)
			}
		}
	}
}

func TestAlertsAndDashboardUseExportedMetrics(t *testing.T) {
	have := metricstest.Exported(t)
	for _, want := range []string{"podkey_keyd_hsm_errors_total", "podkey_keyd_audit_append_failures_total", "podkey_csi_tmpfs_reserved_bytes", "podkey_csi_node_certificate_expiry_timestamp_seconds"} {
		if _, ok := have[want]; !ok {
			t.Fatalf("the recorder missed %s: %v", want, have)
		}
	}
	objs := render(t, "prometheusRule: {enabled: true}\ngrafanaDashboard: {enabled: true}\n")
	rule := objs["PrometheusRule/podkey"]
	if rule == nil {
		t.Fatal("no PrometheusRule")
	}
	groups, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups")
	alerts := 0
	for _, g := range groups {
		rules, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rules {
			rm := r.(map[string]any)
			alerts++
			checkExpr(t, "alert "+rm["alert"].(string), rm["expr"].(string), have)
			if s, _ := rm["labels"].(map[string]any)["severity"].(string); s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q", rm["alert"], s)
			}
		}
	}
	if alerts < 8 {
		t.Fatalf("%d alerts", alerts)
	}
	cm := objs["ConfigMap/podkey-dashboard"]
	if cm == nil {
		t.Fatal("no dashboard ConfigMap")
	}
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "podkey.json")
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal([]byte(raw), &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("dashboard JSON: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			checkExpr(t, "panel "+p.Title, tg.Expr, have)
		}
	}
	// Off by default.
	if objs := render(t, ""); objs["PrometheusRule/podkey"] != nil || objs["ConfigMap/podkey-dashboard"] != nil {
		t.Error("monitoring objects rendered by default")
	}
}
