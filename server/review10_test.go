package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A revoked certificate authenticates no one: it must not exempt its holder
// from the per-client rate limit. Otherwise every request of a revoked
// admin (or device) costs the node a linearizable read, and, on admin
// routes, a refusal that is audited (up to the per-second limit), at the
// attacker's rate. A live operator certificate stays unlimited (control).
func TestRevokedCertificateIsRateLimited(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	opCert := adminCert(t, e, ca.RoleOperator, "olga")
	revCert := adminCert(t, e, ca.RoleAuditor, "mallory")
	leaf, _ := x509.ParseCertificate(revCert.Certificate[0])
	if err := server.NewAdminClient(e.Dir).RevokeAdminCert(ctx, leaf.SerialNumber.Text(16), "test", "key stolen"); err != nil {
		t.Fatal(err)
	}
	// Restart with the limit on: 3 at once, then 1 per second.
	e.App.Close()
	app, err := server.Open(e.Dir, servertest.Password, server.WithRateLimit(1, 3),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := app.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	statuses := func(cert tls.Certificate, n int) map[int]int {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
		out := map[int]int{}
		for range n {
			resp, err := hc.Get("https://" + app.Addr() + "/admin/v1/devices")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			out[resp.StatusCode]++
		}
		return out
	}
	if got := statuses(opCert, 8); got[http.StatusOK] != 8 {
		t.Fatalf("live operator certificate: %v, want 8 × 200", got)
	}
	got := statuses(revCert, 8)
	if got[http.StatusTooManyRequests] == 0 {
		t.Fatalf("revoked certificate: %v; none was rate-limited (a revoked certificate bypasses admission control)", got)
	}
	if got[http.StatusTooManyRequests]+got[http.StatusUnauthorized] != 8 {
		t.Fatalf("revoked certificate: %v, want only 401 and 429", got)
	}
}
