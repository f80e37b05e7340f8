package cluster

import (
	"encoding/json"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Progress is where this node stands in its cluster, read from memory
// without I/O or a round trip (readiness probes and metrics call it on
// every request).
type Progress struct {
	State    string // Raft state: Leader, Follower, Candidate, Shutdown
	LeaderID string // "" when no leader is known
	// Applied is the index of the last entry the registry has processed
	// (not raft.AppliedIndex, which moves when entries are queued to it);
	// Commit is the commit index this node has learned from its leader.
	Applied, Commit uint64
	// LastContact is when a leader last reached this node (followers).
	LastContact time.Time
	// PeerRefusals: Raft peers that refused this node's TLS handshake in
	// the last minute (see Problems).
	PeerRefusals []string
	// Storage is why this node cannot write its Raft log or registry (a
	// full disk: ErrStorageFull), or "".
	Storage string
}

// Progress reports where this node stands; see Progress.
func (n *Node) Progress() Progress {
	p := Progress{
		State:       n.raft.State().String(),
		LeaderID:    n.LeaderID(),
		Applied:     n.fsm.last.Load(),
		Commit:      n.raft.CommitIndex(),
		LastContact: n.raft.LastContact(),
	}
	if n.stream != nil {
		p.PeerRefusals = n.stream.refused.problems(peerRefusalWindow)
	}
	if err := n.disk.problem(); err != nil {
		p.Storage = err.Error()
	}
	return p
}

// Leading reports whether p is the leader's view.
func (p Progress) Leading() bool { return p.State == raft.Leader.String() }

// DeviceCounts counts the devices of this node's replica by state. It reads
// every device record (decoding only its state), so callers on hot paths
// cache it.
func (n *Node) DeviceCounts() (map[string]int, error) {
	out := map[string]int{}
	err := n.fsm.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bDevices).ForEach(func(_, v []byte) error {
			var d struct {
				Status string `json:"status"`
			}
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out[d.Status]++
			return nil
		})
	})
	return out, err
}
