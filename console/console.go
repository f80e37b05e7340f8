// Package console serves the Gatehouse web console: fleet, devices,
// attestations, audit log and policies for security teams, and the
// approval queue and lifecycle actions for operators.
//
// The console is an admin API client, not a node: it holds one admin
// certificate (operator or auditor) and reaches the cluster only through
// server.AdminClient, so every action is authorised by the cluster's own
// route roles. Hiding an operator action from an auditor is a courtesy;
// the cluster refuses the request all the same, and the console passes
// that refusal (403 forbidden) through.
//
// Security guarantees, for a console on loopback:
//   - It listens on loopback addresses only (Listen refuses others): the
//     pages travel as plain HTTP, so they must not leave the machine. Reach
//     it from elsewhere through an SSH tunnel.
//   - A browser gets in only with the one-time login URL printed at start
//     (LoginURL): 256 random bits, usable once, expiring after LoginTTL. It
//     is exchanged for a session cookie (256 random bits, HttpOnly,
//     SameSite=Strict, Path=/) that expires after SessionTTL.
//   - Every state-changing request is a POST carrying the session's CSRF
//     token, and, when the browser sends one, an Origin of the console.
//   - The Host header must name the console's own address (127.0.0.1:PORT,
//     localhost:PORT or [::1]:PORT): a DNS-rebinding page cannot reach it
//     under another name. No CORS headers are ever sent.
//
// Non-guarantees: anyone who can read the login URL before it is used
// (the terminal, the process list of a browser started with it) or the
// session cookie can act with the console's certificate; other users of
// the same machine can connect to the port (they still need a token).
package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/server"
)

// Defaults of the login token's and the session's lifetimes.
const (
	DefaultLoginTTL   = 5 * time.Minute
	DefaultSessionTTL = 12 * time.Hour
	csrfField         = "csrf"
)

// ErrNotLoopback is returned by Listen for an address that is not on
// loopback.
var ErrNotLoopback = errors.New("the console listens on loopback only (127.0.0.1, ::1, localhost); reach it from elsewhere through an SSH tunnel")

// Identity is who the console acts as: its admin certificate's role
// (ca.RoleOperator or ca.RoleAuditor) and name.
type Identity struct {
	Role, Name string
}

// Server is one console.
type Server struct {
	client *server.AdminClient
	id     Identity
	root   *x509.Certificate // the appliance root: audit verification anchors on it
	now    func() time.Time

	loginTTL, sessionTTL time.Duration

	mu       sync.Mutex
	addr     string               // host:port it serves on, once bound
	tokens   map[string]time.Time // sha256(login token) → expiry
	sessions map[string]*session  // sha256(cookie) → session
	pages    *pages
}

type session struct {
	csrf    string
	expires time.Time
}

// Option configures a Server.
type Option func(*Server)

// WithClock sets the clock tokens and sessions expire by.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithLoginTTL sets how long a login URL stays usable.
func WithLoginTTL(d time.Duration) Option { return func(s *Server) { s.loginTTL = d } }

// WithSessionTTL sets how long a session lasts.
func WithSessionTTL(d time.Duration) Option { return func(s *Server) { s.sessionTTL = d } }

// New returns a console acting as id through c. root is the appliance root
// certificate the audit key must chain to when verifying the audit log.
func New(c *server.AdminClient, id Identity, root *x509.Certificate, opts ...Option) *Server {
	s := &Server{client: c, id: id, root: root, now: time.Now,
		loginTTL: DefaultLoginTTL, sessionTTL: DefaultSessionTTL,
		tokens: map[string]time.Time{}, sessions: map[string]*session{}}
	for _, o := range opts {
		o(s)
	}
	s.pages = mustPages()
	return s
}

// Listen opens addr for the console, refusing any address that is not on
// loopback (ErrNotLoopback). "localhost" is resolved to 127.0.0.1.
func Listen(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("console address %q: %w", addr, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%w: %q", ErrNotLoopback, addr)
	}
	return net.Listen("tcp", net.JoinHostPort(ip.String(), port))
}

