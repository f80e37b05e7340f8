//go:build chaos

package server_test

// chaosNode is a `gatehouse serve` process on the loopback interface, for
// the tests that run a given binary per node (the rolling upgrade runs
// the previous release's) or need it on a file system of their own (the
// full disk). The partition and linearizability runs use server/chaos,
// whose nodes live in network namespaces.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

type chaosNode struct {
	id, dir, api, log string
	args              []string
	mu                sync.Mutex
	cmd               *exec.Cmd
	exited            chan struct{} // closed once cmd has exited
}

// start runs bin with n.args, its output appended to n.log.
func (n *chaosNode) start(t *testing.T, bin string) {
	t.Helper()
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, n.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
}

func (n *chaosNode) kill() { n.signal(syscall.SIGKILL) }

// stop asks the node to shut down (SIGTERM), and kills it after 30 s.
func (n *chaosNode) stop() { n.signal(syscall.SIGTERM) }

func (n *chaosNode) signal(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.exited
	}
	n.cmd = nil
}

// logText is what the node has logged so far.
func (n *chaosNode) logText() string { b, _ := os.ReadFile(n.log); return string(b) }

// startProcCluster starts three `bin serve` nodes: node-1 creates the
// cluster trusting the EK roots in the file roots, the others join it with
// a token each. Node i's data directory is dataDir(i) (work/node-i when nil),
// its log work/node-i.log. It returns once all three are voters whose API
// addresses every node knows. At cleanup the nodes are killed and, if the
// test failed, the tail of each log is shown.
func startProcCluster(t *testing.T, bin, work, roots, pw string, dataDir func(i int) string) []*chaosNode {
	t.Helper()
	var nodes []*chaosNode
	t.Cleanup(func() {
		for _, n := range nodes {
			n.kill()
		}
		if t.Failed() {
			for _, n := range nodes {
				b, _ := os.ReadFile(n.log)
				t.Logf("%s log (last 4 KiB):\n%s", n.id, tail(b, 4096))
			}
		}
	})
	for i := 1; i <= 3; i++ {
		n := &chaosNode{id: fmt.Sprintf("node-%d", i), dir: filepath.Join(work, fmt.Sprintf("node-%d", i)),
			api: servertest.FreeAddr(t), log: filepath.Join(work, fmt.Sprintf("node-%d.log", i))}
		if dataDir != nil {
			n.dir = dataDir(i)
		}
		raftAddr := servertest.FreeAddr(t)
		if i == 1 {
			out, err := exec.Command(bin, "init", "--data-dir", n.dir, "--node-id", n.id, "--password-file", pw, "--ek-roots", roots,
				"--listen", n.api, "--raft-addr", raftAddr).CombinedOutput()
			if err != nil {
				t.Fatalf("init (%s): %v\n%s", bin, err, out)
			}
			n.args = []string{"serve", "--data-dir", n.dir, "--password-file", pw}
		} else {
			tok, err := exec.Command(bin, "cluster", "token", "create", "--data-dir", nodes[0].dir).Output()
			if err != nil {
				t.Fatalf("token (%s): %v", bin, err)
			}
			tf := filepath.Join(work, n.id+".token")
			if err := os.WriteFile(tf, tok, 0o600); err != nil {
				t.Fatal(err)
			}
			n.args = []string{"serve", "--data-dir", n.dir, "--password-file", pw, "--join", nodes[0].api, "--token-file", tf,
				"--node-id", n.id, "--listen", n.api, "--raft-addr", raftAddr}
		}
		n.start(t, bin)
		nodes = append(nodes, n)
		servertest.WaitFor(t, n.id+" ready", 60*time.Second, func() bool { return readyCount(n) == 1 })
	}
	servertest.WaitFor(t, "three voters", 30*time.Second, func() bool {
		ms, err := server.NewAdminClient(nodes[0].dir).Members(context.Background())
		if err != nil || len(ms) != 3 {
			return false
		}
		for _, m := range ms {
			if m.APIAddr == "" {
				return false
			}
		}
		return true
	})
	return nodes
}

// readyCount is how many times the node's log says it was ready.
func readyCount(n *chaosNode) int {
	b, _ := os.ReadFile(n.log)
	return strings.Count(string(b), "msg=ready")
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
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
