package console_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/console"
	"github.com/gatehouse-dev/gatehouse/server"
)

// The audit page asks the cluster for one filtered page
// (GET /admin/v1/audit/entries), passes its filters and cursor through,
// links the next page, and never reads the whole export to list.
func TestAuditPageQueriesTheCluster(t *testing.T) {
	var mu sync.Mutex
	var queries []url.Values
	exports := 0
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/audit/entries", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.Query())
		mu.Unlock()
		q := r.URL.Query()
		if q.Get("cursor") == "" {
			q.Set("cursor", "next-page-cursor")
			w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
		}
		json.NewEncoder(w).Encode([]cluster.AuditEntry{{Seq: 7, Time: time.Date(2026, 11, 29, 11, 0, 0, 0, time.UTC), Type: cluster.AuditDeviceState,
			Actor: "admin:olga(operator)", Subject: "dev-1", Hash: strings.Repeat("a", 64)}})
	})
	mux.HandleFunc("GET /admin/v1/audit", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		exports++
		mu.Unlock()
		http.Error(w, "the list must not export", http.StatusTeapot)
	})
	ts := httptest.NewTLSServer(mux)
	t.Cleanup(ts.Close)
	s := console.New(server.NewRemoteAdminClient(ts.URL, tls.Certificate{}, ts.Certificate()), console.Identity{Role: ca.RoleAuditor, Name: "audrey"}, nil)
	ln, err := console.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go s.Serve(ln)
	s.Bind(ln.Addr())
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 10 * time.Second}
	resp, err := hc.Get(s.LoginURL())
	if err != nil || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %v", err)
	}
	resp.Body.Close()
	cookie := resp.Cookies()[0]
	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+path, nil)
		req.AddCookie(cookie)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	status, body := get("/audit?type=device.state&actor=olga&device=dev-1&since=2026-11-01T00:00:00Z&until=2026-11-30T00:00:00Z")
	if status != http.StatusOK || !strings.Contains(body, "admin:olga(operator)") || !strings.Contains(body, `id="next"`) {
		t.Fatalf("audit page: %d\n%s", status, body)
	}
	mu.Lock()
	q := queries[len(queries)-1]
	mu.Unlock()
	want := map[string]string{"type": "device.state", "actor": "olga", "device": "dev-1", "since": "2026-11-01T00:00:00Z", "until": "2026-11-30T00:00:00Z", "limit": "50", "cursor": ""}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("the cluster was asked %s=%q, want %q (%v)", k, q.Get(k), v, q)
		}
	}
	status, body = get("/audit?actor=olga&cursor=next-page-cursor")
	if status != http.StatusOK || strings.Contains(body, `id="next"`) {
		t.Fatalf("last page: %d, a next link: %v", status, strings.Contains(body, `id="next"`))
	}
	mu.Lock()
	if c := queries[len(queries)-1].Get("cursor"); c != "next-page-cursor" {
		t.Errorf("the cursor reached the cluster as %q", c)
	}
	mu.Unlock()
	if status, _ := get("/audit?since=yesterday"); status != http.StatusBadRequest {
		t.Errorf("a bad since: %d", status)
	}
	mu.Lock()
	defer mu.Unlock()
	if exports != 0 {
		t.Errorf("the audit page read the export %d times", exports)
	}
}
