package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A device's certificates list every serial it was issued, the newest
// marked current with its expiry, and each one's revoked status as the CA
// has it: a device whose state says revoked while its certificates are
// not yet on the CRL (a revocation interrupted after its state change)
// shows them not revoked, and revoked once the CA has them.
func TestDeviceCertificates(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := e.Client.Renew(ctx, d.TPM, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin := server.NewAdminClient(e.Dir)
	check := func(when string, revoked bool) {
		t.Helper()
		certs, err := admin.DeviceCertificates(ctx, id.DeviceID)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		want := []string{id.Certificate.SerialNumber.Text(16), renewed.Certificate.SerialNumber.Text(16)}
		if len(certs) != len(want) {
			t.Fatalf("%s: %d certificates %+v, want %d", when, len(certs), certs, len(want))
		}
		for i, c := range certs {
			if c.Serial != want[i] || c.Revoked != revoked || c.AttestationID == 0 || c.Committed.IsZero() {
				t.Fatalf("%s: certificate %d %+v, want serial %s revoked %v", when, i, c, want[i], revoked)
			}
			if c.Current != (i == 1) || c.NotAfter.IsZero() != (i == 0) {
				t.Fatalf("%s: certificate %d %+v: only the newest is current and has its expiry", when, i, c)
			}
		}
		if d := certs[1].NotAfter.Sub(renewed.Certificate.NotAfter); d < -time.Minute || d > time.Minute {
			t.Fatalf("%s: current certificate expires %s, issued one %s", when, certs[1].NotAfter, renewed.Certificate.NotAfter)
		}
	}
	check("active", false)
	// Only the state change: the CA has revoked nothing yet.
	if _, err := e.App.Node().TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "stolen"); err != nil {
		t.Fatal(err)
	}
	check("state revoked, serials not yet", false)
	if _, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "again"); err != nil {
		t.Fatal(err)
	}
	check("revoked", true)
	if _, err := admin.DeviceCertificates(ctx, "no-such-device"); err == nil {
		t.Fatal("certificates of an unknown device")
	}
}
