// Package cluster is Gatehouse's replicated device registry: a Raft node
// (hashicorp/raft with raft-boltdb) whose state machine keeps devices,
// attestation records and used enrollment sessions in bbolt.
//
// Every write is a versioned command applied through Raft; a write
// acknowledged by Commit* is durable on a quorum and applied to the local
// state before the call returns.
package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Config identifies a node and where it keeps its state.
type Config struct {
	NodeID   string
	DataDir  string
	RaftAddr string // bind address of the Raft transport, e.g. 127.0.0.1:8300 (port 0 picks one)
	// TLS, when set, carries Raft over mutual TLS with this config for both
	// accepting and dialing; it must require client certificates. Nil means
	// plain TCP (this package's own tests).
	TLS *tls.Config
	// Bootstrap makes a node without Raft state form a single-node cluster.
	// A joining node leaves it false and waits for the leader to add it.
	Bootstrap bool
	// Rebuilt marks a member whose Raft state was lost and moved aside (the
	// appliance's `cluster rebuild`): it grants no vote and starts no
	// election until it has caught up with its leader (rebuilt.go,
	// Node.CaughtUp). It never bootstraps.
	Rebuilt bool
	Logger  *slog.Logger
}

// Forwarder reaches the leader for a follower; the appliance implements it
// over mTLS. Forward returns what the leader's ApplyForwarded returned;
// ReadIndex what its ReadIndex returned.
type Forwarder interface {
	Forward(ctx context.Context, leaderID string, cmd []byte) (Applied, error)
	ReadIndex(ctx context.Context, leaderID string) (uint64, error)
}

// Applied is the outcome of a committed command.
type Applied struct {
	Result uint64 `json:"result,omitempty"` // an attestation ID or a policy version
	Index  uint64 `json:"index"`            // Raft log index of the command
}

// Option configures Open.
type Option func(*options)

type options struct {
	raftConfig   func(*raft.Config)
	fatal        func(error)
	applyTimeout time.Duration
	forwarder    Forwarder
	faults       *Faults
	now          func() time.Time
	// validateSettings judges settings commands at apply (settings.go).
	validateSettings SettingsValidator
	// transportTimeout bounds each Raft RPC's reads and writes (tests
	// shorten it).
	transportTimeout time.Duration
	envelope         func(context.Context) bool
	leaderWait       time.Duration
}

// WithForwarder lets a follower forward writes to the leader. Without one, a
// write on a follower fails with ErrNotLeader.
func WithForwarder(f Forwarder) Option { return func(o *options) { o.forwarder = f } }

// WithRaftConfig adjusts the Raft configuration (tests shorten timeouts).
func WithRaftConfig(fn func(*raft.Config)) Option { return func(o *options) { o.raftConfig = fn } }

// WithFatalHook replaces what happens when the FSM's store cannot take a
// batch (default: log and panic, so the replica stops instead of
// diverging). An entry this build does not understand is not fatal: the
// FSM halts on it (Node.Halted) and the process stays up to report it.
func WithFatalHook(fn func(error)) Option { return func(o *options) { o.fatal = fn } }

// WithClock sets the clock this node stamps on the commands it applies as
// leader (default time.Now; tests skew it).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithEnvelope lets CommitEnrollment and CommitRenewal propose the binary
// envelope's accepts (EnvelopeCommands) when members(ctx) reports that
// every member applies them; it is asked per commit, so it should be cheap
// (the appliance caches its answer). Without it, they commit JSON v3.
func WithEnvelope(members func(context.Context) bool) Option {
	return func(o *options) { o.envelope = members }
}

// WithApplyTimeout bounds how long a commit waits to enter the Raft pipeline.
func WithApplyTimeout(d time.Duration) Option { return func(o *options) { o.applyTimeout = d } }

// WithLeaderWait bounds how long a write waits for a leader (during an
// election, or after the known leader stopped answering) before it fails
// with ErrNotLeader (default DefaultLeaderWait; 0 fails at once).
func WithLeaderWait(d time.Duration) Option { return func(o *options) { o.leaderWait = d } }

// DefaultLeaderWait covers an election (a follower notices a silent leader
// after 0.5–1.5 s, an election takes one or two rounds of 0.5–1 s) with
// room for a busy machine, like Consul's RPC hold timeout.
const DefaultLeaderWait = 5 * time.Second

