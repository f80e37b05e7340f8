package chaos

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// Ports every node uses inside its own namespace (so they never collide
// with another node's, or another test's).
const (
	apiPort  = "8443"
	raftPort = "7000"
)

// Cluster is a set of `gatehouse serve` processes, each in its own network
// namespace, that the test can kill, pause and partition.
type Cluster struct {
	// Nodes are the members; node i is Nodes[i].
	Nodes []*Node
	// Root is the appliance's root certificate: clients verify every
	// node's HTTPS certificate against it.
	Root *x509.Certificate

	t   testing.TB
	bin string
	lab *netLab
}

// Node is one `gatehouse serve` process. Its methods are safe for
// concurrent use.
type Node struct {
	// ID is the node's Raft ID (node-1, node-2, ...).
	ID string
	// Dir is its data directory; Log the file its stdout and stderr go to.
	Dir, Log string
	// API is host:port of its device API (HTTPS).
	API string

	bin, netns string
	args       []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	paused  bool
	started int64 // the log's size when the current process started
}

// Options configure NewCluster.
type Options struct {
	// Bin is the gatehouse binary; by default NewCluster builds one from
	// this module's source (with the build flags in GOFLAGS, as make sets
	// them), so that the nodes never run a stale binary.
	Bin string
	// Nodes is the cluster's size; default 3.
	Nodes int
	// EKRoots is the PEM bundle of the TPM manufacturer CAs the cluster
	// trusts (servertest.EKRoots of the test's manufacturer).
	EKRoots []byte
	// Password unlocks the CA key (servertest.Password).
	Password []byte
}

