package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A node whose fsm.db is damaged refuses to start, naming the file and the
// rebuild command; `cluster rebuild` (refused while a node runs on the
// directory) moves its Raft state aside, and on the next serve the node
// (here the one that created the cluster, which has no join seed: it must
// not bootstrap a cluster of its own) installs the leader's snapshot and
// converges: same registry hash as the leader, every acknowledged write
// present.
func TestRebuildNodeFromPeers(t *testing.T) {
	e := servertest.New(t)
	n2, n2Dir := e.Join(t, "node-2")
	n3, dir3 := e.Join(t, "node-3")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var acked []uint64
	write := func(app *server.Appliance, n int) {
		t.Helper()
		for i := range n {
			rec := cluster.AttestationRecord{Time: time.Now(), Node: "t", DeviceID: fmt.Sprintf("dev-%d", i), Stage: "complete", Outcome: cluster.OutcomeRejected}
			id, err := app.Node().CommitRejection(ctx, "", time.Time{}, rec)
			for errors.Is(err, cluster.ErrNotLeader) && ctx.Err() == nil { // an election after a node stopped
				time.Sleep(50 * time.Millisecond)
				id, err = app.Node().CommitRejection(ctx, "", time.Time{}, rec)
			}
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			acked = append(acked, id)
		}
	}
	write(e.App, 10)

	// node-1 (the creator, leader) stops; writes go on without it.
	if _, err := run(t, "cluster", "rebuild", "--data-dir", dir3); !errors.Is(err, server.ErrNodeRunning) {
		t.Fatalf("rebuild on a running node: %v, want ErrNodeRunning", err)
	}
	e.App.Close()
	write(n2, 40)

	// fsm.db damaged: serve refuses, naming the file and the remedy.
	fsmPath := filepath.Join(e.Dir, "raft", "fsm.db")
	if err := os.Truncate(fsmPath, 4096); err != nil {
		t.Fatal(err)
	}
	_, err := server.Open(e.Dir, servertest.Password)
	if !errors.Is(err, cluster.ErrCorruptState) || !strings.Contains(err.Error(), fsmPath) || !strings.Contains(err.Error(), "gatehouse cluster rebuild --data-dir "+e.Dir) {
		t.Fatalf("open with a truncated fsm.db: %v", err)
	}

	out, err := run(t, "cluster", "rebuild", "--data-dir", e.Dir)
	if err != nil {
		t.Fatalf("cluster rebuild: %v", err)
	}
	moved, _ := filepath.Glob(filepath.Join(e.Dir, "raft", "rebuild-*", "fsm.db"))
	if len(moved) != 1 || !strings.Contains(out, "moved aside") {
		t.Fatalf("rebuild moved %v; said %q", moved, out)
	}
	for _, keep := range []string{"config.json", filepath.Join("raft", "cluster-root")} {
		if _, err := os.Stat(filepath.Join(e.Dir, keep)); err != nil {
			t.Fatalf("rebuild lost %s: %v", keep, err)
		}
	}

	// Alone (its peers stopped), the rebuilt node waits: it never makes a
	// cluster of its own, whose writes a quorum of one would acknowledge.
	for _, a := range []*server.Appliance{n2, n3} {
		a.Close()
	}
	lone, err := server.Open(e.Dir, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // ten election timeouts
	if lone.Node().IsLeader() || !lone.Node().Fresh() {
		t.Fatal("the rebuilt node, alone, bootstrapped a cluster of its own")
	}
	if c := lone.Readiness(false).Checks[server.CheckApplied]; c.OK || !strings.Contains(strings.Join(c.Reasons, " "), "catching up") {
		t.Fatalf("readiness of the rebuilt node before it caught up: %+v", c)
	}
	lone.Close()
	marker := filepath.Join(e.Dir, "raft", "rebuilt")
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the rebuild marker is gone before the node caught up: %v", err)
	}
	var peers []*server.Appliance
	for _, dir := range []string{n2Dir, dir3} {
		app, err := server.Open(dir, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close() })
		peers = append(peers, app)
	}
	var leader *server.Appliance
	deadline := time.Now().Add(20 * time.Second)
	for leader == nil {
		for _, a := range peers {
			if a.Node().IsLeader() {
				leader = a
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("node-2 and node-3 elected no leader after their restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// This leader's log, truncated by a snapshot, no longer starts at 1.
	write(leader, 20)
	if err := leader.Node().Snapshot(); err != nil {
		t.Fatal(err)
	}
	write(leader, 5)

	start := time.Now()
	e.Start() // waits until node-1 holds its own member record: caught up
	node := e.App.Node()
	deadline = time.Now().Add(30 * time.Second)
	for {
		want, _ := leader.Node().StateHash()
		got, _ := node.StateHash()
		if got == want && node.Stats()["applied_index"] == leader.Node().Stats()["applied_index"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rebuilt node did not converge: hash %s vs %s, stats %v", got, want, node.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("rebuilt node converged %s after serve", time.Since(start).Round(time.Millisecond))
	if idx, _ := strconv.Atoi(node.Stats()["last_snapshot_index"]); idx == 0 {
		t.Errorf("rebuilt node has no snapshot: it did not catch up by snapshot install (stats %v)", node.Stats())
	}
	if node.IsLeader() && leader.Node().IsLeader() {
		t.Fatal("two leaders: the rebuilt node bootstrapped a cluster of its own")
	}
	for _, id := range acked {
		if _, err := node.Attestation(id); err != nil {
			t.Fatalf("rebuilt node lacks acknowledged record %d: %v", id, err)
		}
	}
	// Caught up, it votes again, is ready, and forgets it was rebuilt.
	select {
	case <-node.CaughtUp():
	case <-time.After(10 * time.Second):
		t.Fatal("the rebuilt node converged but never counted itself caught up")
	}
	if c := e.App.Readiness(false).Checks[server.CheckApplied]; !c.OK {
		t.Fatalf("readiness of the rebuilt node once caught up: %+v", c)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(marker); errors.Is(err, os.ErrNotExist) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the rebuild marker is still there after the node caught up: %v", err)
		}
	}
	// It takes part again: a write through it commits.
	write(e.App, 1)
}

// serve on a damaged raft.db or fsm.db exits non-zero, never panics, and
// says which file, what is wrong and what to do.
func TestServeRefusesDamagedStore(t *testing.T) {
	e := servertest.New(t)
	e.App.Close()
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, servertest.Password, 0o600); err != nil {
		t.Fatal(err)
	}
	clean := map[string][]byte{}
	for _, f := range []string{"raft.db", "fsm.db"} {
		b, err := os.ReadFile(filepath.Join(e.Dir, "raft", f))
		if err != nil {
			t.Fatal(err)
		}
		clean[f] = b
	}
	for _, c := range []struct {
		file, kind, detail string
		damage             func(b []byte) []byte
	}{
		{"raft.db", "truncated", "truncated", func(b []byte) []byte { return b[:len(b)/4] }},
		{"fsm.db", "truncated", "truncated", func(b []byte) []byte { return b[:len(b)/4] }},
		{"fsm.db", "meta pages overwritten", "invalid", func(b []byte) []byte {
			b = append([]byte(nil), b...)
			copy(b, strings.Repeat("garbage!", 1024)) // both 4 KiB meta pages
			return b
		}},
		{"raft.db", "meta pages overwritten", "invalid", func(b []byte) []byte {
			b = append([]byte(nil), b...)
			copy(b, strings.Repeat("garbage!", 1024))
			return b
		}},
	} {
		t.Run(c.file+"/"+c.kind, func(t *testing.T) {
			for f, b := range clean {
				d := b
				if f == c.file {
					d = c.damage(b)
				}
				if err := os.WriteFile(filepath.Join(e.Dir, "raft", f), d, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			args := []string{"serve", "--data-dir", e.Dir, "--password-file", pw}
			done := make(chan error, 1)
			go func() { _, err := run(t, args...); done <- err }()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("serve started on a damaged store")
			}
			path := filepath.Join(e.Dir, "raft", c.file)
			if !errors.Is(err, cluster.ErrCorruptState) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.detail) ||
				!strings.Contains(err.Error(), "gatehouse cluster rebuild --data-dir") {
				t.Fatalf("serve: %v", err)
			}
			t.Logf("serve: %v", err)
			if code := Run(args); code == 0 {
				t.Fatal("serve exited 0")
			}
		})
	}
}
