// Package mkgolden makes the golden upgrade fixtures in testvectors/golden
// (cluster/DESIGN.md "Golden fixtures"): it drives today's appliance
// through a realistic history on a real node, through the same API calls
// production makes, then exports the node's Raft log, an FSM snapshot and
// the state both must reach. A new release adds its fixtures beside the old
// ones (never replacing them):
//
//	go test -tags hashicorpmetrics -count=1 -run TestMakeGolden ./testvectors/mkgolden -update
//
// Without -update the same history runs into a temporary directory and the
// exported fixtures are checked to replay and restore to the node's own
// state, so the generator keeps working between releases.
package mkgolden

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

var update = flag.Bool("update", false, "write the fixtures to testvectors/golden/<UTC date> (which must not exist yet)")

// bootLog is the real event log model devices boot with (a small one:
// every record carries it).
const bootLog = "eventlogs/go-tpm-tools/arch-linux-workstation.bin"

// Policy v1 admits every device; v2 routes by claimed model (untrusted,
// which is fine: the fixture only needs realistic commands), keeps a group
// that needs approval, and admits ACME device-attest.
const (
	policyV1 = `{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{}}]}`
	policyV2 = `{"groups":[
	{"name":"gated","match":{"models":["gateway"]},"mode":"approve","require":{"event_log":true}},
	{"name":"fleet","match":{},"mode":"auto","require":{},"acme":true,"config":{"ntp":"pool.ntp.org"}}]}`
)

