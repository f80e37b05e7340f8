package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// probe GETs a probe of app (no client certificate) and decodes its body.
func probe(t *testing.T, app *server.Appliance, path string, out any) int {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get("https://" + app.Addr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q", path, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode
}

// failing names the checks that failed, with their reasons.
func failing(rd server.Readiness) map[string]string {
	out := map[string]string{}
	for name, c := range rd.Checks {
		if !c.OK {
			out[name] = strings.Join(c.Reasons, "; ")
		}
	}
	return out
}

// A ready node answers both probes 200, with every check passing, even
// past the admission rate limit; a registry trailing its commit index, a
// node certificate past its validity and a CA past its validity each make
// it 503, naming the check and why.
func TestProbesReadyAndNotReady(t *testing.T) {
	e := servertest.New(t)
	e.App.Close()
	e.Start(server.WithRateLimit(1, 1))

	var h server.Health
	if code := probe(t, e.App, "/healthz", &h); code != http.StatusOK || h.Status != "ok" || h.NodeID != "node-1" {
		t.Fatalf("/healthz: %d %+v", code, h)
	}
	// Probes are exempt from the per-address limit (burst 1): a load
	// balancer's probes share its address with the traffic it forwards.
	for i := range 5 {
		var rd server.Readiness
		if code := probe(t, e.App, "/readyz", &rd); code != http.StatusOK || !rd.Ready || len(failing(rd)) != 0 {
			t.Fatalf("/readyz #%d of a ready node: %d %+v", i, code, rd)
		}
		for _, c := range []string{server.CheckLeader, server.CheckApplied, server.CheckCA, server.CheckCertificate} {
			if !rd.Checks[c].OK {
				t.Fatalf("check %s missing or failing: %+v", c, rd)
			}
		}
	}
	resp, err := e.HTTP.Get(e.URL() + api.PathCRL)
	if err == nil {
		resp.Body.Close()
		resp, err = e.HTTP.Get(e.URL() + api.PathCRL)
	}
	if err != nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("control: the limit is on for other routes: %v %v", resp, err)
	}
	resp.Body.Close()

	// The registry trailing the commit index: not producible on demand
	// (the FSM applies within milliseconds), so Raft's progress is altered.
	server.SetProgressHook(e.App, func(p *cluster.Progress) { p.Commit = p.Applied + 129 })
	var rd server.Readiness
	if code := probe(t, e.App, "/readyz", &rd); code != http.StatusServiceUnavailable || rd.Ready || len(failing(rd)) != 1 || !strings.Contains(failing(rd)[server.CheckApplied], "trails the commit index") {
		t.Fatalf("registry 129 entries behind: %d %+v", code, rd)
	}
	server.SetProgressHook(e.App, func(p *cluster.Progress) { p.Commit = p.Applied + 128 })
	if code := probe(t, e.App, "/readyz", &rd); code != http.StatusOK {
		t.Fatalf("registry 128 entries behind (within the bound): %d %+v", code, rd)
	}
	server.SetProgressHook(e.App, nil)

	// The node's clock passes its node and server certificates' end (they
	// live a week): peers would refuse them.
	e.Clock.Advance(8 * 24 * time.Hour)
	rd = server.Readiness{}
	if code := probe(t, e.App, "/readyz", &rd); code != http.StatusServiceUnavailable || len(failing(rd)) != 1 ||
		!strings.Contains(failing(rd)[server.CheckCertificate], "node certificate") || !strings.Contains(failing(rd)[server.CheckCertificate], "expired") {
		t.Fatalf("node certificate expired: %d %+v", code, rd)
	}
	// ... and the CA's intermediate's (ten years).
	e.Clock.Advance(11 * 365 * 24 * time.Hour)
	rd = server.Readiness{}
	if code := probe(t, e.App, "/readyz", &rd); code != http.StatusServiceUnavailable || !strings.Contains(failing(rd)[server.CheckCA], "CA intermediate") {
		t.Fatalf("CA expired: %d %+v", code, rd)
	}
	if code := probe(t, e.App, "/healthz", &h); code != http.StatusOK {
		t.Fatalf("/healthz of a live but unready node: %d", code)
	}
}

// A node whose only peer stopped has no leader: /readyz says so (503);
// with ?noleader the leader is not checked and the node is otherwise ready.
func TestReadyzNoLeader(t *testing.T) {
	e := servertest.New(t)
	peer, _ := e.Join(t, "node-2")
	servertest.WaitFor(t, "node-2 as a voter", 20*time.Second, func() bool { return voters(e.App) == 2 })
	peer.Close()
	var rd server.Readiness
	servertest.WaitFor(t, "no leader", 20*time.Second, func() bool {
		rd = server.Readiness{}
		return probe(t, e.App, "/readyz", &rd) == http.StatusServiceUnavailable
	})
	if f := failing(rd); len(f) != 1 || !strings.Contains(f[server.CheckLeader], "no Raft leader") || rd.LeaderID != "" {
		t.Fatalf("no leader: %+v", rd)
	}
	rd = server.Readiness{}
	if code := probe(t, e.App, "/readyz?noleader", &rd); code != http.StatusOK || !rd.Ready {
		t.Fatalf("?noleader: %d %+v", code, rd)
	}
	if _, ok := rd.Checks[server.CheckLeader]; ok {
		t.Fatalf("?noleader ran the leader check: %+v", rd)
	}
}

