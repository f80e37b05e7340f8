package server_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// initNode initializes a data directory (no TPM needed) and returns it with
// its configuration.
func initNode(t *testing.T) (string, server.Config) {
	t.Helper()
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.TrustDomain = servertest.TrustDomain
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = servertest.FreeAddr(t)
	if err := server.Init(dir, servertest.Password, cfg, attest.ManufacturerRootsPEM()); err != nil {
		t.Fatal(err)
	}
	return dir, cfg
}

// serve fails saying why, instead of panicking, when its Raft port is taken
// or its Raft state is corrupt; after a failed start, nothing is left open
// and the next start works.
func TestServeStartupErrors(t *testing.T) {
	dir, cfg := initNode(t)
	ln, err := net.Listen("tcp", cfg.RaftAddr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = server.Open(dir, servertest.Password)
	ln.Close()
	if !errors.Is(err, cluster.ErrAddrInUse) || !strings.Contains(err.Error(), cfg.RaftAddr) {
		t.Fatalf("Raft port taken: %v", err)
	}
	app := servertest.StartNode(t, dir)
	if err := app.Close(); err != nil {
		t.Fatal(err)
	}

	for _, file := range []string{"raft.db", "fsm.db"} {
		path := filepath.Join(dir, "raft", file)
		good, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, bytes.Repeat([]byte("garbage "), 2048), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = server.Open(dir, servertest.Password)
		if !errors.Is(err, cluster.ErrCorruptState) || !strings.Contains(err.Error(), path) {
			t.Fatalf("garbage in %s: %v", file, err)
		}
		if err := os.WriteFile(path, good, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	app = servertest.StartNode(t, dir)
	app.Close()
}
