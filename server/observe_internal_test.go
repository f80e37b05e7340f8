package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The request log's writer wrapper keeps what recoverPanics and streaming
// handlers rely on: a panic is answered 500 and logged with that status,
// an aborted answer is logged and still aborts, and Flush reaches the
// connection both as http.Flusher and through http.ResponseController.
func TestRequestLogWrapper(t *testing.T) {
	var buf bytes.Buffer
	a := &Appliance{log: slog.New(slog.NewJSONHandler(&buf, nil)), enroller: &Enroller{metrics: newEnrollMetrics()}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boom", func(http.ResponseWriter, *http.Request) { panic("boom") })
	mux.HandleFunc("GET /abort", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("a"))
		w.(http.Flusher).Flush()
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("ResponseController.Flush: %v", err)
		}
	})
	h := a.logRequests(listenerAPI, mux, a.recoverPanics(mux))
	last := func() map[string]any {
		var m map[string]any
		lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
		if err := json.Unmarshal(lines[len(lines)-1], &m); err != nil {
			t.Fatal(err)
		}
		return m
	}

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/boom", nil))
	if m := last(); rec.Code != 500 || m["msg"] != "request" || m["status"] != float64(500) || m["route"] != "GET /boom" {
		t.Errorf("panic: %d, logged %v", rec.Code, m)
	}

	rec = httptest.NewRecorder()
	func() {
		defer func() {
			if v := recover(); v != http.ErrAbortHandler {
				t.Errorf("abort was not passed on: %v", v)
			}
		}()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/abort", nil))
	}()
	if m := last(); m["msg"] != "request" || m["aborted"] != true || m["route"] != "GET /abort" {
		t.Errorf("abort logged %v", m)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/stream", nil))
	if m := last(); !rec.Flushed || m["status"] != float64(200) {
		t.Errorf("stream: flushed %v, logged %v", rec.Flushed, m)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x/../../etc?q=1", nil))
	if m := last(); m["route"] != routeUnmatched || m["peer"] != "anonymous" {
		t.Errorf("unmatched: logged %v", m)
	}
}
