package chaos_test

import (
	"context"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server/chaos"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// newTestCluster starts a three-node cluster of real processes trusting a
// fresh test manufacturer, and a fleet of its devices.
func newTestCluster(t testing.TB) *fleet {
	t.Helper()
	m := swtpm.NewTestManufacturer(t)
	start := time.Now()
	c := chaos.NewCluster(t, chaos.Options{EKRoots: servertest.EKRoots(m), Password: servertest.Password})
	t.Logf("three nodes up in %s", time.Since(start).Round(time.Millisecond))
	f := newFleet(t, c, m)
	f.warmUp(t)
	return f
}

// TestPartitions is the short version of the fault scenarios (make test):
// the isolated leader and the lone follower of a 2/1 split acknowledge
// nothing and refuse linearizable reads with 503, the majority elects a
// leader and acknowledges, and after healing every node holds the same
// registry and audit chain with nothing acknowledged lost. The paused
// leader, the bridge and flapping links run in make chaos (TestChaos).
func TestPartitions(t *testing.T) {
	f := newTestCluster(t)
	for _, s := range []struct {
		name string
		run  func(testing.TB, *fleet)
	}{
		{"isolate-leader", scenarioIsolateLeader},
		{"split-follower", scenarioSplitFollower},
	} {
		start := time.Now()
		s.run(t, f)
		t.Logf("%s: %s", s.name, time.Since(start).Round(time.Millisecond))
		if t.Failed() {
			return
		}
	}
	// The check's own control: an acknowledgement no node holds is lost.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ghost := chaos.Ack{Device: "ghost", DeviceID: f.labeled, AttestationID: 1 << 40, Serial: "1"}
	v, err := f.c.CheckInvariants(ctx, append(f.acked(), ghost))
	if err != nil || v.Lost != 1 || v.Present != v.Acked-1 {
		t.Errorf("a fabricated acknowledgement: %v, %v; want lost=1", v, err)
	}
	// A device in the registry that no client was acknowledged is
	// counted apart (an answer lost is not a duplicate): leave out every
	// acknowledgement of one TPM.
	acks := f.acked()
	var without []chaos.Ack
	for _, a := range acks {
		if a.Device != acks[0].Device {
			without = append(without, a)
		}
	}
	v, err = f.c.CheckInvariants(ctx, without)
	if err != nil || v.Unacknowledged != 1 || v.DuplicateIDs != 0 || !v.OK() {
		t.Errorf("a device nobody was acknowledged: %+v, %v; want unacknowledged 1, duplicate_ids=0", v, err)
	}
	// One TPM told two device IDs is a duplicate.
	var other chaos.Ack
	for _, a := range acks {
		if a.DeviceID != acks[0].DeviceID {
			other = a
			break
		}
	}
	twice := append(append([]chaos.Ack(nil), acks...), chaos.Ack{Device: acks[0].Device, DeviceID: other.DeviceID, AttestationID: other.AttestationID, Serial: other.Serial})
	v, err = f.c.CheckInvariants(ctx, twice)
	if err != nil || v.DuplicateIDs != 1 || v.Lost != 0 {
		t.Errorf("a TPM acknowledged under two device IDs: %+v, %v; want duplicate_ids=1 lost=0", v, err)
	}
}