// Raft's timeouts, halved from hashicorp/raft's defaults (1 s each) so a
// follower notices a dead leader and an election ends sooner: the leader
// still heartbeats every HeartbeatTimeout/10 (50 ms), ten times within the
// timeout, from its own goroutine, apart from log appends and their fsyncs
// (a few ms on the test machines), and pre-vote keeps one starved follower
// from deposing a healthy leader. The leader lease stays at its default,
// 500 ms. Only availability depends on them, never safety: reads are
// read-index reads (ReadIndex), not lease reads.
const (
	HeartbeatTimeout = 500 * time.Millisecond
	ElectionTimeout  = 500 * time.Millisecond
)

// Node is one member of the registry's Raft cluster.
type Node struct {
	cfg          Config
	log          *slog.Logger
	raft         *raft.Raft
	fsm          *fsm
	store        *raftboltdb.BoltStore
	transport    *raft.NetworkTransport
	stream       *tlsStreamLayer // nil on plain TCP
	applyTimeout time.Duration
	leaderWait   time.Duration
	forwarder    Forwarder
	now          func() time.Time
	envelope     func(context.Context) bool // WithEnvelope
	existing     bool                       // had Raft state when opened
	opened       time.Time
	barrierTerm  atomic.Uint64
	disk         diskState     // failed writes: ErrStorageFull, Problems
	stop         chan struct{} // closed when Close begins
	started      atomic.Bool   // n.raft is set (the FSM may run before)
	closeOnce    sync.Once
	closeErr     error
	catchUp      *catchUp // Config.Rebuilt, until caught up
}

