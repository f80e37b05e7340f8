package agent

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
)

// The daemon's failures back off with full jitter: after the n-th failure
// in a row it sleeps a draw from [0, min(1h, 30s·2ⁿ)), not a fixed delay
// every agent of a fleet would share.
func TestDaemonBacksOffWithFullJitter(t *testing.T) {
	m := swtpm.NewTestManufacturer(t)
	p := swtpm.StartTest(t, m)
	tpm, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://" + l.Addr().String() // nobody answers: every attempt fails
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var windows []time.Duration
	d := &fwclient.Daemon{Client: fwclient.NewClient(dead, m.Root), TPM: tpm, Dir: t.TempDir(), Server: dead}
	d.Backoff = fwclient.DefaultBackoff
	d.Backoff.Rand = func(n int64) int64 {
		mu.Lock()
		defer mu.Unlock()
		windows = append(windows, time.Duration(n))
		if len(windows) == 5 {
			cancel()
		}
		return n / 1000 // short sleeps for the test, drawn from the window
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the daemon did not retry five times in 60s")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute}
	if len(windows) != len(want) {
		t.Fatalf("windows %v, want %v", windows, want)
	}
	for i := range want {
		if windows[i] != want[i] {
			t.Fatalf("retry %d drew from [0, %v), want [0, %v): %v", i, windows[i], want[i], windows)
		}
	}
}
