package console_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/console"
	"github.com/gatehouse-dev/gatehouse/server"
)

// fakeAdmin stands in for the cluster's admin API in the login tests (the
// browser test runs against a live node): it answers the reads the fleet
// page makes and counts the lifecycle operations that reach it.
type fakeAdmin struct {
	ops atomic.Int32
}

func (f *fakeAdmin) start(t *testing.T) *server.AdminClient {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(server.Status{NodeID: "n1", Leader: true, Healthy: true})
	})
	mux.HandleFunc("GET /admin/v1/devices", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("[]")) })
	mux.HandleFunc("GET /admin/v1/attestations", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("[]")) })
	mux.HandleFunc("GET /admin/v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(cluster.FleetCounts{ByState: map[string]int{}, ByGroup: map[string]int{}, Hours: []cluster.FleetHour{}})
	})
	mux.HandleFunc("GET /admin/v1/policy/history", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("[]")) })
	mux.HandleFunc("POST /admin/v1/devices/{id}/{op}", func(w http.ResponseWriter, r *http.Request) {
		f.ops.Add(1)
		json.NewEncoder(w).Encode(cluster.Device{ID: r.PathValue("id"), Status: cluster.DeviceActive})
	})
	ts := httptest.NewTLSServer(mux)
	t.Cleanup(ts.Close)
	return server.NewRemoteAdminClient(ts.URL, tls.Certificate{}, ts.Certificate())
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type rig struct {
	t     *testing.T
	s     *console.Server
	base  string // http://127.0.0.1:PORT
	clock *clock
	fake  *fakeAdmin
	hc    *http.Client // follows no redirects, keeps no cookies
}

func newRig(t *testing.T) *rig {
	f := &fakeAdmin{}
	c := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	s := console.New(f.start(t), console.Identity{Role: ca.RoleOperator, Name: "olga"}, nil, console.WithClock(c.now))
	ln, err := console.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go s.Serve(ln)
	// Serve binds asynchronously; Bind now so LoginURL names the port.
	s.Bind(ln.Addr())
	return &rig{t: t, s: s, base: "http://" + ln.Addr().String(), clock: c, fake: f, hc: &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}}
}

