package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/internal/backoff"
)

// DefaultRetry is how AdminClient retries an idempotent request: up to 8
// times, full jitter from 100ms up to 5s (about 15s at worst in all), which
// outlasts a Raft election and a leadership transfer.
var DefaultRetry = RetryPolicy{Attempts: 8, Backoff: backoff.Policy{Base: 100 * time.Millisecond, Cap: 5 * time.Second}}

// RetryPolicy bounds the retries of an idempotent admin request.
type RetryPolicy struct {
	Attempts int // retries after the first try; 0: none
	Backoff  backoff.Policy
	// Notify, if set, is told of each retry before its wait.
	Notify func(err error, wait time.Duration)
}

// retryable reports whether a failed idempotent request may be sent again:
// a 503 (no leader yet, a leader that stepped down) or a connection that
// failed or broke (a node restarting). Anything else is the answer.
func retryable(err error) bool {
	var p *api.Problem
	if errors.As(err, &p) {
		return p.Status == http.StatusServiceUnavailable
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// retry runs an idempotent request with c.Retry (DefaultRetry if nil).
func (c *AdminClient) retry(ctx context.Context, try func() error) error {
	pol := c.Retry
	if pol == nil {
		pol = &DefaultRetry
	}
	return pol.Do(ctx, try)
}

// Do runs an idempotent request, retrying what retryable allows with the
// policy's backoff until it succeeds, the attempts run out or ctx ends.
// Only callers whose request may be applied twice with one effect use it.
func (pol RetryPolicy) Do(ctx context.Context, try func() error) error {
	for n := 0; ; n++ {
		err := try()
		if err == nil || n >= pol.Attempts || !retryable(err) || ctx.Err() != nil {
			return err
		}
		wait := pol.Backoff.Delay(n)
		if pol.Notify != nil {
			pol.Notify(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
