package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// BenchmarkClusterCommits measures record commits per second through a
// three-node cluster over mTLS, fsync on: 64 writers commit attestation
// records on the leader, and Raft batches their appends (up to 64 per
// AppendEntries, one FSM transaction per batch).
func BenchmarkClusterCommits(b *testing.B) {
	_, nodes, _ := threeNodes(b)
	leader := nodes[leaderIndex(nodes)].Node()
	rec := cluster.AttestationRecord{Time: time.Now(), Node: "bench", Stage: "complete", Outcome: cluster.OutcomeRejected, Code: "bench", Reason: "benchmark record",
		Evidence: cluster.Evidence{Nonce: "0011223344556677889900112233445566778899001122334455667788990011"}}
	const writers = 64
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if _, err := leader.CommitRejection(context.Background(), fmt.Sprintf("s-%d", i), time.Now().Add(time.Minute), rec); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
}

// BenchmarkFailover measures, with Raft's default timeouts (heartbeat and
// election 1 s, lease 500 ms), the time from the leader's abrupt stop to the
// first write acknowledged by the new leader. Each iteration forms a new
// cluster, so run it with a small -benchtime (make bench uses 3x).
func BenchmarkFailover(b *testing.B) {
	defaults := cluster.WithRaftConfig(func(*raft.Config) {})
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		_, nodes, _ := threeNodes(b, defaults)
		li := leaderIndex(nodes)
		var rest []*server.Appliance
		for j, n := range nodes {
			if j != li {
				rest = append(rest, n)
			}
		}
		b.StartTimer()
		killed := time.Now()
		nodes[li].Close()
		for k := 0; ; k++ {
			n := rest[k%2].Node()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			_, err := n.CommitRejection(ctx, fmt.Sprintf("f-%d-%d", i, k), time.Now().Add(time.Minute), cluster.AttestationRecord{Time: time.Now(), Stage: "complete", Outcome: cluster.OutcomeRejected})
			cancel()
			if err == nil {
				break
			}
			if time.Since(killed) > 30*time.Second {
				b.Fatalf("no write acknowledged 30 s after the leader died: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		total += time.Since(killed)
		b.StopTimer()
		for _, n := range rest {
			n.Close()
		}
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s-to-first-write")
}
