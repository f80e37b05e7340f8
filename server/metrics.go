package server

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	gometrics "github.com/hashicorp/go-metrics"
	gmprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Raft reports through go-metrics' global sink (hashicorp/go-metrics when
// built with the hashicorpmetrics tag, as the Makefile does). The sink is
// per process, so it is installed once and shared by every node in it.
var (
	raftMetricsOnce sync.Once
	raftRegistry    = prometheus.NewRegistry()
)

func installRaftMetrics() {
	raftMetricsOnce.Do(func() {
		sink, err := gmprom.NewPrometheusSinkFrom(gmprom.PrometheusOpts{Registerer: raftRegistry, Expiration: time.Minute})
		if err != nil {
			return // metrics are optional; enrollment is not
		}
		cfg := gometrics.DefaultConfig("gatehouse")
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false // the Go collector below covers the runtime
		_, _ = gometrics.NewGlobal(cfg, sink)
	})
}

// enrollMetrics are Gatehouse's own counters and latencies.
type enrollMetrics struct {
	registry  *prometheus.Registry
	outcomes  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	certsDone prometheus.Counter
	panics    prometheus.Counter
	// unrecorded counts refusals answered without an attestation record
	// (before TPM possession was proven, or rate-limited), by stage and code.
	unrecorded *prometheus.CounterVec
}

func newEnrollMetrics() *enrollMetrics {
	m := &enrollMetrics{
		registry: prometheus.NewRegistry(),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_enrollments_total",
			Help: "Enrollment requests by stage and outcome; code is the problem code of a rejection.",
		}, []string{"stage", "outcome", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_enrollment_duration_seconds",
			Help:    "Server-side time of enrollment requests, by stage and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
		}, []string{"stage", "outcome"}),
		certsDone: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_certificates_issued_total",
			Help: "Device certificates this node issued.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_http_panics_total",
			Help: "Device API requests whose handler panicked; each was answered 500 and logged with its stack.",
		}),
		unrecorded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_refusals_unrecorded_total",
			Help: "Refusals answered without an attestation record (before TPM possession was proven, or rate-limited), by stage (or path) and problem code; audited as periodic summaries.",
		}, []string{"stage", "code"}),
	}
	m.registry.MustRegister(m.outcomes, m.latency, m.certsDone, m.panics, m.unrecorded, collectors.NewGoCollector())
	return m
}

func (m *enrollMetrics) observe(stage string, start time.Time, err error) {
	outcome, code := "accepted", ""
	var pending *api.Pending
	switch {
	case errors.As(err, &pending):
		outcome = "pending"
	case err != nil:
		outcome, code = "rejected", problemFor(err).Code
	}
	m.outcomes.WithLabelValues(stage, outcome, code).Inc()
	m.latency.WithLabelValues(stage, outcome).Observe(time.Since(start).Seconds())
}

// metricsHandler serves Prometheus text: Raft's metrics and Gatehouse's.
func (a *Appliance) metricsHandler() http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{raftRegistry, a.enroller.metrics.registry}, promhttp.HandlerOpts{})
}