// Open starts a node. A node with no Raft state bootstraps a single-node
// cluster of itself.
//
// A node that cannot start fails with an error naming the cause: ErrAddrInUse
// with the Raft address, or ErrCorruptState with the path of raft.db or
// fsm.db and what is wrong (never a panic: see checkStore and guard);
// whatever it opened is closed again.
func Open(cfg Config, opts ...Option) (_ *Node, err error) {
	if cfg.NodeID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" {
		return nil, errors.New("cluster: NodeID, DataDir and RaftAddr are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := options{applyTimeout: 10 * time.Second, transportTimeout: 10 * time.Second, leaderWait: DefaultLeaderWait, now: time.Now}
	o.fatal = func(err error) {
		log.Error("registry state machine cannot continue", "err", err)
		panic(err)
	}
	for _, fn := range opts {
		fn(&o)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: log, applyTimeout: o.applyTimeout, leaderWait: o.leaderWait, forwarder: o.forwarder, now: o.now, envelope: o.envelope,
		stop: make(chan struct{}), opened: time.Now()}
	defer func() { // n, not the named result: that is nil on every error return
		if err != nil {
			n.Close()
		}
	}()
	hlog := newHCLog(log)

	// Both stores are checked before they are opened for writing, and
	// opened under guard: bbolt panics on pages it cannot parse.
	fsmPath, raftPath := filepath.Join(cfg.DataDir, "fsm.db"), filepath.Join(cfg.DataDir, "raft.db")
	if err := checkStore(fsmPath); err != nil {
		return nil, storeError(fsmPath, "registry", err)
	}
	if err := checkStore(raftPath); err != nil {
		return nil, storeError(raftPath, "Raft log", err)
	}
	if err := guard(func() (err error) { n.fsm, err = openFSM(fsmPath, o.fatal); return err }); err != nil {
		return nil, storeError(fsmPath, "registry", err)
	}
	n.fsm.validateSettings = o.validateSettings
	if err := n.fsm.view(func(tx *bolt.Tx) error { return checkRegistryFeature(tx, "registry "+n.fsm.path) }); err != nil {
		return nil, err
	}
	n.fsm.onHalt = n.logHalt
	n.fsm.disk, n.fsm.log, n.fsm.stop = &n.disk, log, n.stop
	// A leader that cannot apply would hold every write: hand over.
	n.fsm.onStall = func() {
		if n.started.Load() && n.IsLeader() {
			go func() {
				if err := n.raft.LeadershipTransfer().Error(); err != nil {
					log.Warn("cannot hand over leadership while fsm.db is full", "err", err)
				}
			}()
		}
	}
	if err := guard(func() (err error) {
		n.store, err = raftboltdb.New(raftboltdb.Options{Path: raftPath})
		return err
	}); err != nil {
		return nil, storeError(raftPath, "Raft log", err)
	}
	logs := &logStore{BoltStore: n.store, disk: &n.disk, log: log}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	if cfg.TLS != nil {
		stream, err := newTLSStreamLayer(cfg.RaftAddr, cfg.TLS, o.faults, log)
		if err != nil {
			return nil, listenError(cfg.RaftAddr, err)
		}
		n.stream = stream
		n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: stream, MaxPool: 3, Timeout: o.transportTimeout, Logger: hlog})
	} else if n.transport, err = raft.NewTCPTransportWithLogger(cfg.RaftAddr, nil, 3, o.transportTimeout, hlog); err != nil {
		return nil, listenError(cfg.RaftAddr, err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout, rc.ElectionTimeout = HeartbeatTimeout, ElectionTimeout
	if o.raftConfig != nil {
		o.raftConfig(rc)
	}
	var trans raft.Transport = noPipeline{n.transport}
	heartbeat, election := rc.HeartbeatTimeout, rc.ElectionTimeout
	if cfg.Rebuilt {
		n.catchUp = newCatchUp(n.transport.Consumer())
		trans = rebuiltTransport{noPipeline{n.transport}, n.catchUp}
		rc.HeartbeatTimeout, rc.ElectionTimeout = rebuildHeartbeat, rebuildHeartbeat
		go n.catchUp.filter(n.stop)
	}
	// The FSM persists its applied index; restoring a snapshot over it at
	// start would only roll it back. Restore only when it is missing or
	// behind the newest snapshot (fsm.db lost or replaced).
	applied := n.fsm.appliedIndex()
	var snapIndex uint64
	if metas, err := snaps.List(); err == nil {
		rc.NoSnapshotRestoreOnStart = applied > 0 && (len(metas) == 0 || applied >= metas[0].Index)
		if len(metas) > 0 {
			snapIndex = metas[0].Index
		}
	}
	// An entry is in raft.db before the FSM applies it, so an FSM ahead of
	// the log means raft.db lost entries (an older copy put back, a meta
	// page rolled back): new entries would reuse indexes the FSM skips.
	// An empty log (no entry, no snapshot) is left alone: tools build a
	// registry for a node without one (LoadSynthetic, tests).
	if last, err := n.store.LastIndex(); err == nil && max(last, snapIndex) > 0 && applied > max(last, snapIndex) {
		return nil, fmt.Errorf("Raft log %s: %w (it ends at index %d and the newest snapshot at %d, but %s has applied up to %d: the log lost entries)",
			raftPath, ErrCorruptState, last, snapIndex, fsmPath, applied)
	}

	// NewRaft reads the log after the newest snapshot (and panics on an
	// entry it cannot read): a damaged page there is found here.
	if err := guard(func() (err error) {
		if n.existing, err = raft.HasExistingState(logs, logs, snaps); err != nil {
			return err
		}
		n.raft, err = raft.NewRaft(rc, n.fsm, logs, logs, snaps, trans)
		return err
	}); errors.Is(err, ErrCorruptState) {
		return nil, storeError(raftPath, "Raft log", err)
	} else if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.started.Store(true)
	if n.catchUp != nil {
		log.Warn("rebuilt node: no vote and no election until it has caught up with its leader")
		go n.catchUp.watch(n.stop, n.raft.AppliedIndex, n.raft, heartbeat, election, log)
	}
	if !n.existing && cfg.Bootstrap && !cfg.Rebuilt {
		boot := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.transport.LocalAddr()}}}
		if err := n.raft.BootstrapCluster(boot).Error(); err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	return n, nil
}

// Startup errors.
var (
	// ErrAddrInUse: another process listens on the node's Raft address.
	ErrAddrInUse = errors.New("address already in use")
	// ErrCorruptState: raft.db or fsm.db is not a readable database (a
	// damaged disk, a truncated file, or a file that is not this node's
	// state), or the log lost entries the registry applied. Rebuild the
	// node from its peers (the appliance's `cluster rebuild`) or restore
	// from a backup.
	ErrCorruptState = errors.New("corrupt node state")
)

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("raft address %s: %w (another gatehouse node, or another program, listens there): %v", addr, ErrAddrInUse, err)
	}
	return fmt.Errorf("raft transport on %s: %w", addr, err)
}

