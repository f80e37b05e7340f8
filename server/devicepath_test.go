package server_test

import (
	"context"
	"slices"
	"testing"

	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The device answer says which path a device came through, and each of
// its certificates which path issued it: the agent's native enrollment,
// or the step CLI's ACME device-attest, whose AK certificate (from the
// attestation CA) is marked as such and is never the current one.
func TestDevicePath(t *testing.T) {
	e := newEnv(t)
	applyPolicy(t, e, acmePolicy)
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)

	nd := servertest.NewDevice(t, e.Mfr)
	native, err := e.Client.Enroll(ctx, nd.TPM)
	if err != nil {
		t.Fatal(err)
	}
	acmeID, akCert, chain := servertest.EnrollThroughACME(t, e.Env)

	for _, c := range []struct {
		id    string
		path  []string
		certs []server.DeviceCertificate // serial, stage, path, AK, current
	}{
		{native.DeviceID, []string{server.PathNative}, []server.DeviceCertificate{
			{Serial: native.Certificate.SerialNumber.Text(16), Stage: "complete", Path: server.PathNative, Current: true}}},
		{acmeID, []string{server.PathACME}, []server.DeviceCertificate{
			{Serial: akCert.SerialNumber.Text(16), Stage: "ak_certificate", Path: server.PathACME, AK: true},
			{Serial: chain[0].SerialNumber.Text(16), Stage: "acme", Path: server.PathACME, Current: true}}},
	} {
		d, err := admin.Device(ctx, c.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.ID != c.id || !slices.Equal(d.Path, c.path) {
			t.Errorf("device %s: path %q, want %q", d.ID, d.Path, c.path)
		}
		certs, err := admin.DeviceCertificates(ctx, c.id)
		if err != nil {
			t.Fatal(err)
		}
		if len(certs) != len(c.certs) {
			t.Fatalf("device %s: certificates %+v, want %d", c.id, certs, len(c.certs))
		}
		for i, want := range c.certs {
			got := certs[i]
			if got.Serial != want.Serial || got.Stage != want.Stage || got.Path != want.Path || got.AK != want.AK || got.Current != want.Current {
				t.Errorf("device %s certificate %d: %+v, want serial %s stage %s path %s ak %v current %v",
					c.id, i, got, want.Serial, want.Stage, want.Path, want.AK, want.Current)
			}
		}
	}
}
