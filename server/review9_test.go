package server_test

import (
	"context"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// review 9: an imported individual enrollment selects its group before any
// match, on enrollment and renewal. The dry run (and Capture) rebuilt the
// input without it, so they judged an individually enrolled device in
// whichever group matched first: a candidate the dry run showed passing
// could quarantine the device at its next renewal, and the reverse.
func TestDryRunHonoursIndividualEnrollment(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	doc := `{"groups":[{"name":"fleet","mode":"auto"},{"name":"lab","mode":"auto","match":{"labels":{"site":"lab"}}}]}`
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	node := e.App.Node()
	dev, err := node.Device(id.DeviceID)
	if err != nil || dev.Group != "fleet" {
		t.Fatalf("control: device %+v %v", dev, err)
	}
	res, err := e.App.ImportEnrollments(ctx, server.ImportRequest{Actor: "test", Source: "review9", Rows: []server.ImportRow{{Row: 1, EKPublicSHA256: dev.EK.PublicSHA256, Group: "lab"}}})
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("import: %+v %v", res, err)
	}
	// Live: the renewal is judged in the enrolled group.
	if id, err = e.Client.Renew(ctx, d.TPM, id, nil); err != nil {
		t.Fatal(err)
	}
	if dev, err = node.Device(id.DeviceID); err != nil {
		t.Fatal(err)
	}
	rec, err := node.Attestation(dev.LastAttestationID)
	if err != nil || rec.Policy == nil || rec.Policy.Group != "lab" {
		t.Fatalf("live renewal decided %+v %v", rec.Policy, err)
	}
	// The dry run of the policy in force must decide as the live path did.
	p, err := attest.ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	dry, err := server.DryRun(node, p)
	if err != nil || len(dry) != 1 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if g := dry[0].Decision.Group; g != "lab" {
		t.Fatalf("dry run judged the individually enrolled device in group %q; live decided %q", g, rec.Policy.Group)
	}
}