// storeError names the file when bbolt cannot read it; a lock held by
// another process (a node already running on this data directory) says so.
func storeError(path, what string, err error) error {
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("%s %s is locked: is another gatehouse node running on this data directory? %w", what, path, err)
	}
	if errors.Is(err, ErrCorruptState) {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if isNoSpace(err) {
		return fmt.Errorf("%s %s: %w (free space on its file system and start again): %v", what, path, ErrStorageFull, err)
	}
	for _, cause := range corruptCauses {
		if errors.Is(err, cause) {
			return fmt.Errorf("%s %s: %w (%v)", what, path, ErrCorruptState, cause)
		}
	}
	if isTooSmall(err) {
		return fmt.Errorf("%s %s: %w (truncated: %v)", what, path, ErrCorruptState, err)
	}
	return fmt.Errorf("%s %s: %w", what, path, err)
}

// peerRefusalWindow is how long a refused handshake keeps a node unhealthy
// after the last attempt: Raft retries a peer at least every few seconds.
const peerRefusalWindow = time.Minute

// Problems lists what keeps this node from working in its cluster: Raft
// peers that refused its TLS handshake within the last minute (a peer of
// another cluster, or this data directory is from another cluster), and no
// known leader. Empty means healthy. Refusals are also logged at error level.
func (n *Node) Problems() []string {
	var out []string
	if n.stream != nil {
		out = n.stream.refused.problems(peerRefusalWindow)
	}
	if n.LeaderID() == "" {
		out = append(out, "no Raft leader known")
	}
	if err := n.disk.problem(); err != nil {
		out = append(out, err.Error())
	}
	if h := n.Halted(); h != nil {
		out = append(out, h.String())
	}
	return out
}

// logHalt is the FSM's halt hook: it logs the halt at error level, naming
// the entry, and a leader hands leadership on, since it can no longer
// apply (so acknowledge) anything.
func (n *Node) logHalt(h *Halt) {
	n.log.Error("registry halted: this build cannot apply a committed entry; it applies nothing more until upgraded",
		"index", h.Index, "type", h.Type, "version", h.Version, "reason", h.Reason, "build_feature_version", buildFeatureVersion)
	if n.raft != nil && n.raft.State() == raft.Leader {
		go func() {
			if err := n.raft.LeadershipTransfer().Error(); err != nil {
				n.log.Error("halted leader could not hand leadership on", "err", err)
			}
		}()
	}
}

// Fresh reports whether the node started without Raft state (a new node).
func (n *Node) Fresh() bool { return !n.existing }

// WaitLeader blocks until the cluster has a leader.
func (n *Node) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no Raft leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// TransferLeadership hands leadership to another voter (leader only).
func (n *Node) TransferLeadership() error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	return n.raft.LeadershipTransfer().Error()
}

// IsLeader reports whether this node leads.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// RaftAddr is the transport's bound address.
func (n *Node) RaftAddr() string { return string(n.transport.LocalAddr()) }

// CommitEnrollment records a verified enrollment and consumes its session.
// It fails with ErrSessionUsed, changing nothing, if the session was used,
// and with ErrSessionExpired if it expired by the leader's clock. A record
// carrying the certificate's validity (notAfter the device's
// CertificateNotAfter) commits as enrollment.accept v3, which every member
// must apply (the caller checks, see Commands), or v4 (the same in the
// binary envelope) when WithEnvelope says every member applies it; one
// without as v2.
func (n *Node) CommitEnrollment(ctx context.Context, sessionID string, sessionExpires time.Time, d Device, a AttestationRecord, flags ...Flag) (uint64, error) {
	if sessionID == "" || d.ID == "" {
		return 0, errors.New("cluster: an enrollment needs a session and a device ID")
	}
	c := acceptEnrollment{SessionID: sessionID, SessionExpires: sessionExpires, Device: d, Attestation: a, Flags: flags}
	if !a.CertificateNotBefore.IsZero() || !a.CertificateNotAfter.IsZero() {
		if n.envelope != nil && n.envelope(ctx) {
			return n.applyEnvelope(ctx, "enrollment.accept", 4, &acceptEnrollmentV3{c})
		}
		return n.apply(ctx, "enrollment.accept", 3, &acceptEnrollmentV3{c})
	}
	return n.apply(ctx, "enrollment.accept", 2, &acceptEnrollmentV2{c})
}

