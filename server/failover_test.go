package server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// A write on a follower right after the leader stops is held through the
// election (the dead leader refuses the connection: the command never
// reached it) and acknowledged by the next leader instead of being
// answered 503 at once. A follower with no leader to wait for gives up
// after its leader wait with ErrNotLeader.
func TestWriteHeldThroughElection(t *testing.T) {
	_, nodes, _ := threeNodes(t)
	li := leaderIndex(nodes)
	var rest []*server.Appliance
	for j, n := range nodes {
		if j != li {
			rest = append(rest, n)
		}
	}
	if rest[0].Node().LeaderID() == "" || rest[0].Node().LeaderlessFor() != 0 {
		t.Fatalf("the follower knows no leader before the stop (leaderless for %v)", rest[0].Node().LeaderlessFor())
	}
	nodes[li].Close()
	// A request already on a pooled connection to it fails ambiguously
	// (it may have reached the log) and is not resent; the next dials.
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	id, err := rest[0].Node().CommitRejection(ctx, "held-1", time.Now().Add(time.Minute),
		cluster.AttestationRecord{Time: time.Now(), Stage: "complete", Outcome: cluster.OutcomeRejected})
	if err != nil {
		t.Fatalf("write on a follower as the leader stopped: %v (after %v), want it held until the next leader took it", err, time.Since(start))
	}
	t.Logf("acknowledged %v after the leader stopped, attestation %d", time.Since(start), id)
	// Committed: the session is consumed on both survivors.
	for _, n := range rest {
		if err := n.Node().Linearize(ctx); err != nil {
			t.Fatal(err)
		}
		if used, err := n.Node().SessionUsed("held-1"); err != nil || !used {
			t.Fatalf("%s: session used %v, %v", n.Node().LeaderID(), used, err)
		}
	}
	// Without a quorum no leader comes: the write fails after the wait.
	rest[1].Close()
	// It steps down once its lease runs out, or, following, forgets the
	// leader once its heartbeats stop (until then a write forwarded on a
	// pooled connection to the closed node fails ambiguously, at once).
	for rest[0].Node().IsLeader() || rest[0].Node().LeaderID() != "" {
		time.Sleep(20 * time.Millisecond)
	}
	start = time.Now()
	_, err = rest[0].Node().CommitRejection(ctx, "held-2", time.Now().Add(time.Minute),
		cluster.AttestationRecord{Time: time.Now(), Stage: "complete", Outcome: cluster.OutcomeRejected})
	if took := time.Since(start); !errors.Is(err, cluster.ErrNotLeader) || took < cluster.DefaultLeaderWait/2 || took > cluster.DefaultLeaderWait+5*time.Second {
		t.Fatalf("write without a quorum: %v after %v, want ErrNotLeader after about %v", err, took, cluster.DefaultLeaderWait)
	}
	// It knows it has been without a leader at least that long (the
	// Retry-After of its 503s grows with it).
	if lf := rest[0].Node().LeaderlessFor(); lf < cluster.DefaultLeaderWait/2 {
		t.Fatalf("LeaderlessFor %v after the wait, want at least %v", lf, cluster.DefaultLeaderWait/2)
	}
}
