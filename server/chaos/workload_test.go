package chaos_test

import (
	"context"
	"os"
	"testing"
	"time"

	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/chaos"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// inProcessCluster starts three in-process nodes, each on a fixed API
// address (so a restarted node is where its clients left it), and returns
// their appliances and data directories.
func inProcessCluster(t *testing.T) (*servertest.Env, []*server.Appliance, []string) {
	e := servertest.NewWithConfig(t, func(c *server.Config) { c.Listen = servertest.FreeAddr(t) })
	apps, dirs := []*server.Appliance{e.App}, []string{e.Dir}
	for _, id := range []string{"node-2", "node-3"} {
		dir := joinNode(t, e, id)
		apps, dirs = append(apps, servertest.StartNode(t, dir)), append(dirs, dir)
	}
	for _, a := range apps {
		servertest.WaitFor(t, "three registered voters", 30*time.Second, func() bool {
			ms, err := a.Node().Members()
			n := 0
			for _, m := range ms {
				if m.Voter && m.APIAddr != "" {
					n++
				}
			}
			return err == nil && n == 3
		})
	}
	return e, apps, dirs
}

// joinNode prepares a data directory for node id joining e's cluster, on a
// fixed API address. On a loaded machine the fast test elections can cost
// a token or a join its leader: it tries again, with a fresh token and
// directory, for up to 30 s.
func joinNode(t *testing.T, e *servertest.Env, id string) string {
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = id, servertest.FreeAddr(t), servertest.FreeAddr(t)
	servertest.Unthrottled(&cfg)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tok, err := e.App.CreateJoinToken(ctx, time.Minute)
		dir := t.TempDir()
		if err == nil {
			err = server.Join(ctx, dir, servertest.Password, e.App.Addr(), tok.String(), cfg)
		}
		cancel()
		if err == nil {
			return dir
		}
		if time.Now().After(deadline) {
			t.Fatalf("join %s: %v", id, err)
		}
		t.Logf("join %s: %v (trying again)", id, err)
		time.Sleep(200 * time.Millisecond)
	}
}

// A short real run: the workload on three in-process nodes for 16 s, a
// follower stopped at 4 s and started again at 8 s, leadership handed over
// at 11 s; the history it recorded is linearizable. (make chaos runs the
// same workload against node processes under kills, partitions and
// pauses.)
func TestWorkloadLinearizable(t *testing.T) {
	e, apps, dirs := inProcessCluster(t)
	devices := modelDevices(t, e.Mfr, 6)
	targets := make([]chaos.Target, len(apps))
	for i, a := range apps {
		targets[i] = chaos.Target{Name: dirs[i], URL: "https://" + a.Addr(), Root: a.Root(), Admin: server.NewAdminClient(dirs[i])}
	}

	// Half the devices may be revoked and deleted: revocations happen in
	// every run (each of those slots is revoked before it may be deleted),
	// and the others stay alive.
	w := chaos.Workload{Devices: devices, Duration: 16 * time.Second, Mortal: 0.5, Logf: t.Logf}
	type ran struct {
		h   *chaos.History
		err error
	}
	done := make(chan ran, 1)
	go func() {
		h, err := w.Run(context.Background(), targets)
		done <- ran{h, err}
	}()

	time.Sleep(4 * time.Second)
	f := 1
	if apps[1].Node().IsLeader() {
		f = 2
	}
	t.Logf("stopping follower %d", f+1)
	if err := apps[f].Close(); err != nil {
		t.Logf("close node %d: %v", f+1, err)
	}
	time.Sleep(4 * time.Second)
	apps[f] = servertest.StartNode(t, dirs[f])
	t.Logf("started node %d again", f+1)
	time.Sleep(3 * time.Second)
	// Hand leadership over (retrying while an election is still on).
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := server.NewAdminClient(dirs[0]).TransferLeadership(ctx)
		cancel()
		if err == nil {
			t.Logf("leadership transferred")
			break
		}
		if try == 10 {
			t.Logf("leadership transfer: %v", err) // the check does not depend on it
			break
		}
		time.Sleep(200 * time.Millisecond)
	}

	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	vis, err := os.MkdirTemp("", "gatehouse-linearizability-")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	res, err := chaos.Check(r.h.Ops(), time.Minute, vis)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s in %v: %s", res, time.Since(t0).Round(time.Millisecond), res.Detail())
	if !res.Linearizable {
		t.Fatalf("%s: %s", res, res.Detail())
	}
	os.RemoveAll(vis)
	for _, k := range []chaos.Kind{chaos.KindEnroll, chaos.KindTransition, chaos.KindRead, chaos.KindTokenCreate, chaos.KindTokenConsume, chaos.KindTokenCheck} {
		if res.ByKind[k] == 0 {
			t.Errorf("no %s operation was checked", k)
		}
	}
	// The history serves the durability check too: every acknowledged
	// enrollment's record, read linearizably through each node, is there
	// with the serial the device got.
	acked := chaos.Enrollments(r.h.Ops())
	if len(acked) == 0 {
		t.Fatal("no enrollment was acknowledged")
	}
	for i, dir := range dirs {
		admin := server.NewAdminClient(dir)
		for _, op := range acked {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rec, err := admin.Attestation(ctx, op.Output.AttestationID)
			cancel()
			if err != nil || rec.DeviceID != op.Output.DeviceID || rec.CertificateSerial != op.Output.Serial {
				t.Fatalf("node %d: acknowledged enrollment %d (serial %s): %+v, %v", i+1, op.Output.AttestationID, op.Output.Serial, rec, err)
			}
		}
	}
	t.Logf("%d acknowledged enrollments present on every node", len(acked))
	revocations := map[chaos.Outcome]int{}
	codes := map[string]int{}
	for _, op := range r.h.Ops() {
		if op.Input.Kind == chaos.KindTransition && op.Input.Op == "revoke" {
			revocations[op.Output.Outcome]++
			codes[op.Output.Code]++
		}
	}
	t.Logf("revocations: %v, codes %v", revocations, codes)
	if revocations[chaos.OK] == 0 {
		t.Error("no revocation was acknowledged")
	}
	if res.Ops < 300 {
		t.Errorf("only %d operations checked: too few to mean much", res.Ops)
	}
}

// modelDevices makes n software-model TPMs whose EK certificates m's
// intermediate signs (the cluster trusts m's roots).
func modelDevices(t testing.TB, m *swtpm.Manufacturer, n int) []fwclient.Device {
	t.Helper()
	key, err := m.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	mfr, err := tpmmodel.NewManufacturer(m.Intermediate, key)
	if err != nil {
		t.Fatal(err)
	}
	plat, err := tpmmodel.NewPlatform(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []fwclient.Device
	for range n {
		d, err := mfr.NewDevice(plat, fwclient.EKECCP256)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}