// CommitRejection records a refused attempt; sessionID, if set, is consumed.
func (n *Node) CommitRejection(ctx context.Context, sessionID string, sessionExpires time.Time, a AttestationRecord, flags ...Flag) (uint64, error) {
	return n.apply(ctx, "attestation.reject", 1, &rejectAttestation{SessionID: sessionID, SessionExpires: sessionExpires, Attestation: a, Flags: flags})
}

func (n *Node) apply(ctx context.Context, typ string, version int, payload any) (uint64, error) {
	if err := n.mayPropose(typ, version); err != nil {
		return 0, err
	}
	// The time is provisional on a follower: the leader stamps its own
	// (ApplyForwarded) before the command reaches the log.
	b, err := encodeCommand(typ, version, n.now().UTC(), payload)
	if err != nil {
		return 0, err
	}
	return n.propose(ctx, b)
}

// applyEnvelope is apply for a command framed in the binary envelope.
func (n *Node) applyEnvelope(ctx context.Context, typ string, version int, c carriesRecord) (uint64, error) {
	if err := n.mayPropose(typ, version); err != nil {
		return 0, err
	}
	b, err := encodeEnvelope(typ, version, n.now().UTC(), c)
	if err != nil {
		return 0, err
	}
	return n.propose(ctx, b)
}

// mayPropose: what every write checks before it is encoded and proposed,
// in JSON or in the binary envelope. A node that cannot store what it would
// acknowledge takes no writes, and no command goes past the cluster's
// committed feature version.
func (n *Node) mayPropose(typ string, version int) error {
	if err := n.disk.problem(); err != nil {
		return err
	}
	return n.commandEnabled(typ, version)
}

// propose commits an encoded command, through the leader if this node
// follows.
func (n *Node) propose(ctx context.Context, b []byte) (uint64, error) {
	res, err := n.submit(ctx, b)
	return res.Result, err
}

// submit commits a command through the leader: locally on the leader, else
// forwarded (with read-your-writes: acknowledged only once applied here).
// Through an election it holds the command for up to leaderWait: while no
// leader is known, or the known one could not be reached before the
// command entered its log (ErrNotSent: a killed leader refuses the
// connection), it waits for the next leader, which may be this node. A
// command that may have entered a leader's log is never sent again: that
// error is returned.
func (n *Node) submit(ctx context.Context, b []byte) (Applied, error) {
	deadline := time.Now().Add(n.leaderWait)
	for {
		var res Applied
		var err error
		switch leader := n.LeaderID(); {
		case n.raft.State() == raft.Leader || n.forwarder == nil:
			res, err = n.applyLocal(ctx, b)
		case leader == "":
			err = fmt.Errorf("%w: %w: no leader elected", ErrNotLeader, ErrNotSent)
		default:
			if res, err = n.forwarder.Forward(ctx, leader, b); err == nil {
				// Read-your-writes: a write acknowledged by this node is visible here.
				return res, n.waitApplied(ctx, res.Index)
			}
		}
		if n.forwarder == nil || !errors.Is(err, ErrNotSent) || !time.Now().Before(deadline) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return res, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ApplyForwarded applies a command a follower forwarded. The command is
// decoded first: a command this leader does not know is refused here rather
// than reaching the log, where every replica would have to stop on it. The
// leader replaces the command's time with its own clock: anything the FSM
// judges by time (join-token and session expiry, failure windows) is judged
// by the leader's clock at apply, never by the follower's.
func (n *Node) ApplyForwarded(ctx context.Context, cmd []byte) (Applied, error) {
	c, _, err := decodeCommand(cmd)
	if err != nil {
		return Applied{}, err
	}
	if n.raft.State() != raft.Leader {
		return Applied{}, ErrNotLeader
	}
	if err := n.disk.problem(); err != nil {
		return Applied{}, err
	}
	if err := n.commandEnabled(c.Type, c.Version); err != nil {
		return Applied{}, err
	}
	if IsEnvelope(cmd) {
		return n.applyLocal(ctx, restampEnvelope(cmd, n.now().UTC()))
	}
	c.Time = n.now().UTC()
	stamped, err := json.Marshal(c)
	if err != nil {
		return Applied{}, err
	}
	return n.applyLocal(ctx, stamped)
}

func (n *Node) applyLocal(ctx context.Context, b []byte) (Applied, error) {
	// A halted leader proposes nothing: it could not apply (so answer
	// for) the entry, which the others would commit all the same.
	if h := n.Halted(); h != nil {
		return Applied{}, fmt.Errorf("%w: %s", ErrHalted, h)
	}
	timeout := n.applyTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	f := n.raft.Apply(b, timeout)
	if err := n.waitFuture(ctx, f); err != nil {
		if isNoSpace(err) { // the leader's log append failed: nothing was replicated
			return Applied{}, fmt.Errorf("%w: not written: %v", ErrStorageFull, err)
		}
		// A leadership transfer refuses new entries until it ends: like no
		// leader, a reason to retry (503), not an internal error.
		// These three refuse the entry before it is appended: it may be
		// sent again. After ErrLeadershipLost it may still commit.
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return Applied{}, fmt.Errorf("%w: %w: %v", ErrNotLeader, ErrNotSent, err)
		}
		if errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			return Applied{}, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return Applied{}, err
	}
	res, ok := f.Response().(applyResult)
	if !ok {
		return Applied{}, fmt.Errorf("cluster: unexpected apply response %T", f.Response())
	}
	return Applied{Result: res.Result, Index: f.Index()}, res.Err
}

// waitFuture waits for an entry's outcome. It stops waiting, without an
// acknowledgement, when ctx ends or when this node's FSM stalls for lack of
// space (the entry may still commit and apply later, as with any unanswered
// write: the caller's retry meets its effects).
func (n *Node) waitFuture(ctx context.Context, f raft.ApplyFuture) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return fmt.Errorf("%w: no outcome before the request ended: %v", ErrNotLeader, ctx.Err())
		case <-t.C:
			if n.disk.applyStalled() {
				if err := n.disk.problem(); err != nil {
					return fmt.Errorf("%w; not acknowledged", err)
				}
			}
		}
	}
}

