package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// /metrics carries Raft's metrics (through the go-metrics Prometheus sink,
// which needs the hashicorpmetrics build tag) and Gatehouse's own.
func TestMetrics(t *testing.T) {
	e := servertest.New(t)
	d := servertest.NewDevice(t, e.Mfr)
	if _, err := e.Client.Enroll(context.Background(), d.TPM); err != nil {
		t.Fatal(err)
	}
	resp, err := e.HTTP.Post(e.URL()+api.PathChallenge, "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	resp, err = e.HTTP.Get(e.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	for _, want := range []string{
		`gatehouse_enrollments_total{code="",outcome="accepted",stage="challenge"} 1`,
		`gatehouse_enrollments_total{code="",outcome="accepted",stage="complete"} 1`,
		`gatehouse_enrollments_total{code="malformed_request",outcome="rejected",stage="challenge"} 1`,
		`gatehouse_enrollment_duration_seconds_bucket{outcome="accepted",stage="complete",le=`,
		`gatehouse_certificates_issued_total 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(body, "gatehouse_raft_commitTime") {
		t.Error("/metrics has no Raft metrics: build with -tags hashicorpmetrics (make test does)")
	}
}
