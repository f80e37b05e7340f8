package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// threeNodes starts a cluster and waits until all three are registered voters.
func threeNodes(t testing.TB, opts ...cluster.Option) (*servertest.Env, []*server.Appliance, []string) {
	t.Helper()
	e := servertest.New(t, opts...)
	n2, d2 := e.Join(t, "node-2", opts...)
	n3, d3 := e.Join(t, "node-3", opts...)
	nodes := []*server.Appliance{e.App, n2, n3}
	for _, n := range nodes {
		servertest.WaitFor(t, "three registered voters", 20*time.Second, func() bool { return voters(n) == 3 })
	}
	servertest.WaitFor(t, "a leader", 20*time.Second, func() bool { return leaderIndex(nodes) >= 0 })
	return e, nodes, []string{e.Dir, d2, d3}
}

func leaderIndex(nodes []*server.Appliance) int {
	for i, n := range nodes {
		if n != nil && n.Node().IsLeader() {
			return i
		}
	}
	return -1
}

// ack is an enrollment the cluster acknowledged to a device.
type ack struct {
	device        int // which swtpm
	deviceID      string
	attestationID uint64
	serial        string
}

// stream enrolls devices in a loop against whichever nodes are up, until
// stop is closed. It returns every acknowledged enrollment.
type stream struct {
	mu    sync.Mutex
	acks  []ack
	nodes []*server.Appliance
	wg    sync.WaitGroup
	stop  chan struct{}
}

func (s *stream) setNode(i int, a *server.Appliance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[i] = a
}

func (s *stream) node(k int) *server.Appliance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[k%len(s.nodes)]
}

func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acks)
}

