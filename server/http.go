package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"

	"github.com/gatehouse-dev/gatehouse/api"
)

// deviceHandler serves the device API on the HTTPS port.
func (a *Appliance) deviceHandler() http.Handler {
	mux := a.newRouteMux()
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
	a.remoteAdminRoutes(mux)
	a.clusterRoutes(mux)
	mux.Handle("GET /metrics", a.metricsHandler())
	mux.HandleFunc("GET "+api.PathOpenAPI, a.serveOpenAPI)
	return a.recoverPanics(mux)
}

// recoverPanics answers a request whose handler panicked with a 500
// problem, logs the panic with its stack (no request data) and counts it,
// so a crafted input that trips a bug is seen and refused instead of
// dropping the connection. http.ErrAbortHandler is passed on: it is how a
// handler aborts a response on purpose. A handler that already began its
// answer (handlers here set Content-Type just before writing) has its
// connection dropped, as net/http would: a second answer would corrupt it.
// The writer is not wrapped, so MaxBytesReader and Flush keep working.
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

// decode reads a size-limited JSON body. A body that is too large or not
// well formed is refused and recorded as a rejected attestation.
func (a *Appliance) decode(w http.ResponseWriter, r *http.Request, stage string, limit int64, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
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

func writeProblem(w http.ResponseWriter, err error) {
	p := problemFor(err)
	w.Header().Set("Content-Type", api.ContentTypeProblem)
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
