package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestCeilingDoublesUpToCap(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Cap: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for n, w := range want {
		if got := p.Ceiling(n); got != w*time.Millisecond {
			t.Errorf("Ceiling(%d) = %v, want %v", n, got, w*time.Millisecond)
		}
	}
	if got := p.Ceiling(1000); got != time.Second {
		t.Errorf("Ceiling(1000) = %v, want the cap", got)
	}
}

// TestDelayUsesTheWholeWindow: the delay is Rand over [0, ceiling), not the
// ceiling itself (no lockstep), with the injected source's bounds reached.
func TestDelayUsesTheWholeWindow(t *testing.T) {
	var asked []int64
	lo := Policy{Base: time.Second, Cap: time.Minute, Rand: func(n int64) int64 { asked = append(asked, n); return 0 }}
	hi := Policy{Base: time.Second, Cap: time.Minute, Rand: func(n int64) int64 { return n - 1 }}
	for n := 0; n < 8; n++ {
		if d := lo.Delay(n); d != 0 {
			t.Errorf("Delay(%d) with Rand=0 is %v, want 0", n, d)
		}
		if d := hi.Delay(n); d != lo.Ceiling(n)-1 {
			t.Errorf("Delay(%d) with Rand=max is %v, want %v", n, d, lo.Ceiling(n)-1)
		}
		if asked[n] != int64(lo.Ceiling(n)) {
			t.Errorf("Delay(%d) drew from [0, %v), want [0, %v)", n, time.Duration(asked[n]), lo.Ceiling(n))
		}
	}
}

// TestDelaysSpread draws many delays for a fleet at the same retry count:
// they must cover [0, cap) rather than cluster, which is what keeps a fleet
// from retrying in lockstep.
func TestDelaysSpread(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	p := Policy{Base: 30 * time.Second, Cap: time.Hour, Rand: r.Int64N}
	const draws = 5000
	var buckets [10]int
	distinct := map[time.Duration]bool{}
	for i := 0; i < draws; i++ {
		d := p.Delay(20) // long past the cap
		if d < 0 || d >= time.Hour {
			t.Fatalf("delay %v outside [0, 1h)", d)
		}
		buckets[int(d*10/time.Hour)]++
		distinct[d] = true
	}
	for i, n := range buckets {
		// Uniform: about 500 per tenth; a lockstep or skewed draw is far off.
		if n < draws/10*7/10 || n > draws/10*13/10 {
			t.Errorf("tenth %d of [0, 1h) got %d of %d delays, want about %d: %v", i, n, draws, draws/10, buckets)
		}
	}
	if len(distinct) < draws*9/10 {
		t.Errorf("only %d distinct delays in %d draws", len(distinct), draws)
	}
}

func TestDefaultRandIsUsed(t *testing.T) {
	p := Policy{Base: time.Second, Cap: time.Second}
	seen := map[time.Duration]bool{}
	for i := 0; i < 100; i++ {
		seen[p.Delay(0)] = true
	}
	if len(seen) < 50 {
		t.Errorf("the default source gave %d distinct delays of 100", len(seen))
	}
}
