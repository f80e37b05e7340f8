package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// scrape reads /metrics over the HTTPS port.
func scrape(t *testing.T, e *servertest.Env) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := e.HTTP.Get(e.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return mf
}

// value is the sample of family name whose labels include want (a
// histogram's count); -1 when there is none.
func value(mf map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := mf[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// /metrics, over the HTTPS port, after an enrollment, a renewal and
// refusals: each family has its Prometheus type, and the values moved by
// what happened; no label carries a raw path; Raft's metrics are there
// (through the go-metrics Prometheus sink, which needs the
// hashicorpmetrics build tag).
func TestMetrics(t *testing.T) {
	e := servertest.New(t)
	before := scrape(t, e)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.Renew(ctx, d.TPM, id, nil); err != nil {
		t.Fatal(err)
	}
	// A second device waits for approval.
	d2 := servertest.NewDevice(t, e.Mfr)
	sum, err := attest.PublicKeySHA256(d2.EK.Public)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(`{"groups":[{"name":"vouched","mode":"approve","match":{"ek_public_sha256":["`+sum+`"]}}]}`)); err != nil {
		t.Fatal(err)
	}
	var pending *api.Pending
	if _, err := e.Client.Enroll(ctx, d2.TPM); !errors.As(err, &pending) {
		t.Fatalf("second device: %v, want pending", err)
	}
	for _, path := range []string{api.PathChallenge, api.PathRenew} { // malformed; unauthenticated
		resp, err := e.HTTP.Post(e.URL()+path, "application/json", strings.NewReader("{"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := e.HTTP.Get(e.URL() + "/no/such/route/a1b2c3")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	var after map[string]*dto.MetricFamily
	servertest.WaitFor(t, "the devices counted", 5*time.Second, func() bool { // recounted at most once a second
		after = scrape(t, e)
		return value(after, "gatehouse_devices", map[string]string{"state": "pending"}) == max(value(before, "gatehouse_devices", map[string]string{"state": "pending"}), 0)+1
	})
	types := map[string]dto.MetricType{
		"gatehouse_enrollments_total":             dto.MetricType_COUNTER,
		"gatehouse_enrollment_duration_seconds":   dto.MetricType_HISTOGRAM,
		"gatehouse_renewals_total":                dto.MetricType_COUNTER,
		"gatehouse_renewal_duration_seconds":      dto.MetricType_HISTOGRAM,
		"gatehouse_http_request_duration_seconds": dto.MetricType_HISTOGRAM,
		"gatehouse_certificates_issued_total":     dto.MetricType_COUNTER,
		"gatehouse_refusals_unrecorded_total":     dto.MetricType_COUNTER,
		"gatehouse_devices":                       dto.MetricType_GAUGE,
		"gatehouse_approval_queue_devices":        dto.MetricType_GAUGE,
		"gatehouse_cluster_leader":                dto.MetricType_GAUGE,
		"gatehouse_cluster_has_leader":            dto.MetricType_GAUGE,
		"gatehouse_cluster_applied_index":         dto.MetricType_GAUGE,
		"gatehouse_cluster_commit_index":          dto.MetricType_GAUGE,
		"gatehouse_audit_head_seq":                dto.MetricType_GAUGE,
		"gatehouse_ready":                         dto.MetricType_GAUGE,
		"gatehouse_acme_node_state":               dto.MetricType_GAUGE,
	}
	for name, typ := range types {
		if f := after[name]; f == nil || f.GetType() != typ {
			t.Errorf("%s: %v, want a %v", name, f.GetType(), typ)
		}
	}
	moved := []struct {
		name   string
		labels map[string]string
		by     float64
	}{
		{"gatehouse_enrollments_total", map[string]string{"stage": "complete", "outcome": "accepted", "code": ""}, 1},
		{"gatehouse_enrollments_total", map[string]string{"stage": "challenge", "outcome": "rejected", "code": api.CodeMalformed}, 1},
		{"gatehouse_renewals_total", map[string]string{"stage": "renew-challenge", "outcome": "accepted", "code": ""}, 1},
		{"gatehouse_renewals_total", map[string]string{"stage": "renew", "outcome": "accepted", "code": ""}, 1},
		{"gatehouse_renewals_total", map[string]string{"stage": "renew", "outcome": "rejected", "code": api.CodeUnauthenticated}, 1},
		{"gatehouse_renewal_duration_seconds", map[string]string{"stage": "renew", "outcome": "accepted"}, 1},
		{"gatehouse_certificates_issued_total", nil, 2},
		{"gatehouse_http_request_duration_seconds", map[string]string{"listener": "https", "route": "POST " + api.PathRenew, "code": "200"}, 1},
		{"gatehouse_http_request_duration_seconds", map[string]string{"listener": "https", "route": "POST " + api.PathChallenge, "code": "400"}, 1},
		{"gatehouse_http_request_duration_seconds", map[string]string{"listener": "https", "route": "unmatched", "code": "404"}, 1},
		{"gatehouse_enrollments_total", map[string]string{"stage": "complete", "outcome": "pending", "code": ""}, 1},
		{"gatehouse_devices", map[string]string{"state": "active"}, 1},
		{"gatehouse_devices", map[string]string{"state": "pending"}, 1},
		{"gatehouse_approval_queue_devices", nil, 1},
	}
	for _, m := range moved {
		was := max(value(before, m.name, m.labels), 0)
		if now := value(after, m.name, m.labels); now != was+m.by {
			t.Errorf("%s%v: %v, want %v", m.name, m.labels, now, was+m.by)
		}
	}
	if value(after, "gatehouse_enrollments_total", map[string]string{"stage": "renew"}) != -1 {
		t.Error("renewals are still counted as enrollments")
	}
	for _, name := range []string{"gatehouse_cluster_applied_index", "gatehouse_audit_head_seq"} {
		if value(after, name, nil) <= value(before, name, nil) {
			t.Errorf("%s did not move: %v -> %v", name, value(before, name, nil), value(after, name, nil))
		}
	}
	if value(after, "gatehouse_cluster_leader", nil) != 1 || value(after, "gatehouse_cluster_has_leader", nil) != 1 || value(after, "gatehouse_ready", nil) != 1 {
		t.Error("a single ready node is not reported leading and ready")
	}
	for name, f := range after {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if strings.Contains(l.GetValue(), "a1b2c3") {
					t.Errorf("%s has a label with the raw path: %s", name, l.GetValue())
				}
			}
		}
	}
	var raft bool
	for name := range after {
		raft = raft || strings.HasPrefix(name, "gatehouse_raft_")
	}
	if !raft {
		t.Error("/metrics has no Raft metrics: build with -tags hashicorpmetrics (make test does)")
	}
}
