package fwclient

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/internal/backoff"
)

// Daemon keeps a device's identity alive: it enrolls at first boot
// (waiting out an approval), then renews with fresh attestation before the
// certificate expires, and enrolls again if the certificate expired
// anyway. Failures back off; refusals that an operator must lift
// (quarantine, disable) are retried slowly rather than given up.
type Daemon struct {
	Client *Client
	TPM    Device   // a *TPM; a load generator's herd uses tpmmodel devices
	Dir    string   // identity directory
	Server string   // recorded with the identity
	Opts   []Option // for enrollment
	// EventLog, if set, is sent instead of the firmware's log.
	EventLog []byte
	Log      *slog.Logger
	// Schedule says how long to wait before renewing cert; nil means
	// RenewalDelay with random jitter.
	Schedule func(cert *x509.Certificate, now time.Time) time.Duration
	// Renewed, if set, is called after each new identity is saved.
	Renewed func(*Identity)
	// Backoff spaces retries after a failure; the zero value means full
	// jitter from 30s up to an hour (DefaultBackoff).
	Backoff backoff.Policy
}

// DefaultBackoff is the agent's retry backoff: the n-th consecutive
// failure waits a uniformly random time in [0, min(1h, 30s·2ⁿ)) ("full
// jitter"), so a fleet that failed together in an outage does not come back
// in lockstep and knock the recovering appliance over again.
var DefaultBackoff = backoff.Policy{Base: 30 * time.Second, Cap: time.Hour}

// retryDelay is the wait after the n-th consecutive failure (n from 0).
func (d *Daemon) retryDelay(n int) time.Duration {
	p := d.Backoff
	if p.Base <= 0 || p.Cap <= 0 {
		p.Base, p.Cap = DefaultBackoff.Base, DefaultBackoff.Cap
	}
	return p.Delay(n)
}

// failureDelay is the wait after the n-th consecutive failure. A 429 or
// 503 with a Retry-After (an overloaded node handing this device its own
// time to come back, or a cluster between leaders) is followed: that
// long, plus a jitter uniform in [0, 1s + Retry-After/10), which spreads
// the devices told the same whole second over it instead of having them
// knock at once. Any other failure waits the backoff's full-jitter delay:
// the device knows nothing better.
func (d *Daemon) failureDelay(n int, err error) time.Duration {
	var p *api.Problem
	if errors.As(err, &p) && p.RetryAfter > 0 {
		r := d.Backoff.Rand
		if r == nil {
			r = rand.Int64N
		}
		return p.RetryAfter + time.Duration(r(int64(time.Second+p.RetryAfter/10)))
	}
	return d.retryDelay(n)
}

// RenewalDelay is the default schedule: renew at two thirds of the
// lifetime, plus or minus a twelfth of it at random, so a fleet enrolled at
// once does not renew at once.
func RenewalDelay(cert *x509.Certificate, now time.Time) time.Duration {
	life := cert.NotAfter.Sub(cert.NotBefore)
	jitter := time.Duration(rand.Int64N(int64(life/6)+1)) - life/12
	return max(cert.NotBefore.Add(life*2/3+jitter).Sub(now), 0)
}

// Run loops until ctx ends; it returns nil then.
func (d *Daemon) Run(ctx context.Context) error {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	schedule := d.Schedule
	if schedule == nil {
		schedule = RenewalDelay
	}
	failures := 0
	for {
		id, err := LoadIdentity(d.Dir)
		switch {
		case errors.Is(err, ErrNoIdentity) || err == nil && !id.Valid(time.Now()):
			log.Info("enrolling", "dir", d.Dir)
			opts := d.Opts
			if d.EventLog != nil {
				opts = append(opts[:len(opts):len(opts)], WithEventLog(d.EventLog))
			}
			id, err = d.Client.EnrollWaiting(ctx, d.TPM, func(p *api.Pending) {
				log.Info("waiting for approval", "device_id", p.DeviceID, "retry_after_s", p.RetryAfterSeconds)
			}, opts...)
		case err == nil:
			wait := schedule(id.Certificate, time.Now())
			log.Info("next renewal", "device_id", id.DeviceID, "in", wait.Round(time.Second), "expires", id.Certificate.NotAfter)
			if !sleep(ctx, wait) {
				return nil
			}
			id, err = d.Client.Renew(ctx, d.TPM, id, d.EventLog)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = id.Save(d.Dir, d.Server)
		}
		if err != nil {
			var p *api.Problem
			if errors.As(err, &p) && (p.Code == api.CodeCertificateRevoked) {
				log.Error("the certificate is revoked; stopping", "err", err)
				return err
			}
			wait := d.failureDelay(failures, err)
			failures++
			log.Warn("identity upkeep failed; retrying", "err", err, "in", wait.Round(time.Millisecond))
			if !sleep(ctx, wait) {
				return nil
			}
			continue
		}
		failures = 0
		log.Info("identity saved", "device_id", id.DeviceID, "serial", id.Certificate.SerialNumber.Text(16), "expires", id.Certificate.NotAfter)
		if d.Renewed != nil {
			d.Renewed(id)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
