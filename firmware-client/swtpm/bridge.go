package swtpm

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrSocatNotInstalled means socat, which Bridge runs, is not on PATH.
var ErrSocatNotInstalled = errors.New("socat is not installed (run `make deps`, which apt-get installs socat)")

// Bridge is a UNIX socket that forwards every connection to a swtpm's data
// port, through socat. Clients that open a TPM only by device path, such
// as the step CLI's tpmkms (`tpmkms:name=k;device=PATH`, which takes a
// character device or a UNIX socket but not host:port), reach swtpm this way.
type Bridge struct {
	Path string // the UNIX socket
	PID  int    // socat's process ID (also its process group)

	cmd      *exec.Cmd
	done     chan struct{}
	dir      string // the temporary directory holding Path, removed by Stop
	stopOnce sync.Once
	stopErr  error
}

// Bridge starts socat listening on a fresh UNIX socket in a new temporary
// directory (short, so it fits the 108-byte socket path limit wherever
// TMPDIR is) and forwarding to p, one connection at a time per client
// (socat forks a child per connection). It returns once the socket accepts.
func (p *Process) Bridge() (*Bridge, error) {
	socat, err := exec.LookPath("socat")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSocatNotInstalled, err)
	}
	dir, err := os.MkdirTemp("", "swtpm-sock-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "tpm.sock")
	cmd := exec.Command(socat, "UNIX-LISTEN:"+path+",fork", "TCP:"+p.Addr)
	// Its own process group: Stop ends the forked children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start socat: %w", err)
	}
	b := &Bridge{Path: path, PID: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), dir: dir}
	go func() { cmd.Wait(); close(b.done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case <-b.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("socat exited at start: %s", strings.TrimSpace(stderr.String()))
		default:
		}
		// A probe connection makes socat fork a child that connects to
		// swtpm and ends when the probe closes: harmless to the TPM.
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return b, nil
		}
		if time.Now().After(deadline) {
			b.Stop()
			return nil, fmt.Errorf("socat did not accept on %s within 5s: %s", path, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop ends socat and its forked children (SIGTERM to the process group,
// SIGKILL after 3 s), reaps it and removes the socket's directory. It is
// idempotent.
func (b *Bridge) Stop() error {
	b.stopOnce.Do(func() {
		defer os.RemoveAll(b.dir)
		select {
		case <-b.done:
			return
		default:
		}
		_ = syscall.Kill(-b.PID, syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-b.PID, syscall.SIGKILL)
			<-b.done
			b.stopErr = fmt.Errorf("socat %d ignored SIGTERM; killed", b.PID)
		}
		// The forked children exit on their own schedule: wait for the
		// group to be empty, so nothing outlives the test.
		start, killed := time.Now(), false
		for syscall.Kill(-b.PID, 0) == nil {
			switch waited := time.Since(start); {
			case waited > 6*time.Second: // zombies nobody reaps: report, don't hang
				b.stopErr = fmt.Errorf("socat's process group %d did not end", b.PID)
				return
			case waited > 3*time.Second && !killed:
				_ = syscall.Kill(-b.PID, syscall.SIGKILL)
				killed = true
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return b.stopErr
}

// RequireSocat fails the test when socat is missing. It never skips.
func RequireSocat(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatalf("%v: %v", ErrSocatNotInstalled, err)
	}
}

// BridgeTest bridges p to a UNIX socket for the test and returns the
// socket's path; the bridge stops when the test ends, whether it passed or
// not. Without socat the test fails (never skips).
func BridgeTest(t testing.TB, p *Process) string {
	t.Helper()
	RequireSocat(t)
	b, err := p.Bridge()
	if err != nil {
		t.Fatalf("bridge swtpm to a UNIX socket: %v", err)
	}
	t.Cleanup(func() { b.Stop() })
	return b.Path
}
