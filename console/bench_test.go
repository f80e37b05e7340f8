package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// pageBudget bounds the time one page is timed for: at least minRequests
// requests, then no more once the budget is spent. A page that walks the
// whole registry (seconds a request) would otherwise run for hours at the
// benchtime the list pages need; its figure then rests on fewer requests,
// which the output states.
const (
	pageBudget  = 20 * time.Second
	minRequests = 10
)

// BenchmarkConsolePages measures what a browser waits for: the latency of
// the console's pages, each a GET that the console answers by asking the
// live node's admin API with an operator certificate and rendering HTML.
// The node holds 100,000 devices and 300,000 attestation records
// (cluster.SyntheticFleet, seeded straight into its registry). Each
// sub-benchmark reports the p50 and p99 of its requests in milliseconds.
//
//	make bench-console
//	go test -tags hashicorpmetrics -run '^$' -bench ConsolePages -benchtime 200x -timeout 30m -v ./console/
func BenchmarkConsolePages(b *testing.B) {
	fleet := cluster.SyntheticFleet{Devices: 100_000, Attestations: 300_000, End: time.Now(), Span: 90 * 24 * time.Hour}
	e := servertest.New(b)
	// The synthetic accepted records cite policy version 1: the
	// attestation page shows that policy's document beside the record.
	pol, err := e.App.ApplyPolicy(context.Background(), "bench", []byte(`{"groups":[{"name":"fleet","mode":"auto"}]}`))
	if err != nil || pol.Version != 1 {
		b.Fatalf("policy: %+v %v", pol, err)
	}
	e.Seed(fleet)
	s, ac := startConsole(b, e, ca.RoleOperator, "bench")
	ctx := context.Background()

	// Log in as a browser does: the one-time URL sets the session cookie.
	hc := &http.Client{Timeout: time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(s.LoginURL())
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		b.Fatalf("login: %s, cookies %v", resp.Status, resp.Cookies())
	}
	cookie := resp.Cookies()[0]
	base, _, _ := strings.Cut(s.LoginURL(), "/login")

	// A deep cursor: where device 90,001 starts, found by walking there.
	deep := ""
	for i := 0; i < 90; i++ {
		_, next, err := ac.DevicePage(ctx, server.DeviceFilter{}, deep, cluster.MaxPageLimit)
		if err != nil || next == "" {
			b.Fatalf("walking devices, page %d: %v", i, err)
		}
		deep = next
	}
	someDevice := cluster.SyntheticDevice(4242).ID
	recs, _, err := ac.AttestationPage(ctx, server.AttestationFilter{Device: someDevice, Outcome: cluster.OutcomeAccepted}, "", 1)
	if err != nil || len(recs) == 0 || recs[0].Policy == nil {
		b.Fatalf("records of %s: %v %v", someDevice, recs, err)
	}
	day := fleet.End.Add(-45 * 24 * time.Hour).UTC().Truncate(time.Second)
	dayQ := "since=" + url.QueryEscape(day.Format(time.RFC3339)) + "&until=" + url.QueryEscape(day.Add(24*time.Hour).Format(time.RFC3339))

	// want is an element each page shows when it rendered what was asked.
	type page struct{ name, path, want string }
	for _, p := range []page{
		{"devices/first-page", "/devices", `id="devices"`},
		{"devices/state=quarantined", "/devices?state=quarantined", `id="devices"`},
		{"devices/group=group-07", "/devices?group=group-07", `id="devices"`},
		{"devices/label=site=site-13", "/devices?label=site%3Dsite-13", `id="devices"`},
		{"devices/model=model-3", "/devices?model=model-3", `id="devices"`},
		{"devices/deep-cursor", "/devices?cursor=" + url.QueryEscape(deep), `id="devices"`},
		{"attestations/first-page", "/attestations", `id="attestation-list"`},
		{"attestations/outcome=rejected", "/attestations?outcome=rejected", `id="attestation-list"`},
		{"attestations/code=ek_untrusted", "/attestations?code=ek_untrusted", `id="attestation-list"`},
		{"attestations/device", "/attestations?device=" + someDevice, `id="attestation-list"`},
		{"attestations/one-day-45d-ago", "/attestations?" + dayQ, `id="attestation-list"`},
		{"device", "/devices/" + someDevice, `id="certs"`},
		{"attestation", "/attestations/" + strconv.FormatUint(recs[0].ID, 10), `id="rules"`},
		// The fleet page counts devices by walking every page of them
		// until the admin API has an aggregate to ask.
		{"fleet", "/", `id="by-state"`},
	} {
		b.Run(p.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			size := 0
			start := time.Now()
			b.ResetTimer()
			for i := 0; i < b.N && (i < minRequests || time.Since(start) < pageBudget); i++ {
				req, _ := http.NewRequest("GET", base+p.path, nil)
				req.AddCookie(cookie)
				t := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t))
				if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), p.want) {
					b.Fatalf("GET %s: %s %v, want %s: %.300s", p.path, resp.Status, err, p.want, body)
				}
				size = len(body)
			}
			b.StopTimer()
			slices.Sort(lat)
			pct := func(q float64) float64 {
				return float64(lat[min(len(lat)-1, int(float64(len(lat))*q))]) / float64(time.Millisecond)
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(size), "html-bytes")
			if testing.Verbose() && b.N > 1 {
				fmt.Printf("%-32s p50 %7.2f ms  p99 %7.2f ms  %7d bytes  %d requests  GET %s\n", p.name, pct(0.50), pct(0.99), size, len(lat), p.path)
			}
		})
	}
}
