package cli

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// serve takes every flag from GATEHOUSE_* variables; the command line wins,
// and a bad value or a variable for no flag is refused naming it.
func TestServeFlagsFromEnv(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, servertest.Password, 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "not-initialized")

	// Both from the environment: serve gets as far as the data directory.
	t.Setenv("GATEHOUSE_PASSWORD_FILE", pw)
	t.Setenv("GATEHOUSE_DATA_DIR", empty)
	if _, err := run(t, "serve"); !errors.Is(err, server.ErrNotInitialized) || !strings.Contains(err.Error(), empty) {
		t.Fatalf("serve with $GATEHOUSE_DATA_DIR and $GATEHOUSE_PASSWORD_FILE: %v", err)
	}
	// The command line wins over the environment.
	other := filepath.Join(dir, "missing-password")
	if _, err := run(t, "serve", "--password-file", other); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), other) {
		t.Fatalf("serve --password-file over $GATEHOUSE_PASSWORD_FILE: %v", err)
	}
	// A garbled value names its variable.
	t.Setenv("GATEHOUSE_LOG_LEVEL", "loud")
	if _, err := run(t, "serve"); err == nil || !strings.Contains(err.Error(), `$GATEHOUSE_LOG_LEVEL="loud"`) {
		t.Fatalf("serve with a garbled $GATEHOUSE_LOG_LEVEL: %v", err)
	}
	t.Setenv("GATEHOUSE_LOG_LEVEL", "debug")
	t.Setenv("GATEHOUSE_LOG_FORMAT", "yaml")
	if _, err := run(t, "serve"); err == nil || !strings.Contains(err.Error(), "$GATEHOUSE_LOG_FORMAT") {
		t.Fatalf("serve with a garbled $GATEHOUSE_LOG_FORMAT: %v", err)
	}
	t.Setenv("GATEHOUSE_LOG_FORMAT", "json")
	// A variable that names no flag (a typo) is refused too.
	t.Setenv("GATEHOUSE_PASSWORDFILE", pw)
	if _, err := run(t, "serve"); err == nil || !strings.Contains(err.Error(), "$GATEHOUSE_PASSWORDFILE") {
		t.Fatalf("serve with $GATEHOUSE_PASSWORDFILE: %v", err)
	}
	// The help says so.
	out, err := run(t, "serve", "--help")
	if err != nil || !strings.Contains(out, "GATEHOUSE_LOG_LEVEL") || !strings.Contains(out, "--log-format") {
		t.Fatalf("serve --help: %v\n%s", err, out)
	}
}

// init with a wildcard listen address: admin issue-cert writes admin.json
// with the first --hostname and the port, and remote commands through it
// pass TLS (https://0.0.0.0:PORT is not in the certificate).
func TestAdminJSONServerFromHostname(t *testing.T) {
	m := servertest.New(t).Mfr
	dir := t.TempDir()
	roots, pw, data := filepath.Join(dir, "roots.pem"), filepath.Join(dir, "pw"), filepath.Join(dir, "data")
	if os.WriteFile(roots, servertest.EKRoots(m), 0o644) != nil || os.WriteFile(pw, servertest.Password, 0o600) != nil {
		t.Fatal("write files")
	}
	if _, err := run(t, "init", "--data-dir", data, "--password-file", pw, "--ek-roots", roots,
		"--listen", "0.0.0.0:0", "--raft-addr", servertest.FreeAddr(t), "--hostname", "localhost", "--hostname", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	app := servertest.StartNode(t, data)
	_, port, _ := net.SplitHostPort(app.Addr())
	out := filepath.Join(dir, "olga")
	if _, err := run(t, "admin", "issue-cert", "--role", "operator", "--name", "olga", "--out", out, "--data-dir", data); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "admin.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg AdminConfig
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.Server != "https://localhost:"+port {
		t.Fatalf("admin.json server %q, want https://localhost:%s (%v)", cfg.Server, port, err)
	}
	if s, err := run(t, "status", "--admin-config", filepath.Join(out, "admin.json"), "-o", "json"); err != nil || !strings.Contains(s, `"leader": true`) {
		t.Fatalf("status through admin.json: %v %s", err, s)
	}
}

// status shows every node's version: -o json and the table.
func TestStatusShowsEveryNodeVersion(t *testing.T) {
	e := servertest.New(t)
	e.Join(t, "node-2")
	want := api.ReadBuildInfo()
	var st server.Status
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := run(t, "status", "--data-dir", e.Dir, "-o", "json")
		if err != nil || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("status -o json: %v %s", err, out)
		}
		if len(st.Nodes) == 2 && st.Nodes[0].Version != nil && st.Nodes[1].Version != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status -o json never listed both nodes with a version: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, n := range st.Nodes {
		if *n.Version != want {
			t.Fatalf("%s reports %+v, want %+v", n.ID, *n.Version, want)
		}
	}
	out, err := run(t, "status", "--data-dir", e.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"node-1", "node-2"} {
		found := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 && f[0] == id && strings.Contains(line, want.String()) {
				found = true
			}
		}
		if !found {
			t.Fatalf("status table lacks %s with version %q:\n%s", id, want.String(), out)
		}
	}
	if !regexp.MustCompile(`(?m)^version:\s+` + regexp.QuoteMeta(want.String()) + `$`).MatchString(out) {
		t.Fatalf("status table lacks this node's version:\n%s", out)
	}
}

// Variables other gatehouse commands read in the same environment do not
// make serve fail: $GATEHOUSE_ADMIN_CONFIG (remote admin commands) naming
// a file serve cannot read, and the other remote-admin variables, are
// neither read nor refused by serve; a typo still is.
func TestServeIgnoresRemoteAdminEnv(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, servertest.Password, 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "not-initialized")
	t.Setenv("GATEHOUSE_PASSWORD_FILE", pw)
	t.Setenv("GATEHOUSE_DATA_DIR", empty)
	t.Setenv("GATEHOUSE_ADMIN_CONFIG", filepath.Join(dir, "no-such-admin.json"))
	t.Setenv("GATEHOUSE_SERVER", "https://gatehouse.example.com:8443") // the agent's unit variable
	t.Setenv("GATEHOUSE_ADMIN_CERT", filepath.Join(dir, "no-such.crt"))
	if _, err := run(t, "serve"); !errors.Is(err, server.ErrNotInitialized) || !strings.Contains(err.Error(), empty) {
		t.Fatalf("serve with remote-admin variables set: %v (want it to reach the data directory)", err)
	}
	t.Setenv("GATEHOUSE_NODEID", "n1")
	if _, err := run(t, "serve"); err == nil || !strings.Contains(err.Error(), "$GATEHOUSE_NODEID") {
		t.Fatalf("serve with $GATEHOUSE_NODEID: %v", err)
	}
	// Remote admin commands still read $GATEHOUSE_ADMIN_CONFIG.
	if _, err := run(t, "status"); err == nil || !strings.Contains(err.Error(), "no-such-admin.json") {
		t.Fatalf("status with $GATEHOUSE_ADMIN_CONFIG naming a missing file: %v", err)
	}
}