func startStream(t *testing.T, devs []*servertest.Device, nodes []*server.Appliance) *stream {
	s := &stream{nodes: append([]*server.Appliance(nil), nodes...), stop: make(chan struct{})}
	for i, d := range devs {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for k := i; ; k++ {
				select {
				case <-s.stop:
					return
				default:
				}
				n := s.node(k)
				if n == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				id, err := fwclient.NewClient("https://"+n.Addr(), n.Root()).Enroll(ctx, d.TPM)
				cancel()
				if err != nil {
					time.Sleep(20 * time.Millisecond) // a node is down or there is no leader: try the next
					continue
				}
				s.mu.Lock()
				s.acks = append(s.acks, ack{device: i, deviceID: id.DeviceID, attestationID: id.AttestationID, serial: id.Certificate.SerialNumber.Text(16)})
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *stream) finish() []ack {
	close(s.stop)
	s.wg.Wait()
	return s.acks
}

// checkAcked asserts every acknowledged enrollment is in n's registry, each
// swtpm maps to one device ID, and no certificate lacks a committed record.
func checkAcked(t *testing.T, name string, n *server.Appliance, acks []ack, issued uint64) {
	t.Helper()
	ids := map[int]string{}
	for _, a := range acks {
		if prev, ok := ids[a.device]; ok && prev != a.deviceID {
			t.Fatalf("swtpm %d has two device IDs: %s and %s", a.device, prev, a.deviceID)
		}
		ids[a.device] = a.deviceID
		rec, err := n.Node().Attestation(a.attestationID)
		if err != nil {
			t.Fatalf("%s lost acknowledged enrollment %d: %v", name, a.attestationID, err)
		}
		if rec.DeviceID != a.deviceID || rec.CertificateSerial != a.serial || rec.Outcome != cluster.OutcomeAccepted {
			t.Fatalf("%s: record %d is %+v, acknowledged %+v", name, a.attestationID, rec, a)
		}
	}
	devs, err := n.Node().Devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != len(ids) {
		t.Fatalf("%s holds %d devices for %d TPMs", name, len(devs), len(ids))
	}
	recs, err := n.Node().Attestations(cluster.AttestationQuery{})
	if err != nil {
		t.Fatal(err)
	}
	accepted := map[string]bool{}
	for _, r := range recs {
		if r.Outcome == cluster.OutcomeAccepted {
			accepted[r.CertificateSerial] = true
		}
	}
	if uint64(len(accepted)) < issued {
		t.Fatalf("%s: %d certificates issued but only %d accepted records", name, issued, len(accepted))
	}
}

func sameState(t *testing.T, nodes ...*server.Appliance) {
	t.Helper()
	servertest.WaitFor(t, "identical registries", 15*time.Second, func() bool {
		want, _ := nodes[0].Node().StateHash()
		for _, n := range nodes[1:] {
			if h, _ := n.Node().StateHash(); h != want {
				return false
			}
		}
		return true
	})
}

// The leader dies in the middle of a stream of enrollments. Nothing
// acknowledged is lost, a new leader takes over, enrollments resume, and the
// old leader catches up when it comes back.
func TestLeaderKilledMidStream(t *testing.T) {
	e, nodes, dirs := threeNodes(t)
	var devs []*servertest.Device
	for range 4 {
		devs = append(devs, servertest.NewDevice(t, e.Mfr))
	}
	s := startStream(t, devs, nodes)
	servertest.WaitFor(t, "enrollments flowing", 20*time.Second, func() bool { return s.count() >= 12 })

	li := leaderIndex(nodes)
	if li < 0 {
		t.Fatal("no leader")
	}
	old := nodes[li]
	s.setNode(li, nil)
	killedAt := time.Now()
	old.Close() // abrupt: no leadership transfer
	acksAtKill := s.count()

	var survivors []*server.Appliance
	for i, n := range nodes {
		if i != li {
			survivors = append(survivors, n)
		}
	}
	servertest.WaitFor(t, "a new leader", 10*time.Second, func() bool { return leaderIndex(survivors) >= 0 })
	servertest.WaitFor(t, "enrollments to resume", 20*time.Second, func() bool { return s.count() >= acksAtKill+8 })
	t.Logf("failover: new leader and %d more enrollments within %v", s.count()-acksAtKill, time.Since(killedAt))
	acks := s.finish()

	// Every certificate any node issued, the dead leader included, must have
	// a committed record.
	var issued uint64
	for _, n := range nodes {
		issued += n.CertificatesIssued()
	}
	sameState(t, survivors...)
	for _, n := range survivors {
		checkAcked(t, "survivor", n, acks, issued)
	}

	restarted := servertest.StartNode(t, dirs[li])
	sameState(t, append(survivors, restarted)...)
	checkAcked(t, "restarted old leader", restarted, acks, 0)
}

// A stopped follower catches up from the log when it restarts; a node that
// joins after the log was compacted catches up by installing a snapshot.
func TestFollowerCatchUpAndSnapshotInstall(t *testing.T) {
	e, nodes, dirs := threeNodes(t)
	fi := (leaderIndex(nodes) + 1) % 3
	nodes[fi].Close()
	ctx := context.Background()
	var live []*server.Appliance
	for i, n := range nodes {
		if i != fi {
			live = append(live, n)
		}
	}
	d := servertest.NewDevice(t, e.Mfr)
	for i := range 5 {
		n := live[i%2]
		if _, err := fwclient.NewClient("https://"+n.Addr(), n.Root()).Enroll(ctx, d.TPM); err != nil {
			t.Fatalf("enroll with a follower down: %v", err)
		}
	}
	back := servertest.StartNode(t, dirs[fi])
	sameState(t, append(live, back)...)

	// Compact the log: with 16 trailing logs, the next snapshot drops the
	// entries a new node would need.
	for range 20 {
		if _, err := e.Client.Enroll(ctx, d.TPM); err != nil {
			t.Fatal(err)
		}
	}
	all := append(live, back)
	leader := all[leaderIndex(all)]
	if err := leader.Node().Snapshot(); err != nil {
		t.Fatal(err)
	}
	late, _ := e.Join(t, "node-4")
	sameState(t, leader, late)
	if st := late.Node().Stats(); st["last_snapshot_index"] == "0" {
		t.Fatalf("the late node did not install a snapshot: %v", st)
	}
}

// A leader cut off from the others acknowledges no write; the majority
// elects a new leader and goes on; after the partition heals the cluster
// converges.
func TestMinorityPartition(t *testing.T) {
	faults := []*cluster.Faults{nil, {}, {}} // node-1 is made a follower below
	e := servertest.New(t)
	n2, _ := e.Join(t, "node-2", cluster.WithFaults(faults[1]))
	n3, _ := e.Join(t, "node-3", cluster.WithFaults(faults[2]))
	nodes := []*server.Appliance{e.App, n2, n3}
	for _, n := range nodes {
		servertest.WaitFor(t, "three registered voters", 20*time.Second, func() bool { return voters(n) == 3 })
	}
	// Make a node with a fault injector the leader.
	if li := leaderIndex(nodes); li == 0 {
		if err := server.NewAdminClient(e.Dir).TransferLeadership(context.Background()); err != nil {
			t.Fatal(err)
		}
		servertest.WaitFor(t, "leadership to move", 10*time.Second, func() bool { li := leaderIndex(nodes); return li > 0 })
	}
	li := leaderIndex(nodes)
	minority := nodes[li]
	faults[li].Isolate()

	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	var majority []*server.Appliance
	for i, n := range nodes {
		if i != li {
			majority = append(majority, n)
		}
	}
	servertest.WaitFor(t, "a leader in the majority", 10*time.Second, func() bool { return leaderIndex(majority) >= 0 })

	// The isolated node acknowledges nothing, before or after it notices.
	before, _ := minority.Node().StateHash()
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := fwclient.NewClient("https://"+minority.Addr(), minority.Root()).Enroll(cctx, d.TPM)
		cancel()
		if err == nil {
			t.Fatal("the isolated node acknowledged an enrollment")
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := minority.Node().SetMember(wctx, cluster.Member{ID: "x"})
	cancel()
	if !errors.Is(err, cluster.ErrNotLeader) {
		t.Fatalf("a write on the isolated node: %v, want ErrNotLeader", err)
	}
	if after, _ := minority.Node().StateHash(); after != before {
		t.Fatal("the isolated node's state changed")
	}
	// The majority goes on.
	var acked []string
	for i := range 3 {
		n := majority[i%2]
		id, err := fwclient.NewClient("https://"+n.Addr(), n.Root()).Enroll(ctx, d.TPM)
		if err != nil {
			t.Fatalf("majority refused an enrollment: %v", err)
		}
		acked = append(acked, fmt.Sprint(id.AttestationID))
	}
	faults[li].Heal()
	sameState(t, nodes...)
	t.Logf("converged after healing; majority acknowledged attestations %v", acked)
}

// restoreIntoFreshNode does what the disaster-recovery runbook does with
// archive: a one-node cluster made from it (init --from-backup), then the
// archive restored into it. It returns the node, leading.
func restoreIntoFreshNode(t *testing.T, archive []byte) *server.Appliance {
	t.Helper()
	b, err := server.ReadBackup(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = "dr-1", "127.0.0.1:0", servertest.FreeAddr(t)
	if err := server.InitFromBackup(dir, servertest.Password, cfg, b); err != nil {
		t.Fatal(err)
	}
	fresh := servertest.StartNode(t, dir)
	servertest.WaitFor(t, "the fresh node to lead", 10*time.Second, fresh.Node().IsLeader)
	meta, err := server.NewAdminClient(dir).Restore(context.Background(), bytes.NewReader(archive))
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if meta.RootSHA256 != b.Meta.RootSHA256 {
		t.Fatal("restore answered with another backup's meta")
	}
	return fresh
}

// A backup of a running cluster, restored into a fresh cluster made from it,
// holds the same registry; a damaged archive or another cluster's is refused.
func TestBackupRestore(t *testing.T) {
	e, nodes, dirs := threeNodes(t)
	ctx := context.Background()
	for i := range 3 {
		d := servertest.NewDevice(t, e.Mfr)
		n := nodes[i]
		if _, err := fwclient.NewClient("https://"+n.Addr(), n.Root()).Enroll(ctx, d.TPM); err != nil {
			t.Fatal(err)
		}
	}
	var archive bytes.Buffer
	// Through a follower's admin socket: the backup is a linearizable read.
	follower := (leaderIndex(nodes) + 1) % 3
	if err := server.NewAdminClient(dirs[follower]).Backup(ctx, &archive); err != nil {
		t.Fatal(err)
	}
	fresh := restoreIntoFreshNode(t, archive.Bytes())
	wantDevs, _ := nodes[0].Node().Devices()
	gotDevs, _ := fresh.Node().Devices()
	wantRecs, _ := nodes[0].Node().Attestations(cluster.AttestationQuery{})
	gotRecs, _ := fresh.Node().Attestations(cluster.AttestationQuery{})
	if !reflect.DeepEqual(wantDevs, gotDevs) || !reflect.DeepEqual(wantRecs, gotRecs) || len(gotDevs) != 3 {
		t.Fatalf("restored registry differs: %d devices, %d records (want %d, %d)", len(gotDevs), len(gotRecs), len(wantDevs), len(wantRecs))
	}
	// The restored cluster keeps enrolling, with the same root.
	d := servertest.NewDevice(t, e.Mfr)
	if _, err := fwclient.NewClient("https://"+fresh.Addr(), fresh.Root()).Enroll(ctx, d.TPM); err != nil {
		t.Fatalf("enroll after restore: %v", err)
	}

	// Damage one byte of the state: the checksum catches it.
	raw := archive.Bytes()
	i := bytes.Index(raw, []byte("attestations"))
	damaged := append([]byte(nil), raw...)
	damaged[i] ^= 0x20
	if _, err := server.ReadBackup(bytes.NewReader(damaged)); !errors.Is(err, server.ErrBadBackup) {
		t.Fatalf("damaged archive: %v", err)
	}
	if _, err := server.ReadBackup(bytes.NewReader(raw[:len(raw)/2])); !errors.Is(err, server.ErrBadBackup) {
		t.Fatalf("truncated archive: %v", err)
	}
	// Another cluster's backup does not restore over this one.
	other := servertest.New(t)
	if _, err := server.NewAdminClient(other.Dir).Restore(ctx, bytes.NewReader(raw)); err == nil || !strings.Contains(err.Error(), "init --from-backup") {
		t.Fatalf("restore into a cluster with another CA: %v", err)
	}
}
