package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// stallProxy forwards TCP to a node's Raft address until Stall: from then on
// it keeps every connection open and accepts new ones, but forwards nothing
// either way, like a peer that stopped answering (SIGSTOP, overload, a
// partition that sends no RST).
type stallProxy struct {
	ln      net.Listener
	target  string
	stallCh chan struct{}
	doneCh  chan struct{}
	once    sync.Once
	mu      sync.Mutex
	conns   []net.Conn
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, stallCh: make(chan struct{}), doneCh: make(chan struct{})}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding.
func (p *stallProxy) Stall() { p.once.Do(func() { close(p.stallCh) }) }

func (p *stallProxy) keep(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = append(p.conns, c)
}

func (p *stallProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.keep(c)
		go func() {
			select {
			case <-p.stallCh:
				return // accepted, never read nor answered
			default:
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.keep(up)
			go p.pipe(up, c)
			go p.pipe(c, up)
		}()
	}
}

// pipe copies until stalled; then it stops reading, so the sender's
// buffers fill and its reads wait for answers that never come.
func (p *stallProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.stallCh:
			<-p.doneCh
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.doneCh:
	default:
		close(p.doneCh)
	}
	for _, c := range p.conns {
		c.Close()
	}
}

// withTransportTimeout shortens the Raft transport's I/O timeout, so a
// stalled peer's RPCs fail within the test.
func withTransportTimeout(d time.Duration) Option {
	return func(o *options) { o.transportTimeout = d }
}

// closeWithin runs Close in a goroutine and reports whether it returned
// within d, so a hang fails the test instead of hanging the suite.
func closeWithin(n *Node, d time.Duration) (error, bool) {
	done := make(chan error, 1)
	go func() { done <- n.Close() }()
	select {
	case err := <-done:
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

// stuckRaft returns the stacks of goroutines in hashicorp/raft's
// replication or pipeline, to tell what a hung Close waits for.
func stuckRaft() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "raft.(*netPipeline)") || strings.Contains(g, "raft.(*Raft).replicate") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// trio starts a three-node cluster led by the first node; peerAddr maps a
// node's Raft address to the one the leader is told (a proxy). Only the
// followers are closed at cleanup (bounded): the test closes the leader.
func trio(t *testing.T, peerAddr func(id, addr string) string, opts ...Option) (*Node, []*Node, []string) {
	t.Helper()
	return trioTLS(t, nil, peerAddr, opts...)
}

// trioTLS is trio with Raft over TLS when cfg is set.
func trioTLS(t *testing.T, cfg *tls.Config, peerAddr func(id, addr string) string, opts ...Option) (*Node, []*Node, []string) {
	t.Helper()
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	all := append([]Option{WithRaftConfig(fastRaft)}, opts...)
	leader, err := Open(Config{NodeID: "n1", DataDir: dirs[0], RaftAddr: "127.0.0.1:0", TLS: cfg, Bootstrap: true}, all...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var followers []*Node
	for i, id := range []string{"n2", "n3"} {
		f, err := Open(Config{NodeID: id, DataDir: dirs[i+1], RaftAddr: "127.0.0.1:0", TLS: cfg}, all...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, ok := closeWithin(f, 20*time.Second); !ok {
				t.Errorf("follower %s: Close did not return within 20 s", id)
			}
		})
		if err := leader.AddVoter(id, peerAddr(id, f.RaftAddr())); err != nil {
			t.Fatal(err)
		}
		followers = append(followers, f)
	}
	return leader, followers, dirs
}

// load commits rejections on n until it fails or stop closes; it returns
// the IDs of the acknowledged ones.
func load(n *Node, stop <-chan struct{}) <-chan []uint64 {
	out := make(chan []uint64, 1)
	go func() {
		var acked []uint64
		defer func() { out <- acked }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id, err := n.CommitRejection(context.Background(), "", time.Time{}, record("d", OutcomeRejected))
			if err != nil {
				return
			}
			acked = append(acked, id)
		}
	}()
	return out
}

// waitIndex waits until n has applied index idx.
func waitIndex(t *testing.T, n *Node, idx uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.fsm.last.Load() < idx {
		if time.Now().After(deadline) {
			t.Fatalf("node at index %d, want %d", n.fsm.last.Load(), idx)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkAcked reopens a closed node's data directory and finds every
// acknowledged record there: a bounded shutdown loses nothing it acknowledged.
func checkAcked(t *testing.T, dir, id string, cfg *tls.Config, acked []uint64) {
	t.Helper()
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged: the test put no load on the cluster")
	}
	n, err := Open(Config{NodeID: id, DataDir: dir, RaftAddr: "127.0.0.1:0", TLS: cfg}, WithRaftConfig(fastRaft))
	if err != nil {
		t.Fatalf("reopen %s: %v", id, err)
	}
	defer n.Close()
	for _, a := range acked {
		if _, err := n.Attestation(a); err != nil {
			t.Fatalf("acknowledged record %d lost after shutdown: %v", a, err)
		}
	}
}

// testRaftTLS is a mutual TLS config for Raft over loopback: one
// self-signed certificate is every node's and the only root.
func testRaftTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "raft"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      pool, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
	}
}

