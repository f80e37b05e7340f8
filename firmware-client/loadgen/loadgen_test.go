package loadgen

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/internal/backoff"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

func testConfig(t *testing.T, e *servertest.Env) Config {
	t.Helper()
	key, err := e.Mfr.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	mfr, err := tpmmodel.NewManufacturer(e.Mfr.Intermediate, key)
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	plat, err := tpmmodel.NewPlatform(log)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Nodes:        []Node{{API: e.App.Addr(), PID: os.Getpid(), DataDir: e.Dir}},
		Root:         e.App.Root(),
		Manufacturer: mfr, Platform: plat,
		Concurrency: 4, Duration: 2 * time.Second, Pregen: 8,
		Log: t.Logf,
	}
}

// A short mixed run against a live node enrolls and renews without an
// error, every acknowledged operation is in the registry, and the summary
// line has the exact format with real numbers. The node admits at most 2
// unauthenticated requests per client address (then 1 per 10 s): the run
// only passes because every device comes from its own loopback address.
func TestRunMixed(t *testing.T) {
	e := servertest.NewWithConfig(t, func(c *server.Config) { c.RateLimit, c.RateBurst = 0.1, 2 })
	cfg := testConfig(t, e)
	cfg.Mode, cfg.Verify = ModeMixed, true
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Enrollments == 0 || r.Renewals == 0 || r.ErrorCount != 0 {
		t.Fatalf("%d enrollments, %d renewals, errors %v: want both > 0 and no error", r.Enrollments, r.Renewals, r.Errors)
	}
	if r.Verified != r.Enrollments+r.Renewals || r.Lost != 0 || r.VerifyErr != nil {
		t.Fatalf("verified %d of %d acknowledged, %d lost, %v", r.Verified, r.Enrollments+r.Renewals, r.Lost, r.VerifyErr)
	}
	if r.ServerCPU <= 0 || r.GeneratorCPU <= 0 || r.Nodes[0].RSS == 0 || r.Nodes[0].HWM < r.Nodes[0].RSS || r.Nodes[0].ID == "" {
		t.Fatalf("measurements: server CPU %v, generator CPU %v, node %+v", r.ServerCPU, r.GeneratorCPU, r.Nodes[0])
	}
	if r.AllLat.P50 <= 0 || r.AllLat.P50 > r.AllLat.P95 || r.AllLat.P95 > r.AllLat.P99 || r.AllLat.P99 > r.AllLat.Max {
		t.Fatalf("latency %+v", r.AllLat)
	}
	line := SummaryLine([]*Result{r})
	m := regexp.MustCompile(`^loadtest: enroll_per_s=([0-9.]+) renew_per_s=([0-9.]+) p99_ms=([0-9.]+) server_cpu_ms_per_enroll=([0-9.]+) errors=0$`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("summary line %q", line)
	}
	for _, v := range m[1:] {
		if f, err := strconv.ParseFloat(v, 64); err != nil || f <= 0 {
			t.Fatalf("summary line %q: %q is not a positive number", line, v)
		}
	}
	t.Log(line)
}

// Verification counts an acknowledged operation the registry does not
// hold, or holds with another certificate, as lost (the control for the
// zero above).
func TestVerifyCountsMissing(t *testing.T) {
	e := servertest.New(t)
	cfg := testConfig(t, e)
	cfg.Mode, cfg.Verify = ModeEnroll, true
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	g := newGen(cfg)
	g.devices = make(chan *tpmmodel.Device)
	o, err := g.enroll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	g.acked(time.Now(), o.id)
	if checked, lost, err := g.verify(context.Background()); checked != 1 || lost != 0 || err != nil {
		t.Fatalf("verify the enrolled device: %d checked, %d lost, %v", checked, lost, err)
	}
	g.acks.Store(o.id.AttestationID, ack{deviceID: o.id.DeviceID, serial: "1234"})
	g.acks.Store(o.id.AttestationID+1000, ack{deviceID: o.id.DeviceID, serial: o.id.Certificate.SerialNumber.Text(16)})
	if checked, lost, err := g.verify(context.Background()); checked != 2 || lost != 2 || err != nil {
		t.Fatalf("verify a wrong serial and a missing record: %d checked, %d lost, %v", checked, lost, err)
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:8443", "https://127.0.0.2:1/", "[::1]:8443", "localhost:8443"} {
		if _, err := CheckLoopback(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"192.0.2.1:8443", "https://10.0.0.1:443", "[2001:db8::1]:443", "127.0.0.1", "0.0.0.0:8443"} {
		if _, err := CheckLoopback(bad); !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: %v, want ErrNotLoopback", bad, err)
		}
	}
	// Run refuses before any traffic.
	_, err := Run(context.Background(), Config{Nodes: []Node{{API: "192.0.2.1:8443"}}, Root: &x509.Certificate{}, Manufacturer: &tpmmodel.Manufacturer{}, Platform: &tpmmodel.Platform{}, Concurrency: 1, Duration: time.Second})
	if !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("Run against 192.0.2.1: %v, want ErrNotLoopback", err)
	}
}

