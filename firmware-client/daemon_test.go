package fwclient

import (
	"errors"
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
// from the answer and followed, never undercut, plus a jitter drawn from
// [0, 1s + Retry-After/10) (not the backoff's window: the server's schedule
// spreads an overloaded fleet, the jitter spreads each second of it);
// other failures keep the backoff's wait.
func TestDaemonHonoursRetryAfter(t *testing.T) {
	answer := func(status int, retryAfter string) error {
		h := http.Header{"Content-Type": {api.ContentTypeProblem}}
		if retryAfter != "" {
			h.Set("Retry-After", retryAfter)
		}
		body := fmt.Sprintf(`{"type":"x","title":"t","status":%d,"code":"%s"}`, status, api.CodeUnavailable)
		return decodeResponse(&http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}, nil)
	}
	var windows []time.Duration
	d := &Daemon{}
	d.Backoff = DefaultBackoff
	draw := func(frac float64) {
		d.Backoff.Rand = func(n int64) int64 { windows = append(windows, time.Duration(n)); return int64(float64(n) * frac) }
	}
	draw(0)
	for _, tc := range []struct {
		err    error
		n      int
		window time.Duration
	}{
		{answer(http.StatusServiceUnavailable, "7"), 0, 1700 * time.Millisecond},
		{fmt.Errorf("enroll: %w", answer(http.StatusTooManyRequests, "3")), 4, 1300 * time.Millisecond},
		{answer(http.StatusServiceUnavailable, "60"), 9, 7 * time.Second},
	} {
		p := tc.err
		for errors.Unwrap(p) != nil {
			p = errors.Unwrap(p)
		}
		ra := p.(*api.Problem).RetryAfter
		for _, frac := range []float64{0, 0.5, 0.999} {
			windows = nil
			draw(frac)
			got := d.failureDelay(tc.n, tc.err)
			if len(windows) != 1 || windows[0] != tc.window {
				t.Fatalf("%v: jitter drawn from %v, want one draw from [0, %v)", tc.err, windows, tc.window)
			}
			if want := ra + time.Duration(float64(tc.window)*frac); got != want || got < ra {
				t.Errorf("%v, failure %d, draw %.3f: waits %v, want %v", tc.err, tc.n, frac, got, want)
			}
		}
	}
	d.Backoff.Rand = func(int64) int64 { return int64(time.Second) } // the backoff draws 1s
	if got := d.failureDelay(0, answer(http.StatusServiceUnavailable, "")); got != time.Second {
		t.Errorf("503 without Retry-After: waits %v, want the backoff's 1s", got)
	}
	if got := d.failureDelay(0, answer(http.StatusTooManyRequests, "0")); got != time.Second {
		t.Errorf("Retry-After 0: waits %v, want the backoff's 1s", got)
	}
	d.Backoff.Rand = func(int64) int64 { return int64(20 * time.Second) }
	if got := d.failureDelay(0, io.ErrUnexpectedEOF); got != 20*time.Second {
		t.Errorf("a transport failure: waits %v, want the backoff's 20s", got)
	}

	// With real randomness, 200 devices told the same 2 s spread over
	// [2s, 3.2s) rather than all coming back at 2 s.
	var zero Daemon
	seen := map[time.Duration]bool{}
	for range 200 {
		w := zero.failureDelay(0, answer(http.StatusServiceUnavailable, "2"))
		if w < 2*time.Second || w >= 3200*time.Millisecond {
			t.Fatalf("Retry-After 2 with jitter: waits %v, outside [2s, 3.2s)", w)
		}
		seen[w.Truncate(100*time.Millisecond)] = true
	}
	if len(seen) < 10 {
		t.Errorf("200 devices told Retry-After 2 came back in only %d of 12 tenths of a second", len(seen))
	}
}