// The herd load test's hang: a leader replicating under load to a follower
// whose Raft connection stopped answering. Close must return within a
// bound, and keep every write it acknowledged. Over TLS (the appliance's
// transport) Close closes every Raft connection, so it does not wait out
// the transport's 10 s timeout either.
func TestCloseBoundedWhenFollowerStopsAnswering(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  []Option
		tls   bool
		bound time.Duration
	}{
		{name: "tcp", opts: []Option{withTransportTimeout(500 * time.Millisecond)}, bound: 10 * time.Second},
		{name: "tls", tls: true, bound: 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var proxy *stallProxy
			var cfg *tls.Config
			if tc.tls {
				cfg = testRaftTLS(t)
			}
			leader, followers, dirs := trioTLS(t, cfg, func(id, addr string) string {
				if id != "n3" {
					return addr
				}
				proxy = newStallProxy(t, addr)
				return proxy.Addr()
			}, tc.opts...)

			stop := make(chan struct{})
			acked := load(leader, stop)
			// n3 follows under load, then stops answering.
			waitIndex(t, followers[1], 200)
			proxy.Stall()
			time.Sleep(3 * time.Second)
			before := leader.fsm.last.Load()
			time.Sleep(200 * time.Millisecond)
			if leader.fsm.last.Load() == before {
				t.Fatal("the leader stopped committing with one follower stalled")
			}

			start := time.Now()
			err, ok := closeWithin(leader, tc.bound)
			if !ok {
				t.Fatalf("leader Close did not return within %s with a follower that stopped answering", tc.bound)
			}
			if err != nil {
				t.Fatalf("leader Close: %v", err)
			}
			t.Logf("leader closed in %s", time.Since(start))
			close(stop)
			checkAcked(t, dirs[0], "n1", cfg, <-acked)
		})
	}
}

// Two nodes closing at once while entries are in flight wait on each other
// (each one's RPCs go unanswered by the other's stopping Raft loop); both
// Closes must return within a bound.
func TestCloseBoundedWhenTwoNodesCloseAtOnce(t *testing.T) {
	leader, followers, dirs := trio(t, func(_, addr string) string { return addr })
	stop := make(chan struct{})
	acked := load(leader, stop)
	waitIndex(t, followers[0], 200)
	waitIndex(t, followers[1], 200)

	errs := make(chan error, 2)
	for _, n := range []*Node{leader, followers[0]} {
		go func() {
			err, ok := closeWithin(n, 15*time.Second)
			if !ok {
				err = errors.New("Close did not return within 15 s")
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	checkAcked(t, dirs[0], "n1", nil, <-acked)
}

// The hang of the herd load test happened before SIGTERM: a follower
// answered a pipelined AppendEntries with a newer term (an election under
// load) while more entries were in flight, and hashicorp/raft's pipeline
// deadlocked (hashicorp/raft#612): the replication goroutine waited forever
// to hand an entry to a response decoder that waited forever for a reader
// that had gone. Leadership moved on; the stuck goroutine stayed, and
// raft.Shutdown waited for it. Here followers are made to campaign (a
// TimeoutNow RPC, as in a leadership transfer) while the leader commits
// under load; afterwards every node must close within a bound.
func TestCloseBoundedAfterElectionsUnderLoad(t *testing.T) {
	leader, followers, _ := trio(t, func(_, addr string) string { return addr })
	nodes := append([]*Node{leader}, followers...)
	waitIndex(t, followers[0], 1)
	waitIndex(t, followers[1], 1)

	// Load on whichever node leads, retried through elections.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := 0
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, n := range nodes {
					if n.IsLeader() {
						if _, err := n.CommitRejection(context.Background(), "", time.Time{}, record("d", OutcomeRejected)); err == nil {
							mu.Lock()
							acked++
							mu.Unlock()
						}
					}
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}

	trans, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer trans.Close()
	for round := range 8 {
		var l *Node
		for l == nil {
			for _, n := range nodes {
				if n.IsLeader() {
					l = n
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // pipelines under load
		target := nodes[(round+1)%3]
		if target == l {
			target = nodes[(round+2)%3]
		}
		var resp raft.TimeoutNowResponse
		req := raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax}}
		if err := trans.TimeoutNow(raft.ServerID(target.cfg.NodeID), raft.ServerAddress(target.RaftAddr()), &req, &resp); err != nil {
			t.Fatalf("round %d: TimeoutNow to %s: %v", round, target.cfg.NodeID, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for l.IsLeader() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if acked == 0 {
		t.Fatal("no write was acknowledged: the test put no load on the cluster")
	}

	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() {
			err, ok := closeWithin(n, 15*time.Second)
			if !ok {
				err = errors.New(n.cfg.NodeID + ": Close did not return within 15 s")
			}
			errs <- err
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.Logf("raft goroutines still running:\n%s", stuckRaft())
	}
}
