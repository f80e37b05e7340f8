package cluster

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// ErrCatchingUp answers a vote request (or a leadership handover) sent to a
// rebuilt node that has not caught up yet.
var ErrCatchingUp = errors.New("rebuilt node catching up: it grants no vote until it has the leader's log")

// A rebuilt node (Config.Rebuilt) lost the log it had acknowledged to its
// leaders. As a voter with an empty log it would grant its vote to any
// candidate, also to one missing entries whose commit counted on this
// node's lost acknowledgement: that candidate could win with its vote and
// the entries would be gone from every node. So until it has caught up, a
// rebuilt node grants no vote (nor pre-vote), refuses a leadership
// handover, and never campaigns (its heartbeat timeout is put out of
// reach).
//
// Caught up means: it has applied everything up to the last index the first
// leader that replicated to it had when it did (the first AppendEntries
// that carried entries or a commit index, or a snapshot's index). That
// leader was elected without this node's vote, so its log is the best the
// cluster has; from then on the node's acknowledgements are durable again
// and its votes follow Raft's rules.
//
// Non-guarantees: if the nodes that hold an entry are down, the cluster
// waits for them (no leader) rather than elect one without it; a rebuilt
// node forgot the vote it may have cast in the term current when it was
// damaged, and a first leader that was already deposed (a minority
// partition still replicating to this node) can end the wait early.
type catchUp struct {
	in     <-chan raft.RPC
	out    chan raft.RPC
	target atomic.Uint64 // the index to apply; 0 until a leader says
	done   chan struct{} // closed once caught up
	ended  atomic.Bool
}

// rebuiltTransport hands Raft the RPCs catchUp lets through.
type rebuiltTransport struct {
	noPipeline
	c *catchUp
}

func (t rebuiltTransport) Consumer() <-chan raft.RPC { return t.c.out }

// rebuildHeartbeat is the heartbeat and election timeout of a rebuilt node
// until it has caught up: it never times out into an election.
const rebuildHeartbeat = 100 * 365 * 24 * time.Hour

func newCatchUp(in <-chan raft.RPC) *catchUp {
	return &catchUp{in: in, out: make(chan raft.RPC), done: make(chan struct{})}
}

// filter passes RPCs on to Raft, answering vote requests itself until the
// node has caught up, and takes the first leader's last index as target.
func (c *catchUp) filter(stop <-chan struct{}) {
	for {
		var rpc raft.RPC
		select {
		case rpc = <-c.in:
		case <-stop:
			return
		}
		if !c.ended.Load() {
			switch req := rpc.Command.(type) {
			case *raft.RequestVoteRequest:
				rpc.Respond(&raft.RequestVoteResponse{Term: req.Term}, ErrCatchingUp)
				continue
			case *raft.RequestPreVoteRequest:
				rpc.Respond(&raft.RequestPreVoteResponse{Term: req.Term}, ErrCatchingUp)
				continue
			case *raft.TimeoutNowRequest:
				rpc.Respond(&raft.TimeoutNowResponse{}, ErrCatchingUp)
				continue
			case *raft.AppendEntriesRequest:
				if last := max(req.LeaderCommitIndex, req.PrevLogEntry+uint64(len(req.Entries))); last > 0 {
					c.target.CompareAndSwap(0, last)
				}
			case *raft.InstallSnapshotRequest:
				c.target.CompareAndSwap(0, req.LastLogIndex)
			}
		}
		select {
		case c.out <- rpc:
		case <-stop:
			return
		}
	}
}

// watch ends the catch-up once applied() reaches the target, and gives the
// node back its heartbeat and election timeouts. applied is Raft's applied
// index, which counts every entry: the FSM's own index skips the leader's
// no-op and configuration entries, and the target is often the no-op a new
// leader appended.
func (c *catchUp) watch(stop <-chan struct{}, applied func() uint64, r *raft.Raft, heartbeat, election time.Duration, log *slog.Logger) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-stop:
			return
		}
		target := c.target.Load()
		if target == 0 || applied() < target {
			continue
		}
		rc := r.ReloadableConfig()
		rc.HeartbeatTimeout, rc.ElectionTimeout = heartbeat, election
		if err := r.ReloadConfig(rc); err != nil {
			log.Error("rebuilt node caught up but cannot restore its Raft timeouts", "err", err)
			return
		}
		c.ended.Store(true)
		close(c.done)
		log.Info("rebuilt node caught up: it votes again", "index", target)
		return
	}
}

// CaughtUp is closed once a rebuilt node (Config.Rebuilt) has caught up
// with its leader and votes again; for any other node it is closed
// already.
func (n *Node) CaughtUp() <-chan struct{} {
	if n.catchUp == nil {
		return closedChan
	}
	return n.catchUp.done
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()