// A node whose Raft peer refuses its certificate (the peer's address now
// runs another cluster's node) is not ready: the certificate check names
// the peer that refused it.
func TestReadyzPeerRefusesCertificate(t *testing.T) {
	memberDir, refuser := memberRefusedByPeer(t, func(member *server.Appliance, _ string) {
		var rd server.Readiness
		if code := probe(t, member, "/readyz", &rd); code != http.StatusOK {
			t.Fatalf("member of its cluster: %d %+v", code, rd)
		}
	})
	member, err := server.Open(memberDir, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	var rd server.Readiness
	servertest.WaitFor(t, "the refusal in /readyz", 20*time.Second, func() bool {
		rd = server.Readiness{}
		return probe(t, member, "/readyz?noleader", &rd) == http.StatusServiceUnavailable
	})
	if f := failing(rd); len(f) != 1 || !strings.Contains(f[server.CheckCertificate], refuser) || !strings.Contains(f[server.CheckCertificate], "refused") {
		t.Fatalf("refused by its peer: %+v", rd)
	}
}

// logLines are the JSON log records of a node, by "request" line.
type logLines struct{ buf syncBuffer }

func (l *logLines) requests(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

// find is the one request line for method, path and peer.
func (l *logLines) find(t *testing.T, method, path, peer string) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, m := range l.requests(t) {
		if m["method"] == method && m["path"] == path && m["peer"] == peer {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d request lines for %s %s from %s, want 1:\n%s", len(found), method, path, peer, l.buf.String())
	}
	return found[0]
}

// Every request is logged once with the same fields, on the HTTPS port and
// the admin socket: a device's, an admin's, a refused one's; query strings
// and bodies (a join token) never reach the log.
func TestRequestLog(t *testing.T) {
	e := newEnv(t)
	var logs logLines
	e.App.Close()
	e.Start(server.WithLogger(slog.New(slog.NewJSONHandler(&logs.buf, nil))))
	ctx := context.Background()
	d := e.newDevice(e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	dev := e.mtlsDevice(t, d, id)
	resp, err := dev.hc.Get(e.URL() + api.PathWhoAmI + "?token=s3cret-query")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	op := server.NewRemoteAdminClient(e.URL(), adminCert(t, e, ca.RoleOperator, "olga"), e.App.Root())
	if _, err := op.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := server.NewAdminClient(e.Dir).Status(ctx); err != nil {
		t.Fatal(err)
	}
	status, _ := call(t, mtlsClient(e, nil), http.MethodGet, e.URL()+"/admin/v1/devices", nil)
	if status != http.StatusUnauthorized {
		t.Fatalf("control: anonymous admin request answered %d", status)
	}
	nc := nodeCert(t, e, "node-9")
	if status, _ := call(t, mtlsClient(e, &nc), http.MethodPost, e.URL()+"/cluster/v1/read-index", []byte("{}")); status != http.StatusOK {
		t.Fatalf("control: read-index as a node answered %d", status)
	}
	resp, err = e.HTTP.Post(e.URL()+"/cluster/v1/join", "application/json", strings.NewReader(`{"token":"gh1.s3cret-body","node_id":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	want := []struct {
		method, path, route, peer string
		status                    float64
	}{
		{"POST", api.PathChallenge, "POST " + api.PathChallenge, "anonymous", 200},
		{"GET", api.PathWhoAmI, "GET " + api.PathWhoAmI, "device:" + id.DeviceID, 200},
		{"GET", "/admin/v1/status", "GET /admin/v1/status", "admin:olga(operator)", 200},
		{"GET", "/admin/v1/devices", "GET /admin/v1/devices", "anonymous", 401},
		{"POST", "/cluster/v1/read-index", "POST /cluster/v1/read-index", "node:node-9", 200},
		{"POST", "/cluster/v1/join", "POST /cluster/v1/join", "anonymous", 403},
		{"GET", "/admin/v1/status", "GET /admin/v1/status", "local", 200}, // the socket
	}
	for _, w := range want {
		m := logs.find(t, w.method, w.path, w.peer)
		if m["route"] != w.route || m["status"] != w.status || m["level"] != "INFO" {
			t.Errorf("%s %s: %v", w.method, w.path, m)
		}
		if dur, ok := m["duration"].(float64); !ok || dur <= 0 {
			t.Errorf("%s %s: duration %v", w.method, w.path, m["duration"])
		}
		if r, _ := m["remote"].(string); w.peer != "local" && !strings.HasPrefix(r, "127.0.0.1:") {
			t.Errorf("%s %s: remote %v", w.method, w.path, m["remote"])
		}
	}
	if out := logs.buf.String(); strings.Contains(out, "s3cret") {
		t.Errorf("a query string or body reached the log:\n%s", out)
	}
}

// A body over its limit still closes the connection after the answer
// (MaxBytesReader reaches net/http's own writer through the log's wrapper).
func TestOversizedBodyClosesConnection(t *testing.T) {
	e := servertest.New(t)
	body := `{"ek_certificate":"` + strings.Repeat("A", api.MaxChallengeBody) + `"}`
	resp, err := e.HTTP.Post(e.URL()+api.PathChallenge, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
		t.Fatalf("oversized body: %s, Connection: close %v", resp.Status, resp.Close)
	}
}

// The admin API bounds bodies the same way: an oversized ekroots add over
// HTTPS is refused and its connection closed, not left open for more.
func TestOversizedAdminBodyClosesConnection(t *testing.T) {
	e := newEnv(t)
	op := adminCert(t, e, ca.RoleOperator, "olga")
	body := `{"pem":"` + strings.Repeat("A", server.MaxEKRootsBody) + `"}`
	resp, err := mtlsClient(e, &op).Post(e.URL()+"/admin/v1/ekroots", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("oversized ekroots add: %s, Connection: close %v", resp.Status, resp.Close)
	}
}
