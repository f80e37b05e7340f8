package server_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// An operator disables an enrolled device: it cannot enroll again (the
// refusal is recorded, no certificate); enabled, it can. An illegal
// operation changes nothing, and every change is in the device's history
// with its actor and reason. The admin socket carries the same operations.
func TestDeviceDisableEnable(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	admin := server.NewAdminClient(e.Dir)
	if _, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpDisable, "alice", ""); err == nil {
		t.Fatal("a state change without a reason was accepted")
	}
	dev, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpDisable, "alice", "RMA ticket 42")
	if err != nil || dev.Status != cluster.DeviceDisabled {
		t.Fatalf("disable: %+v %v", dev, err)
	}
	disabled, err := admin.Devices(ctx, cluster.DeviceDisabled)
	if err != nil || len(disabled) != 1 || disabled[0].ID != id.DeviceID {
		t.Fatalf("devices --state disabled: %+v %v", disabled, err)
	}

	before := e.App.CertificatesIssued()
	_, err = e.Client.Enroll(ctx, d.TPM)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodeDeviceInactive {
		t.Fatalf("disabled device enrolled: %v", err)
	}
	rec := e.expectRejected(p, http.StatusForbidden, api.CodeDeviceInactive, before)
	if rec.DeviceID != id.DeviceID {
		t.Fatalf("refusal recorded for %q", rec.DeviceID)
	}

	// approve applies only to pending devices.
	_, err = admin.TransitionDevice(ctx, id.DeviceID, cluster.OpApprove, "alice", "looks fine")
	if !errors.As(err, &p) || p.Code != api.CodeIllegalTransition {
		t.Fatalf("approve of a disabled device: %v", err)
	}
	if _, err := admin.TransitionDevice(ctx, "0000", cluster.OpDisable, "alice", "x"); !errors.As(err, &p) || p.Code != api.CodeNotFound {
		t.Fatalf("unknown device: %v", err)
	}

	if _, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpEnable, "bob", "repaired"); err != nil {
		t.Fatal(err)
	}
	again, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil || again.DeviceID != id.DeviceID {
		t.Fatalf("enabled device: %v", err)
	}
	dev, err = e.App.Node().Device(id.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Status != cluster.DeviceActive || dev.Enrollments != 2 || len(dev.History) != 2 {
		t.Fatalf("device %+v", dev)
	}
	h := dev.History
	if h[0].Op != cluster.OpDisable || h[0].Actor != "alice" || h[0].Reason != "RMA ticket 42" || h[0].From != cluster.DeviceActive ||
		h[1].Op != cluster.OpEnable || h[1].Actor != "bob" || h[1].To != cluster.DeviceActive {
		t.Fatalf("history %+v", h)
	}
}
