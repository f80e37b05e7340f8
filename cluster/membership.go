package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Join-token errors.
var (
	ErrJoinTokenInvalid = errors.New("join token is not valid")
	ErrJoinTokenExpired = errors.New("join token has expired")
	ErrJoinTokenUsed    = errors.New("join token was already used")
)

// Member is a node's addresses, kept in the replicated state so any node can
// reach the leader's API to forward a write.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"` // host:port of the node's HTTPS API
	// Hostnames are the names in the node's HTTPS server certificate: no
	// device certificate may carry one, whichever node issues it.
	Hostnames []string `json:"hostnames,omitempty"`
	// From the live Raft configuration (not stored):
	Voter  bool `json:"voter"`
	Leader bool `json:"leader"`
}

var (
	bMembers    = []byte("members")
	bJoinTokens = []byte("join_tokens")
)

type setMember struct {
	Member Member `json:"member"`
}

func (c *setMember) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	m := c.Member
	m.Voter, m.Leader = false, false
	b := tx.Bucket(bMembers)
	buf, err := json.Marshal(m)
	if err != nil {
		return applyResult{Err: err}
	}
	if bytes.Equal(b.Get([]byte(m.ID)), buf) {
		return applyResult{} // a node re-announcing itself unchanged
	}
	if err := b.Put([]byte(m.ID), buf); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Err: appendAudit(tx, at, AuditMemberSet, "node:"+m.ID, m.ID, m)}
}

type joinToken struct {
	SecretSHA256 []byte    `json:"secret_sha256"`
	Expires      time.Time `json:"expires"`
	UsedBy       string    `json:"used_by,omitempty"`
}

type createJoinToken struct {
	ID           string    `json:"id"`
	SecretSHA256 []byte    `json:"secret_sha256"`
	Expires      time.Time `json:"expires"`
}

func (c *createJoinToken) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	if err := putJSON(tx.Bucket(bJoinTokens), []byte(c.ID), joinToken{SecretSHA256: c.SecretSHA256, Expires: c.Expires}); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Err: appendAudit(tx, at, AuditJoinTokenCreated, "operator", c.ID, map[string]any{"expires": c.Expires})}
}

type consumeJoinToken struct {
	ID           string `json:"id"`
	SecretSHA256 []byte `json:"secret_sha256"`
	NodeID       string `json:"node_id"`
}

// checkJoinToken judges a stored token (v) against a secret's SHA-256 at a
// time: nil if it may be used.
func checkJoinToken(v, secretSHA256 []byte, at time.Time) (joinToken, error) {
	var t joinToken
	if v == nil || json.Unmarshal(v, &t) != nil || subtle.ConstantTimeCompare(t.SecretSHA256, secretSHA256) != 1 {
		return t, ErrJoinTokenInvalid
	}
	switch {
	case t.UsedBy != "":
		return t, ErrJoinTokenUsed
	case !at.Before(t.Expires):
		return t, ErrJoinTokenExpired
	}
	return t, nil
}

// apply checks the token against the command's time (the leader's clock), so
// every replica reaches the same verdict.
func (c *consumeJoinToken) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bJoinTokens)
	t, err := checkJoinToken(b.Get([]byte(c.ID)), c.SecretSHA256, at)
	if err != nil {
		return applyResult{Err: err}
	}
	t.UsedBy = c.NodeID
	if err := putJSON(b, []byte(c.ID), t); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Err: appendAudit(tx, at, AuditJoinTokenUsed, "node:"+c.NodeID, c.ID, nil)}
}

// CreateJoinToken stores a one-time join token: only the SHA-256 of its
// secret is kept.
func (n *Node) CreateJoinToken(ctx context.Context, id string, secret []byte, expires time.Time) error {
	sum := sha256.Sum256(secret)
	_, err := n.apply(ctx, "jointoken.create", 1, &createJoinToken{ID: id, SecretSHA256: sum[:], Expires: expires})
	return err
}

