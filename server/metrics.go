package server

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
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

// enrollMetrics are Gatehouse's own counters and latencies. Names follow
// Prometheus' conventions: the gatehouse_ prefix, base units as suffixes
// (_seconds, _total), and what varies (stage, outcome, problem code, route)
// as labels with bounded values, never raw request data.
type enrollMetrics struct {
	registry  *prometheus.Registry
	outcomes  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	renewals  *prometheus.CounterVec
	renewTime *prometheus.HistogramVec
	requests  *prometheus.HistogramVec
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
			Help: "Enrollment requests (stage challenge or complete) by outcome (accepted, pending, rejected); code is the problem code of a rejection.",
		}, []string{"stage", "outcome", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_enrollment_duration_seconds",
			Help:    "Server-side time of enrollment requests, by stage and outcome.",
			Buckets: latencyBuckets,
		}, []string{"stage", "outcome"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_renewals_total",
			Help: "Renewal requests (stage renew-challenge or renew) by outcome (accepted, rejected); code is the problem code of a rejection, authentication refusals included.",
		}, []string{"stage", "outcome", "code"}),
		renewTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_renewal_duration_seconds",
			Help:    "Server-side time of renewal requests, by stage and outcome.",
			Buckets: latencyBuckets,
		}, []string{"stage", "outcome"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests, by listener (https, socket), route (the route pattern, or unmatched) and status code.",
			Buckets: latencyBuckets,
		}, []string{"listener", "route", "code"}),
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
	m.registry.MustRegister(m.outcomes, m.latency, m.renewals, m.renewTime, m.requests, m.certsDone, m.panics, m.unrecorded, collectors.NewGoCollector())
	return m
}

var latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 14) // 0.5 ms .. 4 s

// observe counts a request of an enrollment or renewal stage; renewal
// stages go to the renewal metrics.
func (m *enrollMetrics) observe(stage string, start time.Time, err error) {
	outcome, code := "accepted", ""
	var pending *api.Pending
	switch {
	case errors.As(err, &pending):
		outcome = "pending"
	case err != nil:
		outcome, code = "rejected", problemFor(err).Code
	}
	count, latency := m.outcomes, m.latency
	if stage == stageRenew || stage == stageRenewChallenge {
		count, latency = m.renewals, m.renewTime
	}
	count.WithLabelValues(stage, outcome, code).Inc()
	latency.WithLabelValues(stage, outcome).Observe(time.Since(start).Seconds())
}

// metricsHandler serves Prometheus text: Raft's metrics and Gatehouse's,
// the node's state read at scrape time (stateCollector) included.
func (a *Appliance) metricsHandler() http.Handler {
	state := prometheus.NewRegistry()
	state.MustRegister(&stateCollector{a: a})
	return promhttp.HandlerFor(prometheus.Gatherers{raftRegistry, a.enroller.metrics.registry, state}, promhttp.HandlerOpts{})
}

// stateCollector reads the node's state when scraped: devices by state,
// the approval queue, leadership, indexes, the audit head. All but the
// device counts are reads from memory or one key; the device counts walk
// the registry, so they are recomputed only when the applied index moved
// and at most once a second (an unauthenticated scrape must
// not cost a walk of every device).
type stateCollector struct {
	a *Appliance

	mu      sync.Mutex
	index   uint64
	at      time.Time
	counts  map[string]int
	countOK bool
}

const deviceCountEvery = time.Second

var (
	descDevices   = prometheus.NewDesc("gatehouse_devices", "Devices in this node's replica of the registry, by state.", []string{"state"}, nil)
	descApprovals = prometheus.NewDesc("gatehouse_approval_queue_devices", "Devices waiting for an operator's approval (state pending).", nil, nil)
	descLeader    = prometheus.NewDesc("gatehouse_cluster_leader", "1 if this node is the Raft leader, else 0.", nil, nil)
	descHasLeader = prometheus.NewDesc("gatehouse_cluster_has_leader", "1 if this node knows a Raft leader, else 0.", nil, nil)
	descApplied   = prometheus.NewDesc("gatehouse_cluster_applied_index", "Index of the last Raft log entry this node's registry applied.", nil, nil)
	descCommit    = prometheus.NewDesc("gatehouse_cluster_commit_index", "Raft commit index as this node knows it.", nil, nil)
	descAuditHead = prometheus.NewDesc("gatehouse_audit_head_seq", "Sequence number of the newest audit entry in this node's replica.", nil, nil)
	descReady     = prometheus.NewDesc("gatehouse_ready", "1 if GET /readyz would answer 200 (every readiness check passes), else 0.", nil, nil)
	descACMEState = prometheus.NewDesc("gatehouse_acme_node_state", "ACME state this node keeps in memory (acme/DESIGN.md): used nonces, pending (pre-proof) updates, and their bytes.", []string{"kind"}, nil)
	descFeature   = prometheus.NewDesc("gatehouse_cluster_feature_version", "The cluster's committed feature version in this node's replica (see README, Upgrades).", nil, nil)
	descBuildFeat = prometheus.NewDesc("gatehouse_build_feature_version", "The highest cluster feature version this node's build applies.", nil, nil)
	descHalted    = prometheus.NewDesc("gatehouse_registry_halted", "1 if this node's registry stopped at a committed entry its build does not understand (upgrade the node), else 0.", nil, nil)
	deviceStates  = []string{cluster.DevicePending, cluster.DeviceActive, cluster.DeviceDisabled, cluster.DeviceQuarantined, cluster.DeviceRevoked, cluster.DeviceDeleted}
	_             = prometheus.Collector((*stateCollector)(nil))
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDevices, descApprovals, descLeader, descHasLeader, descApplied, descCommit, descAuditHead, descReady, descACMEState, descFeature, descBuildFeat, descHalted} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.a.node.Progress()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descLeader, boolGauge(p.Leading()))
	gauge(descHasLeader, boolGauge(p.LeaderID != ""))
	gauge(descApplied, float64(p.Applied))
	gauge(descCommit, float64(p.Commit))
	gauge(descReady, boolGauge(c.a.Readiness(true).Ready))
	gauge(descFeature, float64(c.a.node.FeatureVersion()))
	gauge(descBuildFeat, float64(c.a.buildFeature()))
	gauge(descHalted, boolGauge(c.a.node.Halted() != nil))
	if db := c.a.acmeDB; db != nil {
		used, pending := db.Sizes()
		gauge(descACMEState, float64(used), "used_nonces")
		gauge(descACMEState, float64(pending), "pending_updates")
		gauge(descACMEState, float64(db.PendingBytes()), "pending_bytes")
	}
	if head, err := c.a.node.AuditHead(); err == nil {
		gauge(descAuditHead, float64(head.Seq))
	}
	if counts, ok := c.deviceCounts(p.Applied); ok {
		for _, s := range deviceStates {
			gauge(descDevices, float64(counts[s]), s)
		}
		gauge(descApprovals, float64(counts[cluster.DevicePending]))
	}
}

func (c *stateCollector) deviceCounts(applied uint64) (map[string]int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.countOK && (c.index == applied || time.Since(c.at) < deviceCountEvery) {
		return c.counts, true
	}
	counts, err := c.a.node.DeviceCounts()
	if err != nil {
		c.a.log.Error("metrics: counting devices", "err", err)
		return c.counts, c.countOK
	}
	c.index, c.at, c.counts, c.countOK = applied, time.Now(), counts, true
	return counts, true
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
