package server_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

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

	// Its certificate gets nothing on mTLS endpoints while it is disabled.
	var p *api.Problem
	if _, err := e.Client.WhoAmI(ctx, d.TPM, id); !errors.As(err, &p) || p.Code != api.CodeDeviceInactive {
		t.Fatalf("whoami while disabled: %v", err)
	}
	if _, err := e.Client.Config(ctx, d.TPM, id); !errors.As(err, &p) || p.Code != api.CodeDeviceInactive {
		t.Fatalf("config while disabled: %v", err)
	}

	before := e.App.CertificatesIssued()
	_, err = e.Client.Enroll(ctx, d.TPM)
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

// A device that has not re-attested within its group's interval is marked
// stale (flag and audit entry) by the leader's sweep; a renewal clears it.
func TestStaleDevices(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	applyPolicy(t, e, `{"groups":[{"name":"fleet","mode":"auto","reattest_interval":"1h"}]}`)
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.App.MarkStale(ctx); err != nil {
		t.Fatal(err)
	}
	if dev, _ := e.App.Node().Device(id.DeviceID); dev.Stale {
		t.Fatal("a fresh device was marked stale")
	}
	e.Clock.Advance(2 * time.Hour)
	if err := e.App.MarkStale(ctx); err != nil {
		t.Fatal(err)
	}
	dev, _ := e.App.Node().Device(id.DeviceID)
	if !dev.Stale || len(dev.Flags) != 1 || dev.Flags[0].Name != cluster.FlagStale {
		t.Fatalf("device after the interval: stale=%v flags=%+v", dev.Stale, dev.Flags)
	}
	if types := auditTypes(t, e.App.Node(), dev.ID); types[len(types)-1] != cluster.AuditDeviceFlag {
		t.Fatalf("audit trail %v", types)
	}
	if _, err := e.Client.Renew(ctx, d.TPM, id, nil); err != nil {
		t.Fatal(err)
	}
	if dev, _ := e.App.Node().Device(id.DeviceID); dev.Stale {
		t.Fatal("renewal did not clear stale")
	}
}
