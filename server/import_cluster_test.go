package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/server"
)

// A 5,000-row import through the admin API of a three-node cluster
// survives a leadership transfer in the middle: the batch cut by it is
// retried (503 while there is no leader, with backoff) and, being keyed by
// EK, is not doubled when it had in fact committed. Exactly the 5,000 EKs
// end up enrolled, each once.
func TestImportSurvivesLeaderChange(t *testing.T) {
	e, _, dirs := threeNodes(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const total, batch = 5000, 100
	rows := make([]server.ImportRow, total)
	for i := range rows {
		rows[i] = server.ImportRow{Row: i + 2, EKPublicSHA256: fmt.Sprintf("%064x", i+1), Group: "default"}
	}
	ac := server.NewAdminClient(e.Dir) // node-1, the first leader
	var retries atomic.Int32
	pol := server.DefaultRetry
	pol.Notify = func(err error, wait time.Duration) { retries.Add(1); t.Logf("retry in %v: %v", wait, err) }
	ac.Retry = &pol
	var sent, sentAtTransfer atomic.Int32
	transferred := make(chan error, 1)
	go func() {
		for sent.Load() < total/batch/3 {
			time.Sleep(time.Millisecond)
		}
		err := server.NewAdminClient(e.Dir).TransferLeadership(ctx)
		sentAtTransfer.Store(sent.Load())
		transferred <- err
	}()
	accepted := 0
	for start := 0; start < total; start += batch {
		res, err := ac.ImportEnrollments(ctx, "test", "eks.csv", rows[start:start+batch], false)
		if err != nil {
			t.Fatalf("rows %d..%d: %v", start, start+batch, err)
		}
		if len(res.Refused) != 0 {
			t.Fatalf("rows %d..%d refused: %+v", start, start+batch, res.Refused)
		}
		accepted += len(res.Accepted)
		sent.Add(1)
	}
	if err := <-transferred; err != nil {
		t.Fatalf("transfer leadership: %v", err)
	}
	if e.App.Node().IsLeader() || sentAtTransfer.Load() >= total/batch {
		t.Fatalf("the import did not cross a leader change (node-1 leads: %v; batches sent when it ended: %d)", e.App.Node().IsLeader(), sentAtTransfer.Load())
	}
	t.Logf("leadership moved after batch %d; %d retries", sentAtTransfer.Load(), retries.Load())
	// The batch whose answer a client might have lost, sent again.
	if res, err := ac.ImportEnrollments(ctx, "test", "eks.csv", rows[:batch], false); err != nil || len(res.Accepted) != batch {
		t.Fatalf("re-sending a committed batch: %+v %v", res, err)
	}

	for _, dir := range dirs {
		list, err := server.NewAdminClient(dir).IndividualEnrollments(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, en := range list {
			seen[en.EKPublicSHA256]++
		}
		if len(list) != total || len(seen) != total || accepted != total {
			t.Fatalf("%s: %d enrollments, %d distinct, %d accepted; want %d", dir, len(list), len(seen), accepted, total)
		}
		for _, r := range rows {
			if seen[r.EKPublicSHA256] != 1 {
				t.Fatalf("%s: EK %s enrolled %d times", dir, r.EKPublicSHA256, seen[r.EKPublicSHA256])
			}
		}
	}
}