// Serve serves the console on ln (from Listen) until it is closed.
func (s *Server) Serve(ln net.Listener) error {
	s.Bind(ln.Addr())
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

// Bind records the address the console is reached at, which the Host
// check admits and LoginURL names. Serve calls it.
func (s *Server) Bind(addr net.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addr = addr.String()
}

// URL is the console's base URL, http://127.0.0.1:PORT.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "http://" + s.addr
}

// LoginURL mints a one-time login token and returns the URL that uses it.
func (s *Server) LoginURL() string {
	tok := random()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, exp := range s.tokens { // expired tokens are useless: drop them
		if !now.Before(exp) {
			delete(s.tokens, k)
		}
	}
	s.tokens[digest(tok)] = now.Add(s.loginTTL)
	return "http://" + s.addr + "/login?token=" + tok
}

func random() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// digest keys the maps, so a timing difference in a map lookup leaks
// nothing about a token.
func digest(s string) string {
	h := sha256.Sum256([]byte(s))
	return string(h[:])
}

// Handler is the console's HTTP handler: the Host check, login, the
// session check and, on POST, the CSRF check before every page.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.routes(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: under no-referrer Chromium sends
		// "Origin: null" with form posts, which the Origin check refuses.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if !s.hostAllowed(r.Host) {
			http.Error(w, "unknown host: open the console at the URL it printed", http.StatusMisdirectedRequest)
			return
		}
		if r.URL.Path == "/login" {
			s.login(w, r)
			return
		}
		if r.URL.Path == "/static/style.css" {
			mux.ServeHTTP(w, r)
			return
		}
		sess := s.session(r)
		if sess == nil {
			http.Error(w, "not logged in: open the login URL the console printed (or restart it for a new one)", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if r.Method != http.MethodPost {
				http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
				return
			}
			if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
				http.Error(w, "cross-origin request refused", http.StatusForbidden)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, 16<<20)
			if err := r.ParseMultipartForm(16 << 20); err != nil && !errors.Is(err, http.ErrNotMultipart) {
				http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostFormValue(csrfField)), []byte(sess.csrf)) != 1 {
				http.Error(w, "missing or wrong CSRF token: reload the page and try again", http.StatusForbidden)
				return
			}
		}
		if r.URL.Path == "/logout" && r.Method == http.MethodPost {
			s.logout(w, r)
			return
		}
		mux.ServeHTTP(w, r.WithContext(withSession(r.Context(), sess)))
	})
}

// hostAllowed admits only the console's own address under the names a
// loopback browser uses for it.
func (s *Server) hostAllowed(host string) bool {
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	for _, name := range []string{"127.0.0.1", "localhost", "[::1]"} {
		if host == name+":"+port {
			return true
		}
	}
	return false
}

// CookieName is the session cookie's name. It names the port: browsers
// share cookies between the ports of a host, and two consoles (say an
// auditor's and an operator's) must not overwrite each other's session.
func (s *Server) CookieName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, port, _ := net.SplitHostPort(s.addr)
	return "gatehouse_console_" + port
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	key := digest(r.URL.Query().Get("token"))
	s.mu.Lock()
	exp, ok := s.tokens[key]
	delete(s.tokens, key) // single use, also when it has expired
	now := s.now()
	var cookie string
	if ok && now.Before(exp) {
		cookie = random()
		s.sessions[digest(cookie)] = &session{csrf: random(), expires: now.Add(s.sessionTTL)}
	}
	s.mu.Unlock()
	if cookie == "" {
		http.Error(w, "this login link is unknown, used or expired: restart the console for a new one", http.StatusUnauthorized)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: s.CookieName(), Value: cookie, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(s.sessionTTL / time.Second)})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout ends the session of the request (its CSRF token was checked).
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(s.CookieName()); err == nil {
		s.mu.Lock()
		delete(s.sessions, digest(c.Value))
		s.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: s.CookieName(), Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("logged out: restart the console for a new login URL\n"))
}

func (s *Server) session(r *http.Request) *session {
	c, err := r.Cookie(s.CookieName())
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := digest(c.Value)
	sess, ok := s.sessions[key]
	if !ok {
		return nil
	}
	if !s.now().Before(sess.expires) {
		delete(s.sessions, key)
		return nil
	}
	return sess
}