// NewCluster initializes and starts opts.Nodes nodes, each in its own
// network namespace, joins them into one cluster and waits until every
// node is a voter with a known API address. Everything it makes (processes,
// namespaces, links, the bridge, the data directories) is removed in
// t.Cleanup; leftovers of a killed earlier run are removed first. It fails
// the test when ip or nft is missing (make deps installs them).
func NewCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	bin := opts.Bin
	if bin == "" {
		bin = buildGatehouse(t)
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the gatehouse binary: %v", err)
	}
	lab, err := newNetLab(opts.Nodes)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, bin: bin, lab: lab}
	// Registered first, so it runs last: after every node is dead.
	t.Cleanup(func() {
		if err := lab.close(); err != nil {
			t.Errorf("removing the network: %v", err)
		}
	})
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			n.Kill()
		}
	})
	work := t.TempDir()
	roots := filepath.Join(work, "ek-roots.pem")
	pw := filepath.Join(work, "password")
	if err := errors.Join(os.WriteFile(roots, opts.EKRoots, 0o644), os.WriteFile(pw, opts.Password, 0o600)); err != nil {
		t.Fatal(err)
	}
	for i := range opts.Nodes {
		ip := lab.IP(i)
		n := &Node{ID: fmt.Sprintf("node-%d", i+1), Dir: filepath.Join(work, fmt.Sprintf("node-%d", i+1)),
			Log: filepath.Join(work, fmt.Sprintf("node-%d.log", i+1)), API: ip + ":" + apiPort, bin: bin, netns: lab.netns(i)}
		addrs := []string{"--listen", n.API, "--raft-addr", ip + ":" + raftPort, "--hostname", ip}
		if i == 0 {
			out, err := exec.Command(bin, append([]string{"init", "--data-dir", n.Dir, "--node-id", n.ID,
				"--password-file", pw, "--ek-roots", roots}, addrs...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("init: %v\n%s", err, out)
			}
			n.args = []string{"serve", "--data-dir", n.Dir, "--password-file", pw}
		} else {
			tok, err := exec.Command(bin, "cluster", "token", "create", "--data-dir", c.Nodes[0].Dir).Output()
			if err != nil {
				t.Fatalf("token: %v", err)
			}
			tf := filepath.Join(work, n.ID+".token")
			if err := os.WriteFile(tf, tok, 0o600); err != nil {
				t.Fatal(err)
			}
			// The same arguments restart it: --join is ignored once the node has joined.
			n.args = append([]string{"serve", "--data-dir", n.Dir, "--password-file", pw, "--join", c.Nodes[0].API,
				"--token-file", tf, "--node-id", n.ID}, addrs...)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
		if err := n.WaitReady(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := waitUntil(60*time.Second, func() error {
		ms, err := c.AdminClient(0).Members(context.Background())
		if err != nil {
			return err
		}
		if len(ms) != len(c.Nodes) {
			return fmt.Errorf("%d members", len(ms))
		}
		for _, m := range ms {
			if m.APIAddr == "" {
				return fmt.Errorf("%s has no API address yet", m.ID)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("waiting for %d voters: %v", len(c.Nodes), err)
	}
	if c.Root, err = readRoot(filepath.Join(c.Nodes[0].Dir, "ca", "root.crt")); err != nil {
		t.Fatal(err)
	}
	return c
}

// buildGatehouse builds cmd/gatehouse of the module the test runs in into
// a temporary directory and returns the binary's path.
func buildGatehouse(t testing.TB) string {
	t.Helper()
	mod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || len(bytes.TrimSpace(mod)) == 0 {
		t.Fatalf("go env GOMOD: %v (%s)", err, mod)
	}
	bin := filepath.Join(t.TempDir(), "gatehouse")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/gatehouse")
	cmd.Dir = filepath.Dir(string(bytes.TrimSpace(mod)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/gatehouse: %v\n%s", err, out)
	}
	return bin
}

// URL is node i's device API base URL (https://IP:port).
func (c *Cluster) URL(i int) string { return "https://" + c.Nodes[i].API }

// URLs is every node's device API base URL, in node order.
func (c *Cluster) URLs() []string {
	out := make([]string, len(c.Nodes))
	for i := range c.Nodes {
		out[i] = c.URL(i)
	}
	return out
}

// RootPool is a certificate pool holding Root.
func (c *Cluster) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Root)
	return p
}

// AdminClient returns an admin client of node i, through its admin socket.
// Its reads are linearizable (they ask the leader for a read index) unless
// the caller sets StaleReads.
func (c *Cluster) AdminClient(i int) *server.AdminClient {
	return server.NewAdminClient(c.Nodes[i].Dir)
}

// statusTimeout bounds a status call: a node's status asks every member
// for its version, and gives a member that does not answer 2 s.
const statusTimeout = 5 * time.Second

// statuses asks the running nodes among idx for their status, in
// parallel and from their own state, and returns the answers by index.
func (c *Cluster) statuses(idx []int) map[int]server.Status {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[int]server.Status{}
	for _, i := range idx {
		if !c.Nodes[i].Running() {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
			defer cancel()
			cl := c.AdminClient(i)
			cl.StaleReads = true
			if s, err := cl.StatusBrief(ctx); err == nil {
				mu.Lock()
				out[i] = s
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// Leader returns the index of the node that says it is the leader, when
// every other node that answers names it too; a node that is down, paused
// or cut off from the test does not answer. It is -1 when no such node
// exists (no leader, or two that disagree).
func (c *Cluster) Leader() int {
	all := make([]int, len(c.Nodes))
	for i := range all {
		all[i] = i
	}
	return c.LeaderAmong(all...)
}

// LeaderAmong is like Leader but asks only the nodes in among (one side of
// a partition, say) and returns the leader only if it is one of them and
// at least one other node of among confirms it (with one node in among,
// its own word).
func (c *Cluster) LeaderAmong(among ...int) int {
	st := c.statuses(among)
	leader, confirmed := -1, len(among) == 1
	for _, i := range among {
		s, ok := st[i]
		if !ok {
			continue
		}
		if s.Leader {
			if leader >= 0 {
				return -1 // two leaders answer: terms still settling
			}
			leader = i
		}
	}
	if leader < 0 {
		return -1
	}
	for i, s := range st {
		if i == leader {
			continue
		}
		if s.LeaderID != c.Nodes[leader].ID {
			return -1
		}
		confirmed = true
	}
	if !confirmed {
		return -1
	}
	return leader
}

// WaitLeader waits up to d for Leader to name a node and returns it.
func (c *Cluster) WaitLeader(d time.Duration) (int, error) {
	leader := -1
	err := waitUntil(d, func() error {
		if leader = c.Leader(); leader < 0 {
			return errors.New("no leader every node agrees on")
		}
		return nil
	})
	return leader, err
}

// Converged is what every node agreed on after WaitConverged.
type Converged struct {
	// StateHash is the registry state hash every node reported.
	StateHash string
	// AuditSeq and AuditHash are the last audit entry's sequence number and
	// chained hash on every node: equal hashes mean byte-identical chains.
	AuditSeq  uint64
	AuditHash string
}

// WaitConverged waits up to d until every node runs, a leader is elected
// and every node reports, from its own state, the same registry state hash
// and the same audit chain head. Call it with no writes in flight.
func (c *Cluster) WaitConverged(d time.Duration) (Converged, error) {
	var out Converged
	err := waitUntil(d, func() error {
		var first *Converged
		for i, n := range c.Nodes {
			if !n.Running() {
				return fmt.Errorf("%s is not running", n.ID)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cl := c.AdminClient(i)
			cl.StaleReads = true // each node's own state, not the leader's
			s, err := cl.Status(ctx)
			if err == nil && s.LeaderID == "" {
				err = errors.New("no leader")
			}
			var head cluster.AuditRange
			if err == nil {
				head, err = cl.AuditHead(ctx)
			}
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", n.ID, err)
			}
			got := Converged{StateHash: s.StateHash, AuditSeq: head.LastSeq, AuditHash: head.LastHash}
			if first == nil {
				first = &got
			} else if got != *first {
				return fmt.Errorf("%s differs from %s: %+v vs %+v", n.ID, c.Nodes[0].ID, got, *first)
			}
		}
		out = *first
		return nil
	})
	return out, err
}

// StopAll stops every node with SIGTERM; StartAll starts every node that is
// not running.
func (c *Cluster) StopAll() {
	for _, n := range c.Nodes {
		n.Stop()
	}
}

// StartAll starts every node that is not running and waits until each
// says it is ready.
func (c *Cluster) StartAll(d time.Duration) error {
	var errs []error
	for _, n := range c.Nodes {
		if !n.Running() {
			errs = append(errs, n.Start())
		}
	}
	for _, n := range c.Nodes {
		errs = append(errs, n.WaitReady(d))
	}
	return errors.Join(errs...)
}

// Start starts the node's process in its namespace (a restart after Kill or
// Stop: the same arguments, the same data directory). It is an error to
// start a node that runs.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("%s is already running", n.ID)
	}
	logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fi, err := logf.Stat()
	if err != nil {
		logf.Close()
		return err
	}
	// ip netns exec execs the binary: the PID is the node's own, so signals
	// reach it directly.
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.netns, n.bin}, n.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test binary that dies without its cleanup (go test -timeout)
	// takes its nodes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	n.cmd, n.done, n.paused, n.started = cmd, done, false, fi.Size()
	return nil
}

// WaitReady waits up to d until the process started last logs that it is
// ready (it has a Raft leader), and fails early if it exits.
func (n *Node) WaitReady(d time.Duration) error {
	n.mu.Lock()
	done, from := n.done, n.started
	n.mu.Unlock()
	if done == nil {
		return fmt.Errorf("%s is not running", n.ID)
	}
	return waitUntil(d, func() error {
		select {
		case <-done:
			return retryStop{fmt.Errorf("%s exited before it was ready:\n%s", n.ID, n.logTail(from, 2000))}
		default:
		}
		b, _ := os.ReadFile(n.Log)
		if int64(len(b)) > from && bytes.Contains(b[from:], []byte("msg=ready")) {
			return nil
		}
		return fmt.Errorf("%s is not ready", n.ID)
	})
}

// logTail returns up to max bytes of the log written since offset from.
func (n *Node) logTail(from int64, max int) string {
	b, _ := os.ReadFile(n.Log)
	if int64(len(b)) < from {
		from = 0
	}
	b = b[from:]
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// Running reports whether the node's process exists and is not paused.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil && !n.paused
}

// Kill SIGKILLs the node (resuming it first if paused) and waits for it to
// exit; a node that is not running is left as is.
func (n *Node) Kill() { n.signalAndWait(syscall.SIGKILL) }

// Stop SIGTERMs the node (a clean shutdown) and waits for it to exit.
func (n *Node) Stop() { n.signalAndWait(syscall.SIGTERM) }

func (n *Node) signalAndWait(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(sig)
	if n.paused && sig != syscall.SIGKILL {
		n.cmd.Process.Signal(syscall.SIGCONT)
	}
	<-n.done
	n.cmd, n.done, n.paused = nil, nil, false
}

// Pause SIGSTOPs the node: it keeps its sockets but answers nothing, as a
// node in a long GC pause or a frozen VM would.
func (n *Node) Pause() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("%s is not running", n.ID)
	}
	n.paused = true
	return n.cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume SIGCONTs a paused node.
func (n *Node) Resume() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("%s is not running", n.ID)
	}
	n.paused = false
	return n.cmd.Process.Signal(syscall.SIGCONT)
}

// IsUnavailable reports whether err is the appliance's refusal for lack of
// a quorum or leader (503 unavailable), as opposed to a timeout or a
// connection error.
func IsUnavailable(err error) bool {
	var p *api.Problem
	return errors.As(err, &p) && p.Status == 503
}

// retryStop ends waitUntil at once with its error.
type retryStop struct{ error }

// waitUntil calls f every 200 ms until it returns nil or d passes, and then
// returns f's last error.
func waitUntil(d time.Duration, f func() error) error {
	end := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop retryStop
		if errors.As(err, &stop) {
			return stop.error
		}
		if time.Now().After(end) {
			return fmt.Errorf("after %s: %w", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readRoot(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: not PEM", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}