func (r *rig) do(method, path, host string, cookie *http.Cookie, form url.Values, hdr map[string]string) *http.Response {
	r.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, r.base+path, body)
	if err != nil {
		r.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if host != "" {
		req.Host = host
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// login uses a fresh login URL and returns the session cookie.
func (r *rig) login() *http.Cookie {
	r.t.Helper()
	u, err := url.Parse(r.s.LoginURL())
	if err != nil {
		r.t.Fatal(err)
	}
	resp := r.do("GET", u.RequestURI(), "", nil, nil, nil)
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		r.t.Fatalf("login: %s, cookies %v", resp.Status, resp.Cookies())
	}
	return resp.Cookies()[0]
}

// csrf reads the session's CSRF token from the policies page's form.
func (r *rig) csrf(cookie *http.Cookie) string {
	r.t.Helper()
	req, _ := http.NewRequest("GET", r.base+"/policies", nil)
	req.AddCookie(cookie)
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`).FindSubmatch(b)
	if m == nil {
		r.t.Fatalf("no CSRF token on the page (%s): %s", resp.Status, b)
	}
	return string(m[1])
}

func TestLoginURLIsLoopbackAndRandom(t *testing.T) {
	r := newRig(t)
	a, b := r.s.LoginURL(), r.s.LoginURL()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(r.base) + `/login\?token=[0-9a-f]{64}$`)
	if !re.MatchString(a) || !re.MatchString(b) || a == b {
		t.Fatalf("login URLs %q %q", a, b)
	}
}

func TestLoginTokenSingleUse(t *testing.T) {
	r := newRig(t)
	u, _ := url.Parse(r.s.LoginURL())
	first := r.do("GET", u.RequestURI(), "", nil, nil, nil)
	if first.StatusCode != http.StatusSeeOther || first.Header.Get("Location") != "/" {
		t.Fatalf("first use: %s", first.Status)
	}
	again := r.do("GET", u.RequestURI(), "", nil, nil, nil)
	if again.StatusCode != http.StatusUnauthorized || len(again.Cookies()) != 0 {
		t.Fatalf("second use: %s, cookies %v", again.Status, again.Cookies())
	}
	// Neither a made-up token nor none at all logs in.
	for _, q := range []string{"/login?token=" + strings.Repeat("0", 64), "/login", "/login?token="} {
		if resp := r.do("GET", q, "", nil, nil, nil); resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
			t.Errorf("%s: %s", q, resp.Status)
		}
	}
}

func TestLoginTokenExpires(t *testing.T) {
	r := newRig(t)
	u, _ := url.Parse(r.s.LoginURL())
	r.clock.advance(console.DefaultLoginTTL)
	if resp := r.do("GET", u.RequestURI(), "", nil, nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("expired token: %s", resp.Status)
	}
	// Positive control: a token used just before its expiry works.
	u, _ = url.Parse(r.s.LoginURL())
	r.clock.advance(console.DefaultLoginTTL - time.Second)
	if resp := r.do("GET", u.RequestURI(), "", nil, nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("token within its lifetime: %s", resp.Status)
	}
}

func TestSessionCookieFlags(t *testing.T) {
	r := newRig(t)
	u, _ := url.Parse(r.s.LoginURL())
	c := r.login()
	if c.Name != r.s.CookieName() || !strings.HasSuffix(c.Name, r.base[strings.LastIndex(r.base, ":")+1:]) || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie %+v", c)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(c.Value) || strings.Contains(u.RawQuery, c.Value) {
		t.Fatalf("cookie value %q is not a fresh 256-bit secret", c.Value)
	}
}

func TestSessionRequired(t *testing.T) {
	r := newRig(t)
	if resp := r.do("GET", "/", "", nil, nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no cookie: %s", resp.Status)
	}
	forged := &http.Cookie{Name: r.s.CookieName(), Value: strings.Repeat("a", 64)}
	if resp := r.do("GET", "/", "", forged, nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged cookie: %s", resp.Status)
	}
	c := r.login()
	if resp := r.do("GET", "/", "", c, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("logged in: %s", resp.Status)
	}
	r.clock.advance(console.DefaultSessionTTL)
	if resp := r.do("GET", "/", "", c, nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("expired session: %s", resp.Status)
	}
}

func TestCSRF(t *testing.T) {
	r := newRig(t)
	c := r.login()
	tok := r.csrf(c)
	other := r.csrf(r.login()) // another session's token
	if other == tok {
		t.Fatal("two sessions share a CSRF token")
	}
	post := func(form url.Values, hdr map[string]string) int {
		return r.do("POST", "/devices/dev-1/quarantine", "", c, form, hdr).StatusCode
	}
	attacks := []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no token", url.Values{"reason": {"x"}}, nil},
		{"empty token", url.Values{"reason": {"x"}, "csrf": {""}}, nil},
		{"wrong token", url.Values{"reason": {"x"}, "csrf": {strings.Repeat("0", 64)}}, nil},
		{"another session's token", url.Values{"reason": {"x"}, "csrf": {other}}, nil},
		{"token in the query only", url.Values{"reason": {"x"}}, nil},
		{"right token, foreign Origin", url.Values{"reason": {"x"}, "csrf": {tok}}, map[string]string{"Origin": "http://evil.example"}},
	}
	for _, a := range attacks {
		path := "/devices/dev-1/quarantine"
		if a.name == "token in the query only" {
			path += "?csrf=" + tok
		}
		if got := r.do("POST", path, "", c, a.form, a.hdr).StatusCode; got != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", a.name, got)
		}
	}
	// A GET cannot change state.
	if got := r.do("GET", "/devices/dev-1/quarantine?reason=x&csrf="+tok, "", c, nil, nil).StatusCode; got == http.StatusSeeOther {
		t.Errorf("GET performed the action")
	}
	if n := r.fake.ops.Load(); n != 0 {
		t.Fatalf("%d refused requests reached the cluster", n)
	}
	// Positive control: the session's own token, from the console's origin.
	if got := post(url.Values{"reason": {"x"}, "csrf": {tok}}, map[string]string{"Origin": r.base}); got != http.StatusSeeOther {
		t.Fatalf("legitimate POST: %d", got)
	}
	if n := r.fake.ops.Load(); n != 1 {
		t.Fatalf("legitimate POST: %d operations reached the cluster", n)
	}
}

func TestLogout(t *testing.T) {
	r := newRig(t)
	c := r.login()
	tok := r.csrf(c)
	// Without the CSRF token a page cannot log the user out.
	if got := r.do("POST", "/logout", "", c, url.Values{}, nil).StatusCode; got != http.StatusForbidden {
		t.Fatalf("logout without CSRF: %d", got)
	}
	if got := r.do("GET", "/", "", c, nil, nil).StatusCode; got != http.StatusOK {
		t.Fatalf("session after a refused logout: %d", got)
	}
	resp := r.do("POST", "/logout", "", c, url.Values{"csrf": {tok}}, nil)
	if resp.StatusCode != http.StatusOK || len(resp.Cookies()) != 1 || resp.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("logout: %s %v", resp.Status, resp.Cookies())
	}
	if got := r.do("GET", "/", "", c, nil, nil).StatusCode; got != http.StatusUnauthorized {
		t.Fatalf("the old cookie after logout: %d", got)
	}
}

func TestHostCheck(t *testing.T) {
	r := newRig(t)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(r.base, "http://"))
	u, _ := url.Parse(r.s.LoginURL())
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1", "127.0.0.1:1", "localhost.evil.example:" + port, "127.0.0.2:" + port} {
		if resp := r.do("GET", u.RequestURI(), host, nil, nil, nil); resp.StatusCode != http.StatusMisdirectedRequest || len(resp.Cookies()) != 0 {
			t.Errorf("Host %q: %s", host, resp.Status)
		}
	}
	// The refused requests did not use up the token; under localhost:PORT it logs in.
	resp := r.do("GET", u.RequestURI(), "localhost:"+port, nil, nil, nil)
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		t.Fatalf("localhost: %s", resp.Status)
	}
	c := resp.Cookies()[0]
	if resp := r.do("GET", "/", "evil.example:"+port, c, nil, nil); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("rebound page with a session: %s", resp.Status)
	}
	if resp := r.do("GET", "/", "", c, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("own host: %s", resp.Status)
	}
}

func TestNoCORSAndOnlyGetPost(t *testing.T) {
	r := newRig(t)
	c := r.login()
	for _, m := range []string{"OPTIONS", "PUT", "DELETE", "PATCH"} {
		resp := r.do(m, "/devices/dev-1/quarantine", "", c, nil, map[string]string{"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: %s", m, resp.Status)
		}
		for k := range resp.Header {
			if strings.HasPrefix(strings.ToLower(k), "access-control-") {
				t.Errorf("%s: CORS header %s", m, k)
			}
		}
	}
	resp := r.do("GET", "/", "", c, nil, map[string]string{"Origin": "http://evil.example"})
	if resp.Header.Get("Access-Control-Allow-Origin") != "" || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("headers %v", resp.Header)
	}
}

func TestListenLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0", "127.0.0.1"} {
		ln, err := console.Listen(addr)
		if err == nil {
			ln.Close()
			t.Errorf("%s: listening", addr)
			continue
		}
		if addr != "127.0.0.1" && !errors.Is(err, console.ErrNotLoopback) {
			t.Errorf("%s: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		ln, err := console.Listen(addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if !strings.HasPrefix(ln.Addr().String(), "127.0.0.1:") {
			t.Errorf("%s: listens on %s", addr, ln.Addr())
		}
		ln.Close()
	}
}
