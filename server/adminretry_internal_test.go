package server

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/internal/backoff"
)

// The admin client retries an import batch on 503 and on a refused
// connection, with its backoff, up to its bound; any other answer is final.
func TestAdminClientRetriesImport(t *testing.T) {
	var calls atomic.Int32
	var status atomic.Int32 // answered before the first 200
	failures := int32(3)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= failures {
			writeProblem(w, newProblem(int(status.Load()), api.CodeUnavailable, "no leader"))
			return
		}
		writeJSON(w, http.StatusOK, ImportResult{Accepted: []ImportedRow{{Row: 2}}})
	}))
	defer srv.Close()
	var waits []time.Duration
	pol := RetryPolicy{Attempts: 5, Backoff: backoff.Policy{Base: time.Millisecond, Cap: 4 * time.Millisecond}}
	pol.Notify = func(_ error, d time.Duration) { waits = append(waits, d) }
	c := &AdminClient{base: srv.URL, hc: srv.Client(), Retry: &pol}
	ctx := context.Background()
	rows := []ImportRow{{Row: 2, EKPublicSHA256: "ab", Group: "g"}}

	status.Store(http.StatusServiceUnavailable)
	res, err := c.ImportEnrollments(ctx, "t", "f", rows, false)
	if err != nil || len(res.Accepted) != 1 || calls.Load() != 4 || len(waits) != 3 {
		t.Fatalf("after three 503s: %+v %v, %d calls, waits %v", res, err, calls.Load(), waits)
	}
	for i, w := range waits {
		if w < 0 || w >= pol.Backoff.Ceiling(i) {
			t.Errorf("wait %d is %v, outside [0, %v)", i, w, pol.Backoff.Ceiling(i))
		}
	}

	// Bounded: more 503s than attempts is the last 503.
	calls.Store(0)
	failures = 100
	if _, err := c.ImportEnrollments(ctx, "t", "f", rows, false); err == nil || calls.Load() != 6 {
		t.Fatalf("endless 503s: %v after %d calls, want 6", err, calls.Load())
	}
	// Not retried: an answer other than 503.
	for _, s := range []int{http.StatusBadRequest, http.StatusInternalServerError, http.StatusForbidden} {
		calls.Store(0)
		status.Store(int32(s))
		if _, err := c.ImportEnrollments(ctx, "t", "f", rows, false); err == nil || calls.Load() != 1 {
			t.Fatalf("status %d: %v after %d calls, want 1", s, err, calls.Load())
		}
	}

	// A refused connection (the node restarting) is retried.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	waits = nil
	down := &AdminClient{base: "http://" + addr, hc: &http.Client{}, Retry: &pol}
	if _, err := down.ImportEnrollments(ctx, "t", "f", rows, false); err == nil || len(waits) != pol.Attempts {
		t.Fatalf("refused connections: %v after %d retries, want %d", err, len(waits), pol.Attempts)
	}
}
