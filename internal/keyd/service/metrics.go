package service

import (
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/podkey/podkey/internal/keyd/audit"
	"github.com/podkey/podkey/internal/keyd/hsm"
)

// metrics are keyd's Prometheus metrics. Labels carry method names and
// result codes only: never pod names, identities, key ids or anything a
// caller supplied.
type metrics struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	refused  prometheus.Counter
	// bootstrapRefused and unauthenticated count what callers without a
	// verified certificate were refused.
	bootstrapRefused, unauthenticated prometheus.Counter
	// unauthenticatedDenied counts refusals of such callers' calls that
	// were admitted (a bad node token, a pod token not for the pod).
	unauthenticatedDenied prometheus.Counter
	// tokenChecks counts pod and node token checks by how they were
	// decided: local, tokenreview, cache.
	tokenChecks *prometheus.CounterVec
	// approvals counts dual-controlled operations by op (a fixed,
	// server-defined set) and result; breakGlass their break-glass uses.
	approvals  *prometheus.CounterVec
	breakGlass prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, a *admission) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podkey_keyd_calls_total",
			Help: "Keyd and Admin API calls by method and result (gRPC code)."}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "podkey_keyd_call_duration_seconds",
			Help:    "Keyd and Admin API call latency by method, admission wait included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"method"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "podkey_keyd_admission_refused_total",
			Help: "Issue, Verify and UnwrapImageKey calls refused with ResourceExhausted: running and waiting calls at their bounds, or the caller at its share."}),
		bootstrapRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "podkey_keyd_bootstrap_refused_total",
			Help: "Calls of TLS callers without a client certificate (NodeCertificate, a pod's Revoke, public keys) refused with ResourceExhausted: the bootstrap lane at its bounds."}),
		unauthenticated: prometheus.NewCounter(prometheus.CounterOpts{Name: "podkey_keyd_unauthenticated_refused_total",
			Help: "Calls refused before admission because the TLS caller presented no client certificate podkey's CA verifies; none is audited."}),
	}
	m.unauthenticatedDenied = prometheus.NewCounter(prometheus.CounterOpts{Name: "podkey_keyd_unauthenticated_denied_total",
		Help: "Calls of TLS callers without a client certificate refused after review (a node token or pod token not accepted); audited as one record per action every 10 s."})
	m.tokenChecks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podkey_keyd_token_checks_total",
		Help: "Pod and node token checks by how they were decided: local (the issuer's keys and the pod caches), tokenreview (an API-server call; with --pod-identity local-with-fallback, while the caches cannot decide), cache (a TokenReview reused)."},
		[]string{"method"})
	m.approvals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podkey_keyd_approvals_total",
		Help: "Administrative operations under dual control by result: executed (an approved request), refused (missing, invalid, short of quorum, expired or replayed)."},
		[]string{"op", "result"})
	m.breakGlass = prometheus.NewCounter(prometheus.CounterOpts{Name: "podkey_keyd_break_glass_total",
		Help: "Operations executed by break-glass, on one person's signature: every one is an incident to review."})
	reg.MustRegister(m.calls, m.duration, m.refused, m.bootstrapRefused, m.unauthenticated, m.unauthenticatedDenied, m.tokenChecks, m.approvals, m.breakGlass,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_keyd_admission_admitted",
			Help: "Issue and Verify calls admitted (running or waiting)."}, func() float64 { n, _ := a.stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_keyd_admission_running",
			Help: "Issue and Verify calls running."}, func() float64 { _, n := a.stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_keyd_admission_capacity",
			Help: "Issue and Verify calls keyd admits at most (running plus waiting)."}, func() float64 { return float64(a.capacity) }),
	)
	return m
}

// observe records a finished call; method is gRPC's full method name.
func (m *metrics) observe(method string, code codes.Code, start time.Time) {
	name := path.Base(method) // "/podkey.keyd.v1.Keyd/Issue" -> "Issue": a fixed, server-defined set
	m.calls.WithLabelValues(name, code.String()).Inc()
	m.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())
}

// registerStateMetrics adds the counters of the HSM token and the audit
// log, once keyd has opened them: failures there come before pods fail.
func registerStateMetrics(reg prometheus.Registerer, tok *hsm.Token, log *audit.Log) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "podkey_keyd_hsm_errors_total",
			Help: "HSM operations that failed after keyd's recovery (new session, re-login, fresh handles) was tried."},
			func() float64 { return float64(tok.Stats().Errors) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "podkey_keyd_hsm_relogins_total",
			Help: "Logins to the HSM after the first: the token lost keyd's login or the device."},
			func() float64 { return float64(tok.Stats().Relogins) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "podkey_keyd_audit_append_failures_total",
			Help: "Audit records the store did not take; the calls they belonged to failed with Unavailable."},
			func() float64 { return float64(log.Failures()) }),
	)
}
