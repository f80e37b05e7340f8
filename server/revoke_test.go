package server_test

import (
	"context"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// racingSerial is a serial a renewal or enrollment commit reserves while a
// revocation is under way.
func racingSerial(n int64) string { return big.NewInt(0x7ace0000 + n).Text(16) }

// A renewal and an enrollment committed between the two steps of a
// revocation: the FSM refuses both (the state change came first), and
// afterwards every serial the device ever had is revoked.
func TestRevocationRace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	node := e.App.Node()
	dev, err := node.Device(id.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	var renewErr, enrollErr error
	server.SetRevokeHook(e.App, func(deviceID string) {
		now := time.Now()
		rec := cluster.AttestationRecord{Time: now, Node: "test", DeviceID: deviceID, Stage: "renew", Outcome: cluster.OutcomeAccepted, CertificateSerial: racingSerial(1)}
		_, renewErr = node.CommitRenewal(ctx, "race-renew", now.Add(time.Minute), rec, now.Add(time.Hour))
		rec.Stage, rec.CertificateSerial = "complete", racingSerial(2)
		next := dev
		next.Status = cluster.DeviceActive
		_, enrollErr = node.CommitEnrollment(ctx, "race-enroll", now.Add(time.Minute), next, rec)
	})
	revoked, err := e.App.RevokeDevice(ctx, id.DeviceID, "alice", "stolen")
	if err != nil || revoked.Status != cluster.DeviceRevoked {
		t.Fatalf("revoke: %+v %v", revoked, err)
	}
	if !errors.Is(renewErr, cluster.ErrDeviceInactive) || !errors.Is(enrollErr, cluster.ErrDeviceInactive) {
		t.Fatalf("commits after the state change: renewal %v, enrollment %v (want %v)", renewErr, enrollErr, cluster.ErrDeviceInactive)
	}
	assertAllSerialsRevoked(t, e, id.DeviceID)
	if ok, _ := e.App.IsRevoked(id.Certificate.SerialNumber); !ok {
		t.Fatal("the enrolled certificate is not revoked")
	}
}

// assertAllSerialsRevoked checks every serial in the device record and in
// its accepted attestation records.
func assertAllSerialsRevoked(t *testing.T, e *env, deviceID string) {
	t.Helper()
	dev, err := e.App.Node().Device(deviceID)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: deviceID})
	if err != nil {
		t.Fatal(err)
	}
	serials := append([]string(nil), dev.Serials...)
	for _, r := range recs {
		if r.Outcome == cluster.OutcomeAccepted && r.CertificateSerial != "" {
			serials = append(serials, r.CertificateSerial)
		}
	}
	if len(serials) == 0 {
		t.Fatal("the device has no serials")
	}
	for _, s := range serials {
		sn, _ := new(big.Int).SetString(s, 16)
		if ok, err := e.App.IsRevoked(sn); err != nil || !ok {
			t.Fatalf("serial %s of device %s is not revoked (%v)", s, deviceID, err)
		}
	}
}

// A revocation interrupted after its state change (the process died before
// the serials) completes when it runs again, and at the leader's sweep;
// neither is refused, and neither changes the state twice.
func TestRevocationResumes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var ids []string
	for range 2 {
		id, err := e.Client.Enroll(ctx, servertest.NewDevice(t, e.Mfr).TPM)
		if err != nil {
			t.Fatal(err)
		}
		// Only the state change: what a crash between the steps leaves.
		if _, err := e.App.Node().TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "stolen"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := e.App.IsRevoked(id.Certificate.SerialNumber); ok {
			t.Fatal("the state change alone revoked the certificate")
		}
		ids = append(ids, id.DeviceID)
	}
	dev, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, ids[0], cluster.OpRevoke, "alice", "again")
	if err != nil || dev.Status != cluster.DeviceRevoked || len(dev.History) != 1 {
		t.Fatalf("revoking a revoked device again: %+v %v", dev, err)
	}
	assertAllSerialsRevoked(t, e, ids[0])
	if err := e.App.SweepRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	assertAllSerialsRevoked(t, e, ids[1])
}

// A renewal under a newer policy that puts the device in another group
// moves the device there: the registry (devices show) names the new group,
// mode and policy version, and both the renewal's answer and GET /v1/config
// carry the new group's configuration.
func TestRenewalMovesDeviceToNewGroup(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	applyPolicy(t, e, `{"groups":[{"name":"lab","mode":"auto"}]}`)
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	admin := server.NewAdminClient(e.Dir)
	dev, err := admin.Device(ctx, id.DeviceID)
	if err != nil || dev.Group != "lab" || dev.PolicyVersion != 1 {
		t.Fatalf("enrolled under v1: %+v %v", dev, err)
	}
	applyPolicy(t, e, `{"groups":[{"name":"gateways","mode":"auto","config":{"ntp":"pool.ntp.org"}}]}`)
	renewed, err := e.Client.Renew(ctx, d.TPM, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(renewed.Configuration) != `{"ntp":"pool.ntp.org"}` {
		t.Fatalf("renewal answered configuration %s", renewed.Configuration)
	}
	dev, err = admin.Device(ctx, id.DeviceID)
	if err != nil || dev.Group != "gateways" || dev.Mode != "auto" || dev.PolicyVersion != 2 {
		t.Fatalf("devices show after the renewal under v2: group %q mode %q v%d %v", dev.Group, dev.Mode, dev.PolicyVersion, err)
	}
	cfg, err := e.Client.Config(ctx, d.TPM, renewed)
	if err != nil || cfg.Group != "gateways" || cfg.PolicyVersion != 2 || string(cfg.Configuration) != `{"ntp":"pool.ntp.org"}` {
		t.Fatalf("GET /v1/config after the renewal: %+v %v", cfg, err)
	}
}