// ReadIndex is the leader's side of a linearizable read. Every write this
// term was acknowledged only after the leader's FSM applied it, and a
// barrier once per term covers writes from earlier terms; so once the leader
// confirms it still leads, its FSM's last index bounds every acknowledged
// write. That index names an entry every replica's FSM will process, so a
// follower can wait for it.
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, ErrNotLeader
	}
	// A halted leader's applied index is not the commit point: a read
	// index from it could miss writes committed after its halt.
	if h := n.Halted(); h != nil {
		return 0, fmt.Errorf("%w: %s", ErrHalted, h)
	}
	if term := n.raft.CurrentTerm(); n.barrierTerm.Load() != term {
		if err := n.raft.Barrier(n.applyTimeout).Error(); err != nil {
			return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		n.barrierTerm.Store(term)
	}
	idx := n.fsm.last.Load()
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
	}
	return idx, nil
}

// Linearize makes the next local read linearizable (rqlite's read-index):
// it learns the leader's commit index after the leader confirmed its
// leadership, then waits until this node has applied that far. A read after
// Linearize sees every write acknowledged before it began.
func (n *Node) Linearize(ctx context.Context) error {
	var idx uint64
	var err error
	if n.raft.State() == raft.Leader {
		idx, err = n.ReadIndex(ctx)
	} else if leader := n.LeaderID(); leader == "" || n.forwarder == nil {
		return fmt.Errorf("%w: no leader to confirm a consistent read", ErrNotLeader)
	} else {
		idx, err = n.forwarder.ReadIndex(ctx, leader)
	}
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, idx)
}