func TestDeviceIPs(t *testing.T) {
	seen := map[string]bool{}
	for i := range uint64(200000) {
		ip := deviceIP(i)
		if !ip.IsLoopback() || ip.Equal(deviceIP(0).To4()) && i != 0 || ip.To4()[1] == 0 || ip.To4()[3] == 0 || ip.To4()[3] == 255 {
			t.Fatalf("device %d: %s", i, ip)
		}
		if seen[ip.String()] {
			t.Fatalf("device %d: %s again", i, ip)
		}
		seen[ip.String()] = true
	}
}

// overloaded answers every other enrollment completion as an overloaded
// appliance does (429, Retry-After) without passing it on.
type overloaded struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (o overloaded) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == api.PathComplete && o.n.Add(1)%2 == 1 {
		body := `{"type":"about:blank","title":"Too Many Requests","status":429,"code":"rate_limited"}`
		return &http.Response{StatusCode: http.StatusTooManyRequests, Status: "429 Too Many Requests", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Retry-After": {"1"}, "Content-Type": {"application/problem+json"}}, Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
	}
	return o.rt.RoundTrip(r)
}

// A herd runs the agent's loop on every device until it is enrolled: the
// completions answered 429 with Retry-After are counted and retried with
// the daemon's backoff until all are enrolled and none gave up.
func TestHerd(t *testing.T) {
	e := servertest.New(t)
	cfg := testConfig(t, e)
	var calls atomic.Int64
	api.SetTransportWrapper(func(rt http.RoundTripper) http.RoundTripper { return overloaded{rt, &calls} })
	t.Cleanup(func() { api.SetTransportWrapper(nil) })
	const n = 12
	r, err := Herd(context.Background(), HerdConfig{
		Nodes: cfg.Nodes, Root: cfg.Root, Manufacturer: cfg.Manufacturer, Platform: cfg.Platform,
		N: n, Dir: t.TempDir(), Limit: time.Minute, Log: t.Logf,
		Backoff: backoff.Policy{Base: 100 * time.Millisecond, Cap: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf strings.Builder
	WriteHerd(&buf, r)
	t.Log(buf.String())
	if r.Enrolled != n || r.GaveUp != 0 || r.LastEnrolled <= 0 || r.P99 < r.P50 || r.P50 <= 0 {
		t.Fatalf("herd: %+v", r)
	}
	if r.Status429 < n/2 || r.WithRetryAfter != r.Status429 || r.Failures["rate_limited (429)"] != r.Status429 || r.Attempts != n+r.Status429 {
		t.Fatalf("429s %d (%d with Retry-After), failures %v, attempts %d", r.Status429, r.WithRetryAfter, r.Failures, r.Attempts)
	}
	// Some device was turned away and retried; none tried more often
	// than all of them together.
	if r.MaxAttempts < 2 || r.MaxAttempts > r.Attempts-n+1 {
		t.Fatalf("at most %d attempts by one device, of %d in all", r.MaxAttempts, r.Attempts)
	}
	if !regexp.MustCompile(`(?m)^herd: devices=12 enrolled=12 gave_up=0 last_enrolled_s=[0-9.]+ max_rss_mib=[1-9][0-9]* status_429=[1-9][0-9]* status_503=0 max_attempts=[1-9][0-9]*$`).MatchString(buf.String()) {
		t.Fatalf("herd line missing:\n%s", buf.String())
	}
}

// A worker told to come back later (429 or 503 with Retry-After) waits as
// told, bounded by the window's end, and counts the answer apart from the
// errors; any other failure, a 503 without Retry-After included, is an
// error and costs no wait.
func TestWorkerFollowsRetryAfter(t *testing.T) {
	st := stats{errors: map[string]int{}, deferred: map[string]int{}}
	ctx := context.Background()
	overloaded := &api.Problem{Status: http.StatusServiceUnavailable, Code: api.CodeOverloaded, RetryAfter: 300 * time.Millisecond}
	start := time.Now()
	st.failed(ctx, start.Add(time.Minute), overloaded)
	if waited := time.Since(start); waited < 300*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("waited %v after Retry-After 300ms", waited)
	}
	start = time.Now()
	st.failed(ctx, start.Add(50*time.Millisecond), &api.Problem{Status: http.StatusTooManyRequests, Code: api.CodeRateLimited, RetryAfter: time.Minute})
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("waited %v past the window's end", waited)
	}
	start = time.Now()
	st.failed(ctx, start.Add(time.Minute), &api.Problem{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable})
	st.failed(ctx, start.Add(time.Minute), &api.Problem{Status: http.StatusForbidden, Code: api.CodePolicyDenied, RetryAfter: time.Second})
	st.failed(ctx, start.Add(time.Minute), io.ErrUnexpectedEOF)
	if waited := time.Since(start); waited > 100*time.Millisecond {
		t.Fatalf("an error cost a wait of %v", waited)
	}
	if st.deferred[Classify(overloaded)] != 1 || len(st.deferred) != 2 {
		t.Fatalf("told to come back: %v", st.deferred)
	}
	if n := st.errors["unavailable (503)"] + st.errors["policy_denied (403)"]; n != 2 || len(st.errors) != 3 {
		t.Fatalf("errors: %v", st.errors)
	}
}
