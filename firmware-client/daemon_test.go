package fwclient

import (
	"testing"
	"time"
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