func (n *Node) waitApplied(ctx context.Context, idx uint64) error {
	if n.fsm.last.Load() >= idx {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.applyTimeout)
	defer cancel()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for n.fsm.last.Load() < idx {
		if n.disk.applyStalled() {
			if err := n.disk.problem(); err != nil {
				return fmt.Errorf("waiting to apply index %d (at %d): %w", idx, n.fsm.last.Load(), err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting to apply index %d (at %d): %v", ErrNotLeader, idx, n.fsm.last.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Device returns a device, or an error wrapping ErrNotFound. Reads are
// local: on a single node they see every acknowledged write.
func (n *Node) Device(id string) (Device, error) { return n.fsm.device(id) }

// Devices lists every device, sorted by ID.
func (n *Node) Devices() ([]Device, error) {
	ds, err := n.fsm.devices()
	sort.Slice(ds, func(i, j int) bool { return ds[i].ID < ds[j].ID })
	return ds, err
}

// Attestation returns one record, or an error wrapping ErrNotFound.
func (n *Node) Attestation(id uint64) (AttestationRecord, error) { return n.fsm.attestation(id) }

// Attestations lists records, newest first.
func (n *Node) Attestations(q AttestationQuery) ([]AttestationRecord, error) {
	return n.fsm.attestations(q)
}

// SessionUsed reports whether a session has been consumed.
func (n *Node) SessionUsed(sessionID string) (bool, error) { return n.fsm.sessionUsed(sessionID) }

// Stats are Raft's own counters (state, term, indexes, snapshot).
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// StateHash is a content hash of the registry.
func (n *Node) StateHash() (string, error) { return n.fsm.stateHash() }

// Snapshot makes Raft take a snapshot now.
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// closeWait bounds how long Close waits for Raft's goroutines once shutdown
// began: applying a last batch or writing a snapshot to disk may take a
// while; network waits do not (Close cuts them short).
const closeWait = 30 * time.Second

// ErrCloseTimeout: Raft's goroutines did not stop within closeWait. Close
// then leaves the stores open, as a goroutine still running may use them;
// they are released when the process exits, and their files are consistent
// (every bbolt commit is atomic and fsynced).
var ErrCloseTimeout = errors.New("raft did not shut down in time")

// Close stops Raft and closes the stores. It is idempotent and bounded: it
// returns within closeWait, with ErrCloseTimeout if Raft had not stopped.
//
// Order: Raft's shutdown begins; then the transport and every Raft
// connection close, so no goroutine keeps waiting on a peer that stopped
// answering, or on one that is itself shutting down and waiting on this node
// (a node's transport used to answer RPCs only after its own Raft had
// stopped); then, once Raft's goroutines are gone, the log and state stores close.
// Nothing acknowledged is lost by cutting the network: a write is
// acknowledged only once a quorum has it in its fsynced log, and nothing is
// truncated at shutdown.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		close(n.stop) // a batch waiting for space gives up: nothing stored, nothing skipped
		var errs []error
		if n.raft != nil {
			start := time.Now()
			shutdown := n.raft.Shutdown()
			n.closeTransport()
			done := make(chan error, 1)
			go func() { done <- shutdown.Error() }()
			select {
			case err := <-done:
				errs = append(errs, err)
				n.log.Info("raft stopped", "took", time.Since(start).Round(time.Millisecond))
			case <-time.After(closeWait):
				n.log.Error("raft did not stop: leaving its stores open until the process exits", "waited", closeWait)
				n.closeErr = fmt.Errorf("cluster: %w (waited %s for its goroutines)", ErrCloseTimeout, closeWait)
				return
			}
		}
		n.closeTransport() // again, for a node whose Raft never started
		if n.store != nil {
			errs = append(errs, n.store.Close())
		}
		if n.fsm != nil {
			errs = append(errs, n.fsm.close())
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// closeTransport stops accepting and fails every Raft RPC in flight:
// pooled and in-use connections, inbound and outbound, close now.
func (n *Node) closeTransport() {
	if n.transport == nil {
		return
	}
	n.transport.Close()
	n.transport.CloseStreams()
	if n.stream != nil {
		n.stream.conns.closeAll()
	}
}

// WriteState writes a consistent copy of the registry (a bbolt file) to w and
// returns the index of the last entry it includes.
func (n *Node) WriteState(w io.Writer) (uint64, error) {
	snap, err := n.fsm.Snapshot()
	if err != nil {
		return 0, err
	}
	defer snap.Release()
	tx := snap.(*fsmSnapshot).tx
	if _, err := tx.WriteTo(w); err != nil {
		return 0, err
	}
	return n.fsm.last.Load(), nil
}

// RestoreState replaces the whole cluster's registry with state (as written
// by WriteState), through Raft's user restore: the leader installs it and
// followers receive it as a snapshot. For disaster recovery into a fresh
// cluster; leader only.
func (n *Node) RestoreState(state io.Reader, size int64) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size, Configuration: cf.Configuration(), ConfigurationIndex: cf.Index()}
	return n.raft.Restore(meta, state, n.applyTimeout)
}
