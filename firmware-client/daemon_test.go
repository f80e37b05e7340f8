package fwclient

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
)

// TestDaemonRetryFullJitter: the agent's n-th retry waits a uniform time in
// [0, min(1h, 30s·2ⁿ)) from the injected source, not a fixed doubling that
// a whole fleet would share.
func TestDaemonRetryFullJitter(t *testing.T) {
	var windows []time.Duration
	d := &Daemon{}
	d.Backoff = DefaultBackoff
	d.Backoff.Rand = func(n int64) int64 { windows = append(windows, time.Duration(n)); return n / 3 }
	for n := 0; n < 10; n++ {
		got := d.retryDelay(n)
		want := min(30*time.Second<<n, time.Hour)
		if windows[n] != want {
			t.Errorf("retry %d drew from [0, %v), want [0, %v)", n, windows[n], want)
		}
		if got != want/3 {
			t.Errorf("retry %d waits %v, want the drawn %v", n, got, want/3)
		}
	}

	// The zero Daemon uses the default policy with real randomness: a fleet
	// of agents at their 5th failure spreads over the window.
	var zero Daemon
	seen := map[time.Duration]bool{}
	for i := 0; i < 200; i++ {
		w := zero.retryDelay(5)
		if w < 0 || w >= 16*time.Minute {
			t.Fatalf("retry 5 waits %v, outside [0, 16m)", w)
		}
		seen[w.Truncate(time.Minute)] = true
	}
	if len(seen) < 12 {
		t.Errorf("200 agents' 5th retries fell in only %d of 16 minutes", len(seen))
	}
}

// TestDaemonHonoursRetryAfter: a 429 or 503 problem's Retry-After is read
// from the answer, and the agent waits at least that long even when its
// jittered backoff drew less; other failures keep the backoff's wait.
func TestDaemonHonoursRetryAfter(t *testing.T) {
	answer := func(status int, retryAfter string) error {
		h := http.Header{"Content-Type": {api.ContentTypeProblem}}
		if retryAfter != "" {
			h.Set("Retry-After", retryAfter)
		}
		body := fmt.Sprintf(`{"type":"x","title":"t","status":%d,"code":"%s"}`, status, api.CodeUnavailable)
		return decodeResponse(&http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}, nil)
	}
	d := &Daemon{}
	d.Backoff = DefaultBackoff
	d.Backoff.Rand = func(int64) int64 { return int64(time.Second) } // the backoff draws 1s

	if got := d.failureDelay(0, answer(http.StatusServiceUnavailable, "7")); got != 7*time.Second {
		t.Errorf("503 with Retry-After 7: waits %v, want 7s", got)
	}
	if got := d.failureDelay(0, fmt.Errorf("enroll: %w", answer(http.StatusTooManyRequests, "3"))); got != 3*time.Second {
		t.Errorf("wrapped 429 with Retry-After 3: waits %v, want 3s", got)
	}
	if got := d.failureDelay(0, answer(http.StatusServiceUnavailable, "")); got != time.Second {
		t.Errorf("503 without Retry-After: waits %v, want the backoff's 1s", got)
	}
	if got := d.failureDelay(0, answer(http.StatusTooManyRequests, "0")); got != time.Second {
		t.Errorf("Retry-After 0: waits %v, want the backoff's 1s", got)
	}
	d.Backoff.Rand = func(int64) int64 { return int64(20 * time.Second) }
	if got := d.failureDelay(0, answer(http.StatusServiceUnavailable, "2")); got != 20*time.Second {
		t.Errorf("backoff 20s, Retry-After 2: waits %v, want 20s", got)
	}
	if got := d.failureDelay(0, io.ErrUnexpectedEOF); got != 20*time.Second {
		t.Errorf("a transport failure: waits %v, want the backoff's 20s", got)
	}
}
