// Package backoff computes retry delays with "full jitter" (AWS
// Architecture Blog, "Exponential Backoff And Jitter"): the n-th retry
// sleeps a uniformly random time in [0, min(cap, base·2ⁿ)). Clients that
// failed together (a fleet after an outage, a CLI after a leader change)
// spread their retries over the whole window instead of retrying in
// lockstep; the expected load on the recovering server stays bounded.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is a full-jitter backoff. Rand returns a uniform value in [0, n);
// nil means math/rand/v2, and tests inject a deterministic source.
type Policy struct {
	Base time.Duration
	Cap  time.Duration
	Rand func(n int64) int64
}

// Ceiling is the upper bound of the n-th retry's delay (n from 0):
// min(Cap, Base·2ⁿ), without overflowing.
func (p Policy) Ceiling(n int) time.Duration {
	c := p.Base
	for i := 0; i < n && c < p.Cap; i++ {
		c *= 2
	}
	return min(c, p.Cap)
}

// Delay is the n-th retry's sleep: uniform in [0, Ceiling(n)).
func (p Policy) Delay(n int) time.Duration {
	c := p.Ceiling(n)
	if c <= 0 {
		return 0
	}
	r := p.Rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(c)))
}
