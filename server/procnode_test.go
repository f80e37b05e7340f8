//go:build chaos

package server_test

// chaosNode is a `gatehouse serve` process on the loopback interface, for
// the tests that run a given binary per node (the rolling upgrade runs
// the previous release's) or need it on a file system of their own (the
// full disk). The partition and linearizability runs use server/chaos,
// whose nodes live in network namespaces.

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
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
