package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/console"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// gatehouse console needs an admin certificate, listens on loopback only,
// and names the certificate's role and a one-time login URL that works.
func TestConsoleCommand(t *testing.T) {
	e := servertest.New(t)
	dir := t.TempDir()
	if _, err := run(t, "admin", "issue-cert", "--role", "auditor", "--name", "audrey", "--out", dir, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "admin.json")
	if _, err := run(t, "console", "--data-dir", e.Dir); err == nil || !strings.Contains(err.Error(), "needs --admin-config") {
		t.Fatalf("without --admin-config: %v", err)
	}
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0"} {
		if _, err := run(t, "console", "--admin-config", cfg, "--listen", addr); !errors.Is(err, console.ErrNotLoopback) {
			t.Errorf("--listen %s: %v", addr, err)
		}
	}

	var out syncBuffer
	root := newRoot(&out, io.Discard)
	root.SetArgs([]string{"console", "--admin-config", cfg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	re := regexp.MustCompile(`http://127\.0\.0\.1:\d+/login\?token=[0-9a-f]{64}`)
	var login string
	for deadline := time.Now().Add(20 * time.Second); login == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		login = re.FindString(out.String())
	}
	if login == "" || !strings.Contains(out.String(), "audrey (auditor)") {
		t.Fatalf("console printed %q", out.String())
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(login)
	if err != nil || resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest("GET", strings.Split(login, "/login")[0]+"/", nil)
	req.AddCookie(resp.Cookies()[0])
	page, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != http.StatusOK || !strings.Contains(string(body), "audrey (auditor)") || !strings.Contains(string(body), "node-1") {
		t.Fatalf("fleet page: %s\n%s", page.Status, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("console: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the console did not stop with its context")
	}
}