// ConsumeJoinToken uses a join token up, or fails with ErrJoinTokenInvalid,
// ErrJoinTokenExpired or ErrJoinTokenUsed.
//
// The token is checked against a linearizable read first: an unknown or
// used token, or a wrong secret, is refused without a Raft write, so guessing
// costs the cluster no log entries. Only a caller holding the secret of an
// unused token reaches the log, where the FSM decides again, expiry
// included, by the leader's clock.
func (n *Node) ConsumeJoinToken(ctx context.Context, id string, secret []byte, nodeID string) error {
	sum := sha256.Sum256(secret)
	if err := n.Linearize(ctx); err != nil {
		return err
	}
	// Expiry is left to the FSM (the zero time expires nothing here): it is
	// judged by the leader's clock at apply.
	if err := n.CheckJoinToken(id, secret, time.Time{}); err != nil {
		return err
	}
	_, err := n.apply(ctx, "jointoken.consume", 1, &consumeJoinToken{ID: id, SecretSHA256: sum[:], NodeID: nodeID})
	return err
}

// CheckJoinToken reports, without using the token up or writing anything,
// whether ConsumeJoinToken would accept it at time at (ErrJoinTokenInvalid,
// ErrJoinTokenExpired, ErrJoinTokenUsed otherwise). It reads local state:
// Linearize first for a current answer. Only ConsumeJoinToken's commit is
// authoritative.
func (n *Node) CheckJoinToken(id string, secret []byte, at time.Time) error {
	sum := sha256.Sum256(secret)
	return n.fsm.view(func(tx *bolt.Tx) error {
		_, err := checkJoinToken(tx.Bucket(bJoinTokens).Get([]byte(id)), sum[:], at)
		return err
	})
}

// SetMember records a node's addresses.
func (n *Node) SetMember(ctx context.Context, m Member) error {
	_, err := n.apply(ctx, "member.set", 1, &setMember{Member: m})
	return err
}

// AddVoter makes a node a voting member. Only the leader can; like rqlite,
// a node already present with the same ID and address is a no-op, and an
// entry that matches only one of them is removed first.
func (n *Node) AddVoter(id, raftAddr string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, s := range cf.Configuration().Servers {
		sameID, sameAddr := s.ID == raft.ServerID(id), s.Address == raft.ServerAddress(raftAddr)
		if sameID && sameAddr {
			return nil
		}
		if sameID || sameAddr {
			if err := n.raft.RemoveServer(s.ID, 0, 0).Error(); err != nil {
				return fmt.Errorf("remove stale member %s: %w", s.ID, err)
			}
		}
	}
	return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, 0).Error()
}

// ErrUnknownMember: no node with that ID is in the Raft configuration. It
// wraps ErrNotFound, so it maps to 404 wherever that does.
var ErrUnknownMember = fmt.Errorf("no such cluster member: %w", ErrNotFound)

// RemoveServer removes a node from the cluster (leader only). An ID not in
// the configuration is ErrUnknownMember: Raft would accept it as a no-op,
// and a typo would read as a removal.
func (n *Node) RemoveServer(id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	if !slices.ContainsFunc(cf.Configuration().Servers, func(s raft.Server) bool { return string(s.ID) == id }) {
		return fmt.Errorf("node %q: %w", id, ErrUnknownMember)
	}
	return n.raft.RemoveServer(raft.ServerID(id), 0, 0).Error()
}

// LeaderID is the current leader's node ID, or "" when there is none.
func (n *Node) LeaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// LeaderlessFor is how long this node has known no leader: 0 while it
// knows one, else the time since its last contact with a leader, or since
// it opened if it had none since.
func (n *Node) LeaderlessFor() time.Duration {
	if n.LeaderID() != "" {
		return 0
	}
	since := n.raft.LastContact()
	if since.Before(n.opened) {
		since = n.opened
	}
	return time.Since(since)
}

// Members lists the Raft configuration with each node's recorded addresses.
func (n *Node) Members() ([]Member, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	leader := n.LeaderID()
	out := []Member{}
	for _, s := range cf.Configuration().Servers {
		m, _ := n.Member(string(s.ID))
		m.ID, m.RaftAddr = string(s.ID), string(s.Address)
		m.Voter, m.Leader = s.Suffrage == raft.Voter, string(s.ID) == leader
		out = append(out, m)
	}
	return out, nil
}

// Member returns a node's recorded addresses, or ErrNotFound.
func (n *Node) Member(id string) (m Member, err error) {
	err = n.fsm.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bMembers).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("member %q: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &m)
	})
	return m, err
}
