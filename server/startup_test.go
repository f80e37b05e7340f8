package server_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
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

// openNode starts an initialized node and waits until it leads.
func openNode(t *testing.T, dir string) *server.Appliance {
	t.Helper()
	return servertest.StartNode(t, dir)
}

// A join with the wrong CA password fails before the token is spent: the
// password is checked against the CA key the node would receive, and the
// same token then works with the right password (once).
func TestJoinWrongPasswordKeepsToken(t *testing.T) {
	dir, _ := initNode(t)
	seed := openNode(t, dir)
	ctx := context.Background()
	tok, err := seed.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = "node-2", "127.0.0.1:0", "127.0.0.1:0"
	joiner := t.TempDir()
	err = server.Join(ctx, joiner, []byte("not the cluster password"), seed.Addr(), tok.String(), cfg)
	if !errors.Is(err, ca.ErrBadPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := os.Stat(filepath.Join(joiner, "config.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed join wrote the node's configuration: %v", err)
	}
	if err := server.Join(ctx, joiner, servertest.Password, seed.Addr(), tok.String(), cfg); err != nil {
		t.Fatalf("the same token with the right password: %v", err)
	}
	var p *api.Problem
	cfg.NodeID = "node-3"
	if err := server.Join(ctx, t.TempDir(), servertest.Password, seed.Addr(), tok.String(), cfg); !errors.As(err, &p) || p.Code != api.CodeJoinTokenUsed {
		t.Fatalf("the token after a successful join: %v", err)
	}
}
