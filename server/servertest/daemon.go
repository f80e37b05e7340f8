package servertest

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// RunDaemon runs the agent's loop for tpm against e, renewing every
// renewEvery instead of at two thirds of the lifetime, until it has saved n
// identities (the enrollment, then renewals); then it stops the loop and
// returns them, oldest first. It fails the test if the loop stops early,
// returns an error on stop, or takes more than 30 s.
func (e *Env) RunDaemon(t testing.TB, tpm fwclient.Device, dir string, renewEvery time.Duration, n int) []*fwclient.Identity {
	t.Helper()
	renewed := make(chan *fwclient.Identity, n)
	d := &fwclient.Daemon{
		Client:   e.Client,
		TPM:      tpm,
		Dir:      dir,
		Server:   e.URL(),
		Schedule: func(*x509.Certificate, time.Time) time.Duration { return renewEvery },
		Renewed:  func(id *fwclient.Identity) { renewed <- id },
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var ids []*fwclient.Identity
	for len(ids) < n {
		select {
		case id := <-renewed:
			ids = append(ids, id)
		case err := <-done:
			t.Fatalf("daemon stopped: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d identities after 30s", len(ids))
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("daemon returned %v on stop", err)
	}
	return ids
}
