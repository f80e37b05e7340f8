package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStreamLayer carries Raft over mutual TLS. Both sides present node
// certificates; the tls.Config the appliance supplies decides which peers
// are members (chain to the cluster root, node identity). A peer without a
// valid node certificate fails the handshake and never reaches Raft.
type tlsStreamLayer struct {
	net.Listener
	cfg     *tls.Config
	faults  *Faults // nil outside partition tests
	refused peerRefusals
	inbound inboundRefusals
	conns   connSet // every open Raft connection, closed at shutdown
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(addr string, cfg *tls.Config, faults *Faults, log *slog.Logger) (*tlsStreamLayer, error) {
	if cfg == nil || (cfg.GetCertificate == nil && len(cfg.Certificates) == 0) || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("cluster: the Raft TLS config must present a node certificate and require one from peers")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tlsStreamLayer{Listener: ln, cfg: cfg, faults: faults, refused: peerRefusals{log: log}, inbound: inboundRefusals{log: log}}, nil
}

// inboundRefusals logs incoming connections whose TLS handshake failed,
// at most inboundRefusalsPerMinute a minute, and with the first of the next
// minute how many went unlogged: anyone who reaches the Raft port can open them, and Raft would
// log each at error level.
type inboundRefusals struct {
	log    *slog.Logger
	mu     sync.Mutex
	window time.Time // start of the current minute
	n      int       // refusals in it
}

const inboundRefusalsPerMinute = 10

func (r *inboundRefusals) refused(remote net.Addr, err error) {
	if r.log == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.window) >= time.Minute {
		if r.n > inboundRefusalsPerMinute {
			r.log.Warn("raft: more incoming connections were refused than logged", "unlogged", r.n-inboundRefusalsPerMinute, "since", r.window)
		}
		r.window, r.n = now, 0
	}
	if r.n++; r.n <= inboundRefusalsPerMinute {
		r.log.Warn("raft: refused an incoming connection (its TLS handshake failed: not a node of this cluster)", "remote", remote.String(), "err", err)
	}
}

// peerRefusals remembers Raft peers whose TLS handshake failed although
// the connection opened: a peer of another cluster (its certificate does not
// chain to this cluster's root, and ours not to its), or one that refuses
// this node's certificate. Such a node cannot take part in its cluster and
// must say so loudly rather than keep retrying quietly.
type peerRefusals struct {
	log *slog.Logger
	mu  sync.Mutex
	m   map[string]peerRefusal // peer address →
}

type peerRefusal struct {
	err         error
	since, last time.Time
	logged      time.Time
}

// peerRefusalLogEvery bounds the error log to one line per peer per minute.
const peerRefusalLogEvery = time.Minute

func (p *peerRefusals) refused(addr string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.m == nil {
		p.m = map[string]peerRefusal{}
	}
	r, ok := p.m[addr]
	if !ok {
		r.since = now
	}
	r.err, r.last = err, now
	if now.Sub(r.logged) >= peerRefusalLogEvery && p.log != nil {
		p.log.Error("raft peer refused the connection: this node cannot reach its cluster (a peer of another cluster, or a data directory from another cluster?)", "peer", addr, "since", r.since, "err", err)
		r.logged = now
	}
	p.m[addr] = r
}

// refusal tells a handshake that was refused (a certificate either side
// does not accept) from one cut short (timeout, reset, closed: a peer that
// is stopping or slow), which is no sign of another cluster.
func refusal(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE)
}

func (p *peerRefusals) accepted(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, addr)
}

// problems lists refusals seen within window, by peer address.
func (p *peerRefusals) problems(window time.Duration) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for addr, r := range p.m {
		if time.Since(r.last) <= window {
			out = append(out, fmt.Sprintf("raft peer %s refused the TLS handshake since %s: %v", addr, r.since.UTC().Format(time.RFC3339), r.err))
		}
	}
	sort.Strings(out)
	return out
}

// Accept wraps each connection in TLS. The handshake runs on Raft's
// per-connection goroutine at the first read, so a stalled peer cannot block
// accepting others; a peer that fails it is disconnected before Raft decodes
// anything.
func (s *tlsStreamLayer) Accept() (net.Conn, error) {
	var c net.Conn
	for {
		var err error
		if c, err = s.Listener.Accept(); err != nil {
			return nil, err
		}
		if s.faults.track(c) != nil {
			continue
		}
		if c, err = s.conns.add(c); err != nil {
			return nil, err
		}
		break
	}
	tc := tls.Server(c, s.cfg)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	return &handshakeConn{Conn: tc, refused: &s.inbound}, nil
}

