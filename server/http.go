package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
)

// apiHandler serves the HTTPS port: the device, admin and cluster APIs
// behind admission control, the probes beside it (health.go: they must not
// be refused 429 for traffic that shares their address), every request
// logged and timed once.
func (a *Appliance) apiHandler() http.Handler {
	mux := a.apiRoutes()
	served := a.recoverPanics(mux)
	admitted := a.admit(served)
	return a.logRequests(listenerAPI, mux.ServeMux, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && (r.URL.Path == pathHealthz || r.URL.Path == pathReadyz) {
			served.ServeHTTP(w, r)
			return
		}
		admitted.ServeHTTP(w, r)
	}))
}

// deviceHandler is the HTTPS port's routes without admission control or
// request logging (in-process tests).
func (a *Appliance) deviceHandler() http.Handler { return a.recoverPanics(a.apiRoutes()) }

// apiRoutes routes the device API, the admin and cluster APIs, the
// probes and the metrics of the HTTPS port.
func (a *Appliance) apiRoutes() *routeMux {
	mux := newRouteMux()
	mux.HandleFunc("POST "+api.PathChallenge, requireJSON(func(w http.ResponseWriter, r *http.Request) {
		var req api.ChallengeRequest
		if err := a.decode(w, r, stageChallenge, api.MaxChallengeBody, &req); err != nil {
			writeProblem(w, err)
			return
		}
		resp, err := a.enroller.Challenge(r.Context(), &req)
		writeResult(w, http.StatusOK, resp, err)
	}))
	mux.HandleFunc("POST "+api.PathComplete, requireJSON(func(w http.ResponseWriter, r *http.Request) {
		var req api.CompleteRequest
		if err := a.decode(w, r, stageComplete, api.MaxCompleteBody, &req); err != nil {
			writeProblem(w, err)
			return
		}
		resp, err := a.enroller.Complete(r.Context(), &req)
		var pending *api.Pending
		if errors.As(err, &pending) {
			w.Header().Set("Retry-After", strconv.Itoa(pending.RetryAfterSeconds))
			writeJSON(w, http.StatusAccepted, pending)
			return
		}
		writeResult(w, http.StatusOK, resp, err)
	}))
	mux.HandleFunc("GET "+api.PathWhoAmI, a.whoami)
	mux.HandleFunc("GET "+api.PathConfig, a.deviceConfig)
	mux.HandleFunc("GET "+api.PathCRL, a.crl)
	mux.HandleFunc("POST "+api.PathRenewChallenge, requireJSON(a.renewChallenge))
	mux.HandleFunc("POST "+api.PathRenew, requireJSON(a.renew))
	a.attestationRoutes(mux)
	a.remoteAdminRoutes(mux)
	a.clusterRoutes(mux)
	mux.Handle("GET /metrics", a.metricsHandler())
	mux.HandleFunc("GET "+pathHealthz, a.healthz)
	mux.HandleFunc("GET "+pathReadyz, a.readyz)
	mux.HandleFunc("GET "+api.PathOpenAPI, a.serveOpenAPI)
	// step-ca's ACME API (RFC 8555) and the one read-only native route the
	// step CLI reads first (acme.go); no other step-ca route is served.
	for _, m := range []string{"GET ", "HEAD ", "POST "} {
		mux.HandleFunc(m+acme.Prefix+"/{rest...}", a.acmeRoute)
	}
	mux.HandleFunc("GET "+acme.PathProvisioners, a.acmeRoute)
	return mux
}

// recoverPanics answers a request whose handler panicked with a 500
// problem, logs the panic with its stack (no request data) and counts it,
// so a crafted input that trips a bug is seen and refused instead of
// dropping the connection. http.ErrAbortHandler is passed on: it is how a
// handler aborts a response on purpose. A handler that already began its
// answer (handlers here set Content-Type just before writing) has its
// connection dropped, as net/http would: a second answer would corrupt it.
// The writer is not wrapped here; logRequests wraps it outside, keeping
// MaxBytesReader (limitBody) and Flush working.
func (a *Appliance) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			a.enroller.metrics.panics.Inc()
			a.log.Error("panic serving a device API request", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if w.Header().Get("Content-Type") != "" {
				panic(http.ErrAbortHandler)
			}
			writeProblem(w, newProblem(http.StatusInternalServerError, api.CodeInternal, "internal error"))
		}()
		next.ServeHTTP(w, r)
	})
}

// maxPresize bounds the buffer decode allocates before the body arrives.
const maxPresize = 128 << 10

// decode reads a size-limited JSON body. A body that is too large or not
// well formed is refused and recorded as a rejected attestation.
func (a *Appliance) decode(w http.ResponseWriter, r *http.Request, stage string, limit int64, v any) error {
	// Sized from Content-Length (io.ReadAll doubling its way to a 60 KB
	// evidence body cost more than the copy), but never past maxPresize:
	// a claimed length costs the sender nothing to send.
	buf := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 0), limit, maxPresize)+bytes.MinRead))
	_, err := buf.ReadFrom(limitBody(w, r.Body, limit))
	body := buf.Bytes()
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return a.enroller.rejectRequest(r.Context(), stage, newProblem(http.StatusRequestEntityTooLarge, api.CodeTooLarge,
				fmt.Sprintf("request body exceeds %d bytes", limit)))
		}
		return a.enroller.rejectRequest(r.Context(), stage, malformed("reading body: "+err.Error()))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return a.enroller.rejectRequest(r.Context(), stage, malformed("invalid JSON: "+err.Error()))
	}
	if dec.More() {
		return a.enroller.rejectRequest(r.Context(), stage, malformed("trailing data after the JSON body"))
	}
	return nil
}

