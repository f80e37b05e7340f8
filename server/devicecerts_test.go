package server_test

import (
	"context"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A device's certificates list every serial it was issued, the newest
// marked current, each with its validity exactly as the certificate the
// device received carries it, and each one's revoked status as the CA has
// it: a device whose state says revoked while its certificates are
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
	issued := []*x509.Certificate{id.Certificate, renewed.Certificate}
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
			if c.Current != (i == 1) {
				t.Fatalf("%s: certificate %d %+v: only the newest is current", when, i, c)
			}
			if issued := issued[i]; !c.NotBefore.Equal(issued.NotBefore) || !c.NotAfter.Equal(issued.NotAfter) {
				t.Fatalf("%s: certificate %d listed valid %v..%v, issued valid %v..%v", when, i, c.NotBefore, c.NotAfter, issued.NotBefore, issued.NotAfter)
			}
		}
	}
	if dev, err := e.App.Node().Device(id.DeviceID); err != nil || !dev.CertificateNotAfter.Equal(renewed.Certificate.NotAfter) {
		t.Fatalf("device record expiry %v (%v), certificate's %v", dev.CertificateNotAfter, err, renewed.Certificate.NotAfter)
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

// In a rolling upgrade, a member whose build does not apply the v3 accepts
// (it says so in GET /cluster/v1/info) would stop on them: enrollments and
// renewals then commit the v2 accepts, without the validity, and the list
// shows it unknown (but the current certificate's expiry, which the device
// record keeps). Once every member applies v3 (asked again after
// behindRecheck), the validity is recorded again. Both replicas agree
// throughout.
func TestDeviceCertificatesFallBackWhileAMemberIsBehind(t *testing.T) {
	e := newEnv(t)
	n2, _ := e.Join(t, "node-2")
	var old []string
	for _, c := range cluster.Commands() {
		if !slices.Contains(cluster.ValidityCommands, c) {
			old = append(old, c)
		}
	}
	server.SetCommandsForTest(n2, old)
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
	certs, err := admin.DeviceCertificates(ctx, id.DeviceID)
	if err != nil || len(certs) != 2 {
		t.Fatalf("certificates %+v %v", certs, err)
	}
	if c := certs[0]; !c.NotBefore.IsZero() || !c.NotAfter.IsZero() {
		t.Fatalf("a certificate committed by v2 listed with a validity: %+v", c)
	}
	if c := certs[1]; !c.NotBefore.IsZero() || !c.Current || !c.NotAfter.Equal(renewed.Certificate.NotAfter) {
		t.Fatalf("current certificate committed by v2: %+v, want only its expiry %v", c, renewed.Certificate.NotAfter)
	}

	// node-2 is upgraded.
	server.SetCommandsForTest(n2, nil)
	e.Clock.Advance(31 * time.Second) // past behindRecheck
	again, err := e.Client.Renew(ctx, d.TPM, renewed, nil)
	if err != nil {
		t.Fatal(err)
	}
	certs, err = admin.DeviceCertificates(ctx, id.DeviceID)
	if err != nil || len(certs) != 3 {
		t.Fatalf("certificates %+v %v", certs, err)
	}
	if c := certs[2]; !c.Current || !c.NotBefore.Equal(again.Certificate.NotBefore) || !c.NotAfter.Equal(again.Certificate.NotAfter) {
		t.Fatalf("certificate committed once every member applies v3: %+v, issued %v..%v", c, again.Certificate.NotBefore, again.Certificate.NotAfter)
	}
	if c := certs[1]; !c.NotAfter.IsZero() {
		t.Fatalf("a superseded certificate committed by v2 listed with an expiry: %+v", c)
	}
	servertest.WaitFor(t, "node-2 to hold the same registry", 10*time.Second, func() bool {
		h1, err1 := e.App.Node().StateHash()
		h2, err2 := n2.Node().StateHash()
		return err1 == nil && err2 == nil && h1 == h2
	})
}
