package csidriver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	publish, unpublish       *prometheus.CounterVec
	publishDur, unpublishDur *prometheus.HistogramVec
	rotations                *prometheus.CounterVec
	overloadRetries          prometheus.Counter
}

// newMetrics registers the plugin's metrics. Labels carry results only:
// never pod names, volume IDs or anything a pod supplied.
func newMetrics(reg prometheus.Registerer, d *Driver) *metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &metrics{
		publish: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podkey_csi_publish_total",
			Help: "NodePublishVolume calls by result (gRPC code)."}, []string{"result"}),
		unpublish: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podkey_csi_unpublish_total",
			Help: "NodeUnpublishVolume calls by result."}, []string{"result"}),
		publishDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "podkey_csi_publish_duration_seconds",
			Help: "NodePublishVolume latency by result.", Buckets: buckets}, []string{"result"}),
		unpublishDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "podkey_csi_unpublish_duration_seconds",
			Help: "NodeUnpublishVolume latency by result.", Buckets: buckets}, []string{"result"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podkey_csi_rotations_total",
			Help: "Credential renewals on republish by result."}, []string{"result"}),
		overloadRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "podkey_csi_keyd_overload_retries_total",
			Help: "Issue calls tried again after keyd refused them for overload (ResourceExhausted)."}),
	}
	reg.MustRegister(m.publish, m.unpublish, m.publishDur, m.unpublishDur, m.rotations, m.overloadRetries,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_csi_volumes", Help: "Live podkey volumes on this node."},
			func() float64 { return float64(d.Volumes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_csi_revocation_queue_depth", Help: "Revocations waiting for keyd."},
			func() float64 { return float64(d.QueuedRevocations()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_csi_tmpfs_reserved_bytes",
			Help: "tmpfs bytes this node's podkey volumes may hold at their fullest, counted against --max-volume-bytes."},
			func() float64 { return float64(d.ReservedBytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podkey_csi_tmpfs_reserved_limit_bytes",
			Help: "The node's bound on reserved tmpfs bytes (--max-volume-bytes); publishes beyond it are refused."},
			func() float64 { return float64(d.opts.MaxVolumeBytes) }))
	return m
}

func (m *metrics) observePublish(result string, start time.Time) {
	m.publish.WithLabelValues(result).Inc()
	m.publishDur.WithLabelValues(result).Observe(time.Since(start).Seconds())
}

func (m *metrics) observeUnpublish(result string, start time.Time) {
	m.unpublish.WithLabelValues(result).Inc()
	m.unpublishDur.WithLabelValues(result).Observe(time.Since(start).Seconds())
}
