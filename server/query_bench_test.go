package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// BenchmarkAdminQueries measures the latency of the admin API's list and
// filter queries (the console's pages call the same ones) at scale: 100,000
// devices, 300,000 attestation records and about 420,000 audit entries
// (cluster.SyntheticFleet documents their spread of states, groups, labels,
// flags, outcomes, codes, entry types and actors), built in the node's
// registry by the commands' apply (cluster.LoadSynthetic), then
// asked over HTTPS with an auditor certificate against the live node, as
// a remote CLI or the console would. Each sub-benchmark reports the p50
// and p99 of its b.N requests in milliseconds.
//
//	make bench-queries
//	go test -tags hashicorpmetrics -run '^$' -bench AdminQueries -benchtime 300x -timeout 30m ./server/
func BenchmarkAdminQueries(b *testing.B) {
	fleet := cluster.SyntheticFleet{Devices: 100_000, Attestations: 300_000, Audit: 100_000, End: time.Now(), Span: 90 * 24 * time.Hour}
	e := newEnv(b)
	e.Seed(fleet)
	ctx := context.Background()
	c := server.NewRemoteAdminClient("https://"+e.App.Addr(), adminCert(b, e, ca.RoleAuditor, "bench"), e.App.Root())

	// Deep cursors: where page 91 of devices (of 1,000) and page 251 of
	// records start, found by walking there.
	deepDevice, deepRecord := "", ""
	walk := time.Now()
	for i := 0; i < 90; i++ {
		_, next, err := c.DevicePage(ctx, server.DeviceFilter{}, deepDevice, 1000)
		if err != nil || next == "" {
			b.Fatalf("walking devices, page %d: %v", i, err)
		}
		deepDevice = next
	}
	for i := 0; i < 250; i++ {
		_, next, err := c.AttestationPage(ctx, server.AttestationFilter{}, deepRecord, 1000)
		if err != nil || next == "" {
			b.Fatalf("walking records, page %d: %v", i, err)
		}
		deepRecord = next
	}
	deepAudit := ""
	for i := 0; i < 350; i++ {
		_, next, err := c.AuditPage(ctx, server.AuditFilter{}, deepAudit, 1000)
		if err != nil || next == "" {
			b.Fatalf("walking audit entries, page %d: %v", i, err)
		}
		deepAudit = next
	}
	b.Logf("walked 90 device pages, 250 record pages and 350 audit pages of 1,000 in %s", time.Since(walk).Round(time.Millisecond))

	// Timed requests go through a plain client: the test binary's OpenAPI
	// checker (which wraps every Gatehouse client) is not timed. The walk
	// above went through it.
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{adminCert(b, e, ca.RoleAuditor, "timer")}}}}
	someDevice := cluster.SyntheticDevice(4242).ID
	day := fleet.End.Add(-45 * 24 * time.Hour).UTC()
	dayQ := "since=" + url.QueryEscape(day.Format(time.RFC3339)) + "&until=" + url.QueryEscape(day.Add(24*time.Hour).Format(time.RFC3339))
	type query struct{ name, path string }
	for _, q := range []query{
		{"devices/first-page", "/admin/v1/devices"},
		{"devices/state=quarantined", "/admin/v1/devices?state=quarantined"},
		{"devices/group=group-07", "/admin/v1/devices?group=group-07"},
		{"devices/group=canary", "/admin/v1/devices?group=canary"},
		{"devices/label=site=site-13", "/admin/v1/devices?label=site%3Dsite-13"},
		{"devices/flag=possible_clone", "/admin/v1/devices?flag=possible_clone"},
		{"devices/model=model-3", "/admin/v1/devices?model=model-3"},
		{"devices/state+group+label", "/admin/v1/devices?state=active&group=group-03&label=site%3Dsite-13"},
		{"devices/empty-intersection", "/admin/v1/devices?state=active&group=group-03&label=env%3Dstaging"},
		{"devices/deep-cursor", "/admin/v1/devices?cursor=" + url.QueryEscape(deepDevice)},
		{"attestations/first-page", "/admin/v1/attestations"},
		{"attestations/outcome=rejected", "/admin/v1/attestations?outcome=rejected"},
		{"attestations/outcome=pending", "/admin/v1/attestations?outcome=pending"},
		{"attestations/code=ek_untrusted", "/admin/v1/attestations?code=ek_untrusted"},
		{"attestations/group=canary", "/admin/v1/attestations?group=canary"},
		{"attestations/device", "/admin/v1/attestations?device=" + someDevice},
		{"attestations/since=24h", "/admin/v1/attestations?since=" + url.QueryEscape(fleet.End.Add(-24*time.Hour).UTC().Format(time.RFC3339))},
		{"attestations/one-day-45d-ago", "/admin/v1/attestations?" + dayQ},
		{"attestations/rejected+code+day", "/admin/v1/attestations?outcome=rejected&code=pcr_mismatch&" + dayQ},
		{"attestations/empty-intersection", "/admin/v1/attestations?outcome=accepted&code=pcr_mismatch"},
		{"attestations/deep-cursor", "/admin/v1/attestations?cursor=" + url.QueryEscape(deepRecord)},
		{"audit/first-page", "/admin/v1/audit/entries"},
		{"audit/type=device.state", "/admin/v1/audit/entries?type=device.state"},
		{"audit/type=admin.denied", "/admin/v1/audit/entries?type=admin.denied"},
		{"audit/actor=operator-3", "/admin/v1/audit/entries?actor=operator-3"},
		{"audit/device", "/admin/v1/audit/entries?device=" + someDevice},
		{"audit/since=24h", "/admin/v1/audit/entries?since=" + url.QueryEscape(fleet.End.Add(-24*time.Hour).UTC().Format(time.RFC3339))},
		{"audit/one-day-45d-ago", "/admin/v1/audit/entries?" + dayQ},
		{"audit/type+actor+day", "/admin/v1/audit/entries?type=device.labels&actor=operator-1&" + dayQ},
		{"audit/empty-intersection", "/admin/v1/audit/entries?type=admin.denied&device=" + someDevice},
		{"audit/deep-cursor", "/admin/v1/audit/entries?cursor=" + url.QueryEscape(deepAudit)},
		{"fleet/hours=24", "/admin/v1/fleet"},
		{"fleet/hours=168", "/admin/v1/fleet?hours=168"},
	} {
		b.Run(q.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			n := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t := time.Now()
				resp, err := hc.Get("https://" + e.App.Addr() + q.path)
				if err != nil {
					b.Fatal(err)
				}
				var body json.RawMessage // a page (an array), or the fleet aggregate (one object)
				err = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				lat = append(lat, time.Since(t))
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("GET %s: %d %v", q.path, resp.StatusCode, err)
				}
				var page []json.RawMessage
				if n = 1; json.Unmarshal(body, &page) == nil {
					n = len(page)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))]) / float64(time.Millisecond)
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(n), "items")
			if testing.Verbose() && b.N > 1 {
				fmt.Printf("%-34s p50 %6.2f ms  p99 %6.2f ms  %4d items  %d requests  GET %s\n", q.name, pct(0.50), pct(0.99), n, len(lat), q.path)
			}
		})
	}
}