// handshakeConn clears the handshake deadline once the handshake is done.
// A failed handshake is logged by inboundRefusals and ends the connection
// as io.EOF, which Raft closes without a log line of its own.
type handshakeConn struct {
	*tls.Conn
	refused *inboundRefusals
	done    bool
}

func (c *handshakeConn) Read(b []byte) (int, error) {
	if !c.done {
		if err := c.Conn.Handshake(); err != nil {
			c.refused.refused(c.Conn.RemoteAddr(), fmt.Errorf("raft peer refused: %w", err))
			c.Conn.Close()
			return 0, io.EOF
		}
		_ = c.Conn.SetDeadline(time.Time{})
		c.done = true
	}
	return c.Conn.Read(b)
}

// Dial connects to a peer and verifies it is a member.
func (s *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", string(addr))
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	if err := s.faults.track(c); err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	if c, err = s.conns.add(c); err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	tc := tls.Client(c, s.cfg)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		if refusal(err) {
			s.refused.refused(string(addr), err)
		}
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	_ = tc.SetDeadline(time.Time{})
	s.refused.accepted(string(addr))
	return tc, nil
}

// connSet tracks open connections so that shutdown can close them all:
// NetworkTransport.Close closes only the listener, and an RPC blocked on a
// peer that stopped answering would otherwise wait out its timeout (an
// InstallSnapshot's grows with the snapshot's size).
type connSet struct {
	mu     sync.Mutex
	closed bool
	m      map[*setConn]struct{}
}

// setConn leaves its set when closed.
type setConn struct {
	net.Conn
	set *connSet
}

func (c *setConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.m, c)
	c.set.mu.Unlock()
	return c.Conn.Close()
}

// add tracks c; after closeAll it closes c and fails.
func (s *connSet) add(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, errStreamClosed
	}
	if s.m == nil {
		s.m = map[*setConn]struct{}{}
	}
	sc := &setConn{Conn: c, set: s}
	s.m[sc] = struct{}{}
	return sc, nil
}

// closeAll closes every tracked connection and refuses new ones.
func (s *connSet) closeAll() {
	s.mu.Lock()
	open := s.m
	s.m, s.closed = nil, true
	s.mu.Unlock()
	for c := range open {
		c.Conn.Close()
	}
}

var errStreamClosed = errors.New("raft stream layer closed (node shutting down)")

// noPipeline is the network transport without pipelined replication.
// hashicorp/raft v1.7.3's pipeline deadlocks when a follower answers with a
// newer term or a rejection while more entries are in flight
// (hashicorp/raft#612): the replication goroutine waits forever to hand an
// entry to the response decoder, which waits forever for a reader that has
// gone. The follower then gets no more entries from that leader, and
// raft.Shutdown waits for the goroutine forever (the herd load test's hang).
// Without the pipeline Raft sends one AppendEntries (up to MaxAppendEntries
// entries) at a time per follower, each bounded by the transport's timeout;
// on a LAN that costs little (hashicorp/raft#541).
type noPipeline struct{ *raft.NetworkTransport }

func (noPipeline) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// Faults cuts a node's Raft traffic on demand, for partition tests: while
// isolated, dials fail, accepted connections are dropped, and connections
// already open are closed. It injects faults at the stream layer, so Raft
// itself runs unmodified.
type Faults struct {
	mu       sync.Mutex
	isolated bool
	conns    map[net.Conn]struct{}
}

// Isolate cuts the node off.
func (f *Faults) Isolate() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.isolated = true
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// Heal reconnects the node.
func (f *Faults) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.isolated = false
}

// track admits a connection, or closes it when isolated.
func (f *Faults) track(c net.Conn) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.isolated {
		c.Close()
		return errIsolated
	}
	if f.conns == nil {
		f.conns = map[net.Conn]struct{}{}
	}
	f.conns[c] = struct{}{}
	return nil
}

var errIsolated = errors.New("isolated by fault injection")

// WithFaults lets a test partition this node (TLS transport only).
func WithFaults(f *Faults) Option { return func(o *options) { o.faults = f } }
