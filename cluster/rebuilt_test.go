package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// cutProxy forwards TCP to a node's Raft address; while cut, it drops
// every connection it holds and closes new ones at once.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			d, err := net.Dial("tcp", p.target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, d)
			p.mu.Unlock()
			go func() { io.Copy(d, c); d.Close() }()
			go func() { io.Copy(c, d); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.set(true) })
	return p
}

func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) set(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// fixedAddr is a loopback address for a node that is opened again at the
// same address: from servertest.FreeAddr's range (10000-17999), below the
// ephemeral one, so that no connection takes the port while it is down.
func fixedAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+rand.IntN(8000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free loopback port")
	return ""
}

// The loss a rebuilt node's vote would cause, and its guard. Entries are
// committed by n1 and n2 while n3 is cut off; n2 is then rebuilt (its
// state lost) and n1 goes down. n3, which lacks the entries, campaigns.
// Guarded, the rebuilt n2 refuses its vote, so there is no leader until n1
// is back; n1 then leads, n2 catches up and votes again, and every entry is
// on every node. The control, n2 reopened empty without the guard, gives
// n3 its vote: n3 leads without the entries.
func TestRebuiltNodeVotesOnlyOnceCaughtUp(t *testing.T) {
	for _, guarded := range []bool{true, false} {
		t.Run(fmt.Sprintf("guarded=%v", guarded), func(t *testing.T) {
			addr1, addr2 := fixedAddr(t), fixedAddr(t)
			dir1, dir3 := t.TempDir(), t.TempDir()
			all := []Option{WithRaftConfig(fastRaft)}
			logs := map[string]*syncBuffer{"n1": {}, "n2": {}, "n3": {}}
			logger := func(id string) *slog.Logger {
				return slog.New(slog.NewTextHandler(logs[id], nil)).With("node", id)
			}
			defer func() {
				if t.Failed() {
					for _, id := range []string{"n1", "n2", "n3"} {
						t.Logf("--- %s\n%s", id, logs[id])
					}
				}
			}()
			n1, err := Open(Config{NodeID: "n1", DataDir: dir1, RaftAddr: addr1, Bootstrap: true, Logger: logger("n1")}, all...)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { n1.Close() }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := n1.WaitLeader(ctx); err != nil {
				t.Fatal(err)
			}
			n2, err := Open(Config{NodeID: "n2", DataDir: t.TempDir(), RaftAddr: addr2, Logger: logger("n2")}, all...)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { n2.Close() }()
			n3, err := Open(Config{NodeID: "n3", DataDir: dir3, RaftAddr: "127.0.0.1:0", Logger: logger("n3")}, all...)
			if err != nil {
				t.Fatal(err)
			}
			defer n3.Close()
			to3 := newCutProxy(t, n3.RaftAddr())
			if err := n1.AddVoter("n2", addr2); err != nil {
				t.Fatal(err)
			}
			if err := n1.AddVoter("n3", to3.Addr()); err != nil {
				t.Fatal(err)
			}
			first := enroll(t, n1, "s0", "d0")
			waitIndex(t, n3, n1.fsm.last.Load())

			to3.set(true) // n1 reaches n3 no more; n3 still reaches n1 and n2
			var acked []uint64
			for i := range 20 {
				acked = append(acked, enroll(t, n1, fmt.Sprintf("s%d", i+1), fmt.Sprintf("d%d", i+1)))
			}
			if _, err := n3.Attestation(acked[0]); err == nil {
				t.Fatal("n3 got an entry while cut off")
			}
			n2.Close()
			n1.Close()
			// n2's state is lost: it comes back empty, at its address.
			n2, err = Open(Config{NodeID: "n2", DataDir: t.TempDir(), RaftAddr: addr2, Rebuilt: guarded, Logger: logger("n2")}, all...)
			if err != nil {
				t.Fatal(err)
			}
			to3.set(false)

			if !guarded {
				deadline := time.Now().Add(10 * time.Second)
				for !n3.IsLeader() {
					if time.Now().After(deadline) {
						t.Fatal("control: n3 never won the empty n2's vote; the scenario shows nothing")
					}
					time.Sleep(20 * time.Millisecond)
				}
				if _, err := n3.Attestation(acked[0]); err == nil {
					t.Fatal("control: n3 leads with the entries it never got?")
				}
				t.Logf("control: n3 leads without the %d entries n1 and n2 acknowledged", len(acked))
				return
			}

			time.Sleep(3 * time.Second) // n3 campaigns every few hundred ms
			if n3.IsLeader() || n2.IsLeader() {
				t.Fatalf("a leader without n1: n2 leads %v, n3 leads %v", n2.IsLeader(), n3.IsLeader())
			}
			select {
			case <-n2.CaughtUp():
				t.Fatal("n2 caught up with no leader")
			default:
			}
			n1, err = Open(Config{NodeID: "n1", DataDir: dir1, RaftAddr: addr1, Logger: logger("n1")}, all...)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-n2.CaughtUp():
			case <-time.After(15 * time.Second):
				t.Fatal("the rebuilt n2 did not catch up with n1 leading")
			}
			if !n1.IsLeader() {
				t.Logf("leader after n1's return: n1 %v, n2 %v, n3 %v", n1.IsLeader(), n2.IsLeader(), n3.IsLeader())
			}
			var leader *Node
			for deadline := time.Now().Add(10 * time.Second); leader == nil; time.Sleep(20 * time.Millisecond) {
				if leader = leaderOf([]*Node{n1, n2, n3}); leader == nil && time.Now().After(deadline) {
					t.Fatal("no leader after n1's return")
				}
			}
			last := enroll(t, leader, "after", "d-after")
			for i, n := range []*Node{n1, n2, n3} {
				waitIndex(t, n, n1.fsm.last.Load())
				for _, id := range append([]uint64{first, last}, acked...) {
					if _, err := n.Attestation(id); err != nil {
						t.Fatalf("n%d: acknowledged record %d: %v", i+1, id, err)
					}
				}
			}
			// Caught up, it votes again: with n1 gone, n2 and n3 elect.
			n1.Close()
			deadline := time.Now().Add(10 * time.Second)
			for !n2.IsLeader() && !n3.IsLeader() {
				if time.Now().After(deadline) {
					t.Fatal("n2 and n3 elect no leader after n2 caught up")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
