package cli

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// lockedBuffer is a bytes.Buffer safe to read while serve writes its log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serve's SIGTERM path end to end (serve → Appliance.Close → the node's
// Close): it returns within a bound and logs what it waited for.
func TestServeStopsOnSIGTERM(t *testing.T) {
	m := servertest.New(t).Mfr
	dir := t.TempDir()
	roots, pw, data := filepath.Join(dir, "roots.pem"), filepath.Join(dir, "pw"), filepath.Join(dir, "data")
	if os.WriteFile(roots, servertest.EKRoots(m), 0o644) != nil || os.WriteFile(pw, servertest.Password, 0o600) != nil {
		t.Fatal("write files")
	}
	if _, err := run(t, "init", "--data-dir", data, "--password-file", pw, "--ek-roots", roots,
		"--listen", "127.0.0.1:0", "--raft-addr", servertest.FreeAddr(t)); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	root := newRoot(io.Discard, logs)
	root.SetArgs([]string{"serve", "--data-dir", data, "--password-file", pw})
	done := make(chan error, 1)
	go func() { done <- root.Execute() }()

	ready := regexp.MustCompile(`msg="?ready`)
	deadline := time.Now().Add(60 * time.Second)
	for !ready.MatchString(logs.String()) {
		select {
		case err := <-done:
			t.Fatalf("serve returned before it was ready: %v\n%s", err, logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready within 60 s:\n%s", logs)
		}
	}
	// serve has registered for the signal: the test process gets it.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, logs)
		}
	case <-time.After(45 * time.Second):
		t.Fatalf("serve did not return within 45 s of SIGTERM:\n%s", logs)
	}
	for _, want := range []string{`msg="?shutting down`, `msg="?raft stopped"? .*took`, `msg="?stopped"? .*took`} {
		if !regexp.MustCompile(want).MatchString(logs.String()) {
			t.Errorf("serve's log lacks %s:\n%s", want, logs)
		}
	}
}
