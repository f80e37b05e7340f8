//go:build chaos

package server_test

// chaosNode is a `gatehouse serve` process on the loopback interface, for
// the tests that run a given binary per node (the rolling upgrade runs
// the previous release's). The partition and linearizability runs use
// server/chaos, whose nodes live in network namespaces.

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
)

type chaosNode struct {
	id, dir, api, log string
	args              []string
	mu                sync.Mutex
	cmd               *exec.Cmd
}

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
	go func() { cmd.Wait(); logf.Close() }()
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
}

func (n *chaosNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.cmd.Process.Signal(syscall.SIGKILL)
		n.cmd.Wait()
		n.cmd = nil
	}
}

func (n *chaosNode) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.cmd.Process.Signal(syscall.SIGTERM)
		n.cmd.Wait()
		n.cmd = nil
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