func TestMakeGolden(t *testing.T) {
	// The Raft node's clock (the commands' time) moves with the
	// appliance's, so retention has something to remove.
	raftClock := &servertest.Clock{}
	e := servertest.New(t, cluster.WithClock(raftClock.Now))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := server.NewAdminClient(e.Dir)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Policies, settings, EK roots.
	_, err := admin.ApplyPolicy(ctx, "alice", []byte(policyV1))
	must("policy v1", err)
	_, err = admin.ApplyPolicy(ctx, "alice", []byte(policyV2))
	must("policy v2", err)
	_, err = admin.ChangeSettings(ctx, "alice", 0, json.RawMessage(`{"approval_retry":"2s","retain_refused":"1h","retain_raw_evidence":"2h"}`))
	must("settings", err)
	other := swtpm.NewTestManufacturer(t)
	added, err := admin.AddEKRoots(ctx, "alice", other.RootPEM(), false, "golden")
	must("ekroots add", err)
	if added.Written != 1 || len(added.Roots) != 1 {
		t.Fatalf("ekroots add: %+v", added)
	}
	must("ekroots remove", admin.RemoveEKRoot(ctx, "alice", added.Roots[0].SHA256))

	// Model devices: the real client protocol against the real server.
	key, err := e.Mfr.SigningKey()
	must("manufacturer key", err)
	mfr, err := tpmmodel.NewManufacturer(e.Mfr.Intermediate, key)
	must("model manufacturer", err)
	log, err := os.ReadFile(testvectors.Path(bootLog))
	must("boot log", err)
	plat, err := tpmmodel.NewPlatform(log)
	must("platform", err)
	newDev := func(ek string) (*tpmmodel.Device, string) {
		t.Helper()
		d, err := mfr.NewDevice(plat, ek)
		must("model device", err)
		end, err := d.Endorsement("")
		must("endorsement", err)
		sum, err := gatehouse.PublicKeySHA256(end.Public)
		must("EK hash", err)
		return d, sum
	}

	// Individual enrollments: import two, delete one, enroll the other.
	vouched, vouchedSum := newDev(fwclient.EKRSA2048)
	_, gone := newDev(fwclient.EKECCP256)
	_, err = admin.ImportEnrollments(ctx, "alice", "golden.csv", []server.ImportRow{
		{Row: 1, EKPublicSHA256: vouchedSum, Group: "fleet", Labels: map[string]string{"site": "lyon"}},
		{Row: 2, EKPublicSHA256: gone, Group: "fleet"},
	}, false)
	must("import", err)
	must("delete enrollment", admin.DeleteEnrollment(ctx, gone, "alice", "returned to vendor"))

	enroll := func(d *tpmmodel.Device, model string, ak goattest.Algorithm) *fwclient.Identity {
		t.Helper()
		id, err := e.Client.Enroll(ctx, d, fwclient.WithAKAlgorithm(ak), fwclient.WithClaims(api.Claims{Model: model, Serial: model + "-1"}))
		must("enroll "+model, err)
		return id
	}
	vid := enroll(vouched, "sensor", goattest.RSA)
	var ids []*fwclient.Identity
	var devs []*tpmmodel.Device
	for i := range 4 {
		d, _ := newDev(fwclient.EKECCP256)
		devs = append(devs, d)
		ids = append(ids, enroll(d, fmt.Sprintf("sensor-%d", i), goattest.ECDSA))
	}
	// Renewals.
	for i := range 2 {
		next, err := e.Client.Renew(ctx, devs[i], ids[i], nil)
		must("renew", err)
		ids[i] = next
	}
	_, err = e.Client.Renew(ctx, vouched, vid, nil)
	must("renew vouched", err)

	// A device that needs approval: pending, approved, then enrolled.
	gw, _ := newDev(fwclient.EKECCP256)
	approved := false
	_, err = e.Client.EnrollWaiting(ctx, gw, func(p *api.Pending) {
		if !approved {
			_, err := admin.TransitionDevice(ctx, p.DeviceID, cluster.OpApprove, "alice", "checked the site survey")
			must("approve", err)
			approved = true
		}
	}, fwclient.WithAKAlgorithm(goattest.ECDSA), fwclient.WithClaims(api.Claims{Model: "gateway"}))
	must("enroll gateway", err)
	if !approved {
		t.Fatal("the gateway was never pending")
	}

	// A refused attestation: an EK whose manufacturer the appliance does
	// not trust.
	omfrKey, err := other.SigningKey()
	must("other key", err)
	omfr, err := tpmmodel.NewManufacturer(other.Intermediate, omfrKey)
	must("other model manufacturer", err)
	stranger, err := omfr.NewDevice(plat, fwclient.EKECCP256)
	must("stranger", err)
	if _, err := e.Client.Enroll(ctx, stranger); err == nil {
		t.Fatal("a device of an untrusted manufacturer enrolled")
	}

	// A refused renewal, recorded (attestation.reject) and quarantining the
	// device: the gateway's group requires an event log that replays to
	// the quote, and this one is another machine's.
	gwID, err := e.Client.Enroll(ctx, gw, fwclient.WithAKAlgorithm(goattest.ECDSA), fwclient.WithClaims(api.Claims{Model: "gateway"}))
	must("re-enroll gateway", err)
	wrongLog, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/glinux-alex.bin"))
	must("other log", err)
	if _, err := e.Client.Renew(ctx, gw, gwID, wrongLog); err == nil {
		t.Fatal("a renewal with another machine's event log succeeded")
	}
	must("refusal summary", e.App.SummarizeRefusals(ctx))

	// Lifecycle, labels, configuration.
	for _, step := range []struct{ id, op string }{
		{ids[0].DeviceID, cluster.OpQuarantine}, {ids[0].DeviceID, cluster.OpEnable},
		{ids[1].DeviceID, cluster.OpDisable}, {ids[1].DeviceID, cluster.OpEnable},
		{ids[2].DeviceID, cluster.OpDisable},
		{ids[3].DeviceID, cluster.OpRevoke}, // stepca.update: its serials revoked
	} {
		_, err := admin.TransitionDevice(ctx, step.id, step.op, "bob", "golden history")
		must(step.op, err)
	}
	_, err = admin.LabelDevice(ctx, ids[0].DeviceID, "bob", map[string]string{"rack": "4", "site": "paris"}, nil)
	must("labels", err)
	_, err = admin.SetDeviceConfig(ctx, ids[1].DeviceID, "bob", json.RawMessage(`{"ntp":"time.example"}`))
	must("device config", err)
	if rev, err := e.App.IsRevoked(ids[3].Certificate.SerialNumber); err != nil || !rev {
		t.Fatalf("the revoked device's serial: revoked %v, %v", rev, err)
	}

	// ACME device-attest-01 through step-ca's provisioner.
	servertest.EnrollThroughACME(t, e)

	// Join tokens, and a second node joining (member.set, jointoken.*,
	// Raft configuration entries).
	_, _, err = admin.CreateJoinToken(ctx, time.Hour)
	must("join token", err)
	e.Join(t, "node-2")

	// Audit checkpoint, then retention once the refused record and the raw
	// evidence are past the settings' windows (by the leader's clock).
	_, err = admin.Checkpoint(ctx)
	must("checkpoint", err)
	e.Clock.Advance(3 * time.Hour)
	raftClock.Advance(3 * time.Hour)
	removed, err := e.App.CompactRetention(ctx)
	must("retention", err)
	if removed == 0 {
		t.Fatal("retention removed nothing")
	}
	_, err = admin.Checkpoint(ctx)
	must("checkpoint", err)

	// Stop the node (its background loops could still write), then export
	// from its data directory: the state is the node's stored fsm.db.
	must("close", e.App.Close())
	var logBuf, snapBuf bytes.Buffer
	facts, err := cluster.ExportGolden(filepath.Join(e.Dir, "raft"), &logBuf, &snapBuf)
	must("export", err)
	want := facts.StateHash
	for _, c := range []string{"policy.apply/1", "settings.set/1", "ekroots.add/1", "ekroots.remove/1", "enrollment.import/1", "enrollment.delete/1",
		"enrollment.accept/4", "renewal.accept/4", "attestation.reject/1", "audit.append/1", "device.transition/1", "device.labels/1", "device.config/1",
		"stepca.update/1", "jointoken.create/1", "jointoken.consume/1", "member.set/1", "audit.checkpoint/1", "retention.compact/1"} {
		if facts.Commands[c] == 0 {
			t.Errorf("the history has no %s command: %v", c, facts.Commands)
		}
	}

	// The fixtures must reach the node's state from empty.
	replayed, err := cluster.ReplayGolden(t.TempDir(), bytes.NewReader(logBuf.Bytes()))
	must("replay", err)
	restored, err := cluster.RestoreGolden(t.TempDir(), bytes.NewReader(snapBuf.Bytes()))
	must("restore", err)
	if replayed.StateHash != want || restored.StateHash != want {
		t.Fatalf("replayed %s, restored %s, the node had %s", replayed.StateHash, restored.StateHash, want)
	}
	t.Logf("log %d bytes, snapshot %d bytes, facts %+v", logBuf.Len(), snapBuf.Len(), replayed)
	if !*update {
		return
	}

	dir := testvectors.Path(filepath.Join("golden", time.Now().UTC().Format("2006-01-02")))
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s exists: fixtures are added, never replaced", dir)
	}
	must("mkdir", os.MkdirAll(dir, 0o755))
	exp := cluster.GoldenExpect{Log: replayed, Snapshot: restored, SnapshotFormat: cluster.SnapshotFormat, Made: map[string]string{
		"by":     "go test -tags hashicorpmetrics -count=1 -run TestMakeGolden ./testvectors/mkgolden -update",
		"commit": gitHead(t),
		"go":     runtime.Version(),
		"date":   time.Now().UTC().Format(time.RFC3339),
	}}
	b, err := json.MarshalIndent(exp, "", "  ")
	must("expected", err)
	must("write log", os.WriteFile(filepath.Join(dir, cluster.GoldenLogFile), logBuf.Bytes(), 0o644))
	var snapGz bytes.Buffer
	zw := gzip.NewWriter(&snapGz)
	_, err = zw.Write(snapBuf.Bytes())
	must("gzip snapshot", errors.Join(err, zw.Close()))
	must("write snapshot", os.WriteFile(filepath.Join(dir, cluster.GoldenSnapshotFile), snapGz.Bytes(), 0o644))
	must("write expected", os.WriteFile(filepath.Join(dir, cluster.GoldenExpectFile), append(b, '\n'), 0o644))
	t.Logf("wrote %s", dir)
}

// gitHead names the commit the fixtures were made by ("+dirty" with
// uncommitted changes).
func gitHead(t *testing.T) string {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v", err)
	}
	head := strings.TrimSpace(string(out))
	if st, _ := exec.Command("git", "status", "--porcelain", "--", "../..").Output(); len(bytes.TrimSpace(st)) > 0 {
		head += "+dirty"
	}
	return head
}
