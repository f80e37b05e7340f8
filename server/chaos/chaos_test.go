//go:build chaos

package chaos_test

// The chaos run (make chaos): three nodes as separate `gatehouse serve`
// processes in their own network namespaces, enrollments from swtpm
// devices flowing through all of them, and every 5-10 s a fault: a random
// node SIGKILLed and restarted, or one of the scenarios (isolated leader,
// 2/1 split, paused leader, bridge, flapping links), each with its own
// checks. At the end every node is restarted and an independent check
// compares what devices were told against what every node holds, and what
// the nodes' logs say they issued against what they committed. Its last
// line is the invariants line, with the verdict of the linearizability
// check on the history the checker's workload recorded meanwhile.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/server/chaos"
)

func TestChaos(t *testing.T) {
	duration := 3 * time.Minute
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	f := newTestCluster(t)
	c := f.c

	// Devices enroll continuously, round-robin over the nodes.
	stop := make(chan struct{})
	wg := f.stream(4, stop)

	// And the checker's workload runs through every fault: model devices
	// enrolling, operators transitioning, revoking and reading them
	// linearizably, join tokens made and spent. Its history is checked
	// at the end. It holds f.quiet like the stream, so a scenario's
	// convergence check sees a quiet cluster.
	devices := modelDevices(t, f.m, 6)
	targets := make([]chaos.Target, len(c.Nodes))
	for i, n := range c.Nodes {
		targets[i] = chaos.Target{Name: n.ID, URL: c.URL(i), Root: c.Root, Admin: c.AdminClient(i)}
	}
	wctx, stopWorkload := context.WithCancel(context.Background())
	defer stopWorkload()
	type ran struct {
		h   *chaos.History
		err error
	}
	workload := make(chan ran, 1)
	go func() {
		h, err := chaos.Workload{Devices: devices, Duration: 24 * time.Hour, EnrollPause: 300 * time.Millisecond, Mortal: 0.5, Gate: &f.quiet}.Run(wctx, targets)
		workload <- ran{h, err}
	}()

	faults := []struct {
		name string
		run  func(testing.TB, *fleet)
	}{
		{"kill", func(t testing.TB, f *fleet) {
			n := c.Nodes[rand.IntN(len(c.Nodes))]
			n.Kill()
			time.Sleep(500 * time.Millisecond)
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			t.Logf("killed and restarted %s", n.ID)
		}},
		{"kill", nil}, // a second kill per round, as often as before
		{"isolate-leader", scenarioIsolateLeader},
		{"split-follower", scenarioSplitFollower},
		{"pause-leader", scenarioPauseLeader},
		{"bridge", scenarioBridge},
		{"flap", scenarioFlap},
	}
	faults[1].run = faults[0].run
	end := time.Now().Add(duration)
	counts := map[string]int{}
	for round := 0; time.Now().Before(end); round++ {
		// Every fault once per round, in a random order; the first round
		// runs whole even past CHAOS_DURATION, so every scenario runs.
		for _, k := range rand.Perm(len(faults)) {
			if round > 0 && !time.Now().Before(end) {
				break
			}
			time.Sleep(5*time.Second + rand.N(5*time.Second))
			fault := faults[k]
			start := time.Now()
			fault.run(t, f)
			counts[fault.name]++
			t.Logf("%s: %s took %s (%d enrollments acknowledged so far)", time.Now().Format(time.TimeOnly),
				fault.name, time.Since(start).Round(time.Millisecond), len(f.acked()))
			if t.Failed() {
				t.FailNow()
			}
		}
	}
	close(stop)
	wg.Wait()
	stopWorkload()
	w := <-workload
	if w.err != nil {
		t.Fatal(w.err)
	}
	ops := w.h.Ops()

	// Independent check: stop everything cleanly, restart, let it converge,
	// then read every node's own registry.
	if err := c.HealAll(); err != nil {
		t.Fatal(err)
	}
	c.StopAll()
	if err := c.StartAll(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	conv, err := c.WaitConverged(converge)
	if err != nil {
		t.Fatalf("convergence after restart: %v", err)
	}
	acks := f.acked()
	for _, op := range chaos.Enrollments(ops) {
		acks = append(acks, chaos.Ack{Device: "model-" + strconv.Itoa(op.Input.Device), DeviceID: op.Output.DeviceID,
			AttestationID: op.Output.AttestationID, Serial: op.Output.Serial})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := c.CheckInvariants(ctx, acks)
	if err != nil {
		t.Fatal(err)
	}
	vis, err := filepath.Abs("../../build/chaos")
	if err != nil {
		t.Fatal(err)
	}
	res, err := chaos.Check(ops, 5*time.Minute, vis)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("faults %v; all nodes at state %.16s, audit seq %d; %d devices no answer named", counts, conv.StateHash, conv.AuditSeq, v.Unacknowledged)
	t.Logf("history: %s", res.Detail())
	line := v.String() + " " + res.String()
	if !v.OK() || v.Acked == 0 || !res.Linearizable {
		t.Error(line)
	}
	fmt.Println(line)
}
