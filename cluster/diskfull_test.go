package cluster

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gatehouse-dev/gatehouse/internal/testdisk"
)

// syncBuffer collects a node's log lines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bigRecord is a rejection carrying 32 KiB of event log: every commit
// needs new pages in raft.db and fsm.db.
func bigRecord(r *rand.Rand) AttestationRecord {
	a := record("d", OutcomeRejected)
	a.EventLogGzip = make([]byte, 32<<10)
	for i := range a.EventLogGzip {
		a.EventLogGzip[i] = byte(r.Uint32())
	}
	return a
}

// diskTrio starts three nodes, the one at full (0, 1 or 2) on a small
// tmpfs (with registryOnly, only its fsm.db, through a symlink: its Raft
// log stays writable); node 0 bootstraps and leads. Logs of the small-disk
// node go to its buffer.
func diskTrio(t *testing.T, full int, registryOnly ...bool) ([]*Node, string, *syncBuffer) {
	t.Helper()
	small := testdisk.Small(t, 8<<20)
	logs := &syncBuffer{}
	var nodes []*Node
	for i, id := range []string{"n1", "n2", "n3"} {
		cfg := Config{NodeID: id, DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", Bootstrap: i == 0}
		if i == full && len(registryOnly) > 0 && registryOnly[0] {
			if err := os.Symlink(filepath.Join(small, "fsm.db"), filepath.Join(cfg.DataDir, "fsm.db")); err != nil {
				t.Fatal(err)
			}
		} else if i == full {
			cfg.DataDir = filepath.Join(small, "raft")
		}
		if i == full {
			cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}
		n, err := Open(cfg, WithRaftConfig(fastRaft), WithApplyTimeout(3*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, ok := closeWithin(n, 20*time.Second); !ok {
				t.Errorf("%s: Close did not return within 20 s", id)
			}
		})
		if i == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := n.WaitLeader(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		} else if err := nodes[0].AddVoter(id, n.RaftAddr()); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return nodes, small, logs
}

// commitOn writes one big rejection through whichever of nodes leads (or
// forwards nothing: the cluster package's nodes have no forwarder, so a
// follower answers ErrNotLeader).
func commitOn(n *Node, r *rand.Rand) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return n.CommitRejection(ctx, "", time.Time{}, bigRecord(r))
}

// commitLeader writes one big rejection through the current leader,
// riding out elections (a slow machine, the race detector): ErrNotLeader is
// retried, and so is ErrStorageFull from the node whose disk is full, should
// it lead for a moment. Any other error fails the test.
func commitLeader(t *testing.T, nodes []*Node, full int, r *rand.Rand) uint64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		l := leaderOf(nodes)
		if l != nil {
			id, err := commitOn(l, r)
			switch {
			case err == nil:
				return id
			case errors.Is(err, ErrNotLeader), errors.Is(err, ErrStorageFull) && l == nodes[full]:
			default:
				t.Fatalf("write through leader %s while only %s's disk is full: %v", l.cfg.NodeID, nodes[full].cfg.NodeID, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no write committed within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leaderOf(nodes []*Node) *Node {
	for _, n := range nodes {
		if n.IsLeader() {
			return n
		}
	}
	return nil
}

// converge waits until every node has applied the same last index and all
// hold the same state, then checks every acknowledged record is there. It
// writes a small record every 2 s, which gives a lagging node entries to
// store and moves every follower's commit index.
func converge(t *testing.T, nodes []*Node, acked []uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var wrote time.Time
	var werr error
	for {
		if time.Since(wrote) > 2*time.Second {
			wrote = time.Now()
			if l := leaderOf(nodes); l == nil {
				werr = errors.New("no leader")
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				id, err := l.CommitRejection(ctx, "", time.Time{}, record("d", OutcomeRejected))
				cancel()
				if werr = err; err == nil {
					acked = append(acked, id)
				}
			}
		}
		hashes, lasts := map[string]bool{}, map[uint64]bool{}
		for _, n := range nodes {
			h, _ := n.StateHash()
			hashes[h] = true
			lasts[n.fsm.last.Load()] = true
		}
		if werr == nil && len(lasts) == 1 && len(hashes) == 1 {
			break
		}
		if time.Now().After(deadline) {
			for _, n := range nodes {
				t.Logf("%s: applied %d, leads %v, problems %q", n.cfg.NodeID, n.fsm.last.Load(), n.IsLeader(), n.Problems())
			}
			t.Fatalf("nodes did not converge within 30 s after space returned (%d distinct hashes, last write: %v)", len(hashes), werr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, n := range nodes {
		for _, id := range acked {
			if _, err := n.Attestation(id); err != nil {
				t.Fatalf("%s lost acknowledged record %d: %v", n.cfg.NodeID, id, err)
			}
		}
		if err := n.disk.problem(); err != nil {
			t.Errorf("%s still reports its disk full after space returned: %v", n.cfg.NodeID, err)
		}
	}
}

// A follower whose disk fills: the cluster keeps acknowledging writes (the
// two others are a quorum), the follower refuses writes with
// ErrStorageFull, reports it in Problems and logs it; it never moves past
// an entry it could not store. Once space returns it catches up: same state
// hash as the others, every acknowledged record present.
func TestDiskFullFollower(t *testing.T) {
	nodes, small, logs := diskTrio(t, 1)
	r := rand.New(rand.NewPCG(1, 2))
	var acked []uint64
	for range 3 {
		acked = append(acked, commitLeader(t, nodes, 1, r))
	}
	filler := testdisk.Fill(t, small)
	start := time.Now()

	// The leader goes on; the follower fails to store, and says so.
	deadline := time.Now().Add(20 * time.Second)
	for nodes[1].disk.problem() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("follower never met the full disk (applied %d)", nodes[1].fsm.last.Load())
		}
		acked = append(acked, commitLeader(t, nodes, 1, r))
	}
	if _, err := nodes[1].CommitRejection(context.Background(), "", time.Time{}, record("d", OutcomeRejected)); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("write on the full follower: %v, want ErrStorageFull", err)
	}
	if p := strings.Join(nodes[1].Problems(), "; "); !strings.Contains(p, "disk is full") {
		t.Fatalf("full follower's problems: %q", p)
	}
	if !strings.Contains(logs.String(), "cannot write the") {
		t.Fatalf("no log line says the disk is full:\n%s", logs.String())
	}
	t.Logf("full follower after %s: %v", time.Since(start).Round(time.Millisecond), nodes[1].disk.problem())
	// It applied nothing it did not store: it is behind, not past a hole.
	for range 3 {
		acked = append(acked, commitLeader(t, nodes, 1, r))
	}
	if got, want := nodes[1].fsm.last.Load(), max(nodes[0].fsm.last.Load(), nodes[2].fsm.last.Load()); got >= want {
		t.Fatalf("full follower applied up to %d, the leader %d: it cannot have stored them", got, want)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	converge(t, nodes, acked)
	t.Logf("converged %s after space returned", time.Since(start).Round(time.Millisecond))
}

// The leader's disk fills: no write it could not store is acknowledged
// (each write through it either fails, with ErrStorageFull or as not
// leader, or is present everywhere at the end); leadership moves to a node
// that can write, and the cluster takes writes again; once space returns
// the old leader catches up.
func TestDiskFullLeader(t *testing.T) {
	nodes, small, logs := diskTrio(t, 0)
	r := rand.New(rand.NewPCG(3, 4))
	var acked []uint64
	for range 3 {
		acked = append(acked, commitLeader(t, nodes, 0, r))
	}
	filler := testdisk.Fill(t, small)

	var full error
	deadline := time.Now().Add(20 * time.Second)
	for full == nil {
		if time.Now().After(deadline) {
			t.Fatal("writes through the full leader never met the full disk")
		}
		id, err := commitOn(nodes[0], r)
		switch {
		case err == nil:
			acked = append(acked, id) // stored before the disk ran out
		case errors.Is(err, ErrStorageFull):
			full = err
		case !errors.Is(err, ErrNotLeader):
			t.Fatalf("write through the full leader: %v", err)
		}
	}
	t.Logf("full leader refused: %v", full)
	start := time.Now()
	if !strings.Contains(logs.String(), "cannot write the") {
		t.Fatalf("no log line says the disk is full:\n%s", logs.String())
	}
	// Another node leads and takes writes.
	deadline = time.Now().Add(20 * time.Second)
	for {
		if l := leaderOf(nodes[1:]); l != nil {
			if id, err := commitOn(l, r); err == nil {
				acked = append(acked, id)
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node that can write took the lead within 20 s (old leader leads: %v)", nodes[0].IsLeader())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("another node took writes %s later", time.Since(start).Round(time.Millisecond))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	converge(t, nodes, acked)
	t.Logf("converged %s after space returned", time.Since(start).Round(time.Millisecond))
}

// bigLog is a committed rejection with 32 KiB of event log at index.
func bigLog(t *testing.T, index uint64, r *rand.Rand) *raft.Log {
	t.Helper()
	b, err := encodeCommand("attestation.reject", 1, t0, &rejectAttestation{Attestation: bigRecord(r)})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

// The FSM never moves past a committed entry it could not store: with
// fsm.db's disk full, ApplyBatch does not return (so Raft hands it nothing
// further), reports the stall, and completes the same batch once space
// returns; when the node closes instead, it returns ErrStorageFull for
// every entry and the applied index stays where it was.
func TestApplyWaitsForSpace(t *testing.T) {
	dir := testdisk.Small(t, 4<<20)
	r := rand.New(rand.NewPCG(5, 6))
	f, err := openFSM(filepath.Join(dir, "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	f.disk, f.stop = &diskState{}, make(chan struct{})
	stalled := make(chan struct{}, 1)
	f.onStall = func() { stalled <- struct{}{} }
	filler := testdisk.Fill(t, dir)

	// Batches until one meets the full disk: it must not return.
	idx := uint64(0)
	for {
		idx++
		done := make(chan []any, 1)
		go func(l *raft.Log) { done <- f.ApplyBatch([]*raft.Log{l}) }(bigLog(t, idx, r))
		select {
		case res := <-done:
			if r := res[0].(applyResult); r.Err != nil {
				t.Fatalf("entry %d: ApplyBatch returned %v: it moved past an entry it did not store", idx, r.Err)
			}
			if idx > 100 {
				t.Fatal("100 entries of 32 KiB fit in a full 4 MiB tmpfs")
			}
			continue
		case <-stalled:
		}
		if !f.disk.applyStalled() || !errors.Is(f.disk.problem(), ErrStorageFull) {
			t.Fatalf("stalled batch not reported: %v", f.disk.problem())
		}
		select {
		case res := <-done:
			t.Fatalf("entry %d: ApplyBatch returned %v on a full disk", idx, res)
		case <-time.After(300 * time.Millisecond):
		}
		if got := f.last.Load(); got != idx-1 {
			t.Fatalf("applied index %d while entry %d waits", got, idx)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		select {
		case res := <-done:
			if r := res[0].(applyResult); r.Err != nil || r.Result != idx {
				t.Fatalf("entry %d after space returned: %+v", idx, r)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("ApplyBatch did not complete within 10 s of space returning")
		}
		break
	}
	if f.last.Load() != idx || f.appliedIndex() != idx || f.disk.problem() != nil {
		t.Fatalf("after space returned: last %d, stored %d, problem %v; want %d", f.last.Load(), f.appliedIndex(), f.disk.problem(), idx)
	}
	if _, err := f.attestation(idx); err != nil {
		t.Fatalf("the waiting entry's record: %v", err)
	}

	// Full again, and the node closes while a batch waits.
	filler = testdisk.Fill(t, dir)
	defer os.Remove(filler)
	for {
		idx++
		done := make(chan []any, 1)
		go func(l *raft.Log) { done <- f.ApplyBatch([]*raft.Log{l}) }(bigLog(t, idx, r))
		select {
		case <-done:
			if idx > 200 {
				t.Fatal("no batch met the full disk")
			}
			continue
		case <-stalled:
		}
		close(f.stop)
		res := <-done
		if r := res[0].(applyResult); !errors.Is(r.Err, ErrStorageFull) {
			t.Fatalf("closing while entry %d waits: %+v", idx, r)
		}
		if got := f.appliedIndex(); got != idx-1 {
			t.Fatalf("stored applied index %d after a batch given up at %d", got, idx)
		}
		break
	}
}

// The dangerous case: the leader's Raft log takes an entry, a quorum
// commits it, and the leader cannot apply it to its registry. The leader
// must not acknowledge it, must not move past it, and hands leadership to
// a node that can apply; once space returns it applies that very entry and
// converges.
func TestDiskFullLeaderRegistry(t *testing.T) {
	nodes, small, logs := diskTrio(t, 0, true)
	r := rand.New(rand.NewPCG(7, 8))
	var acked []uint64
	for range 3 {
		acked = append(acked, commitLeader(t, nodes, 0, r))
	}
	filler := testdisk.Fill(t, small)

	var full error
	deadline := time.Now().Add(20 * time.Second)
	for full == nil {
		if time.Now().After(deadline) {
			t.Fatal("writes through the leader never met its full registry disk")
		}
		id, err := commitOn(nodes[0], r)
		switch {
		case err == nil:
			acked = append(acked, id)
		case errors.Is(err, ErrStorageFull):
			full = err
		case !errors.Is(err, ErrNotLeader):
			t.Fatalf("write through the leader: %v", err)
		}
	}
	t.Logf("leader refused: %v", full)
	if !nodes[0].disk.applyStalled() || !strings.Contains(logs.String(), "applying paused until space returns") {
		t.Fatalf("the leader's registry is not reported stalled: %v\n%s", nodes[0].disk.problem(), logs.String())
	}
	stuck := nodes[0].fsm.last.Load()
	// Leadership moves; the others take writes; the old leader stays put.
	deadline = time.Now().Add(20 * time.Second)
	for {
		if l := leaderOf(nodes[1:]); l != nil {
			if id, err := commitOn(l, r); err == nil {
				acked = append(acked, id)
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("leadership did not move off the stalled leader within 20 s (it leads: %v)", nodes[0].IsLeader())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := nodes[0].fsm.last.Load(); got != stuck {
		t.Fatalf("the stalled registry moved from %d to %d with its disk still full", stuck, got)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	converge(t, nodes, acked)
}