// errUnsupportedMediaType: a body not declared as the endpoint's media type.
var errUnsupportedMediaType = errors.New("unsupported request media type")

// requireJSON refuses (415) a request whose body is not declared
// application/json. Every JSON endpoint of the device, cluster and admin
// APIs is wrapped in it: nothing is parsed as JSON that its sender did not
// declare as JSON, and a browser cannot send such a request cross-origin
// without a CORS preflight, which the appliance never answers. A request
// without a body needs no Content-Type.
func requireJSON(h http.HandlerFunc) http.HandlerFunc { return requireMediaType("application/json", h) }

func requireMediaType(want string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		if mt, _, err := mime.ParseMediaType(ct); !(ct == "" && r.ContentLength == 0) && (err != nil || mt != want) {
			writeProblem(w, fmt.Errorf("%w: %s %s needs a body of type %s, got %q", errUnsupportedMediaType, r.Method, r.URL.Path, want, ct))
			return
		}
		h(w, r)
	}
}

func writeResult(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		writeProblem(w, err)
		return
	}
	writeJSON(w, status, v)
}

// unavailableRetryAfter is the Retry-After of a 503 that sets none (a
// problem's RetryAfter, if set, is used instead): about one Raft election.
const unavailableRetryAfter = "2"

func writeProblem(w http.ResponseWriter, err error) {
	p := problemFor(err)
	if p.Status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		if p.RetryAfter >= time.Second {
			w.Header().Set("Retry-After", strconv.Itoa(int(p.RetryAfter/time.Second)))
		} else {
			w.Header().Set("Retry-After", unavailableRetryAfter)
		}
	}
	w.Header().Set("Content-Type", api.ContentTypeProblem)
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Listeners, in request logs and the request-duration metric.
const (
	listenerAPI    = "https"  // the HTTPS port: device, admin, cluster APIs
	listenerSocket = "socket" // the admin unix socket
)

// routeUnmatched names requests no route took, in logs and metrics: the
// raw path is never a label, so no request can add a metric series.
const routeUnmatched = "unmatched"

// logRequests logs each request once when it ends, and times it in
// gatehouse_http_request_duration_seconds, with the same fields for every
// listener: method, route (the mux pattern that served it, or
// "unmatched"), path (no query: it could carry anything), status, duration,
// peer and remote address.
//
// peer is the identity the verified client certificate names
// (device:<id>, admin:<name>(<role>), node:<id>), "anonymous" without
// one, "local" on the admin socket. It is what the certificate claims,
// chain-verified by TLS; whether the handler admitted it (revocation, role,
// device state) is what the status says. Bodies are never logged.
//
// Probes, metric scrapes and rate-limited refusals log at debug: the first
// two are polled every few seconds, and the last would let a flood write a
// line per request (they are counted in gatehouse_refusals_unrecorded_total
// instead). Everything else logs at info.
//
// The writer is wrapped (statusWriter) to learn the status; the wrapper
// unwraps for http.ResponseController, flushes, and handlers bound bodies
// with limitBody, so net/http still closes a connection whose body was too
// large. routes is the mux behind next: a request refused before it reached
// the mux (admission control) is named by the route it would have taken.
func (a *Appliance) logRequests(listener string, routes *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			d := time.Since(start)
			status := sw.status
			if status == 0 && v == nil {
				status = http.StatusOK // net/http's answer to a handler that wrote nothing
			}
			route := r.Pattern
			if route == "" {
				_, route = routes.Handler(r)
			}
			if route == "" {
				route = routeUnmatched
			}
			a.enroller.metrics.requests.WithLabelValues(listener, route, strconv.Itoa(status)).Observe(d.Seconds())
			level := slog.LevelInfo
			switch {
			case route == "GET "+pathHealthz, route == "GET "+pathReadyz, route == "GET /metrics", status == http.StatusTooManyRequests:
				level = slog.LevelDebug
			}
			attrs := []slog.Attr{
				slog.String("method", truncate(r.Method, 16)),
				slog.String("route", route),
				slog.String("path", truncate(r.URL.Path, 256)),
				slog.Int("status", status),
				slog.Duration("duration", d),
				slog.String("peer", a.peerOf(listener, r)),
				slog.String("remote", r.RemoteAddr),
			}
			if v != nil {
				attrs = append(attrs, slog.Bool("aborted", true))
			}
			a.log.LogAttrs(context.Background(), level, "request", attrs...)
			if v != nil {
				panic(v) // recoverPanics answered what it could; this is net/http's to handle
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

// peerOf names who sent r, for the request log (see logRequests).
func (a *Appliance) peerOf(listener string, r *http.Request) string {
	if listener == listenerSocket {
		return "local"
	}
	leaf := verifiedLeaf(r, time.Now())
	if leaf == nil {
		return "anonymous"
	}
	id, err := ca.ParseIdentity(leaf, a.cfg.TrustDomain)
	if err != nil {
		return "unidentified:" + leaf.SerialNumber.Text(16)
	}
	if id.Path == ca.PathAdmin {
		return adminIdentity{Role: id.Role, Name: id.ID}.String()
	}
	return string(id.Path) + ":" + id.ID
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// statusWriter records the status a handler answers with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && code >= 200 { // 1xx are interim
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush keeps streaming answers streaming through the wrapper.
func (s *statusWriter) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	_ = http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// limitBody is http.MaxBytesReader on the connection's own writer. Past
// the limit, MaxBytesReader tells net/http to close the connection after
// the answer, through an unexported method that no wrapper (statusWriter)
// can forward; so it is given the innermost writer.
func limitBody(w http.ResponseWriter, body io.ReadCloser, n int64) io.ReadCloser {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	return http.MaxBytesReader(w, body, n)
}
