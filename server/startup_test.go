package server_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// A data directory re-initialized over another cluster's Raft state (a new
// CA, the old registry and peers) refuses to start, naming both roots.
func TestDataDirFromAnotherClusterRefused(t *testing.T) {
	dir, cfg := initNode(t)
	app := openNode(t, dir)
	app.Close()
	for _, f := range []string{"config.json", "ca"} {
		if err := os.RemoveAll(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if err := server.Init(dir, servertest.Password, cfg, attest.ManufacturerRootsPEM()); err != nil {
		t.Fatal(err)
	}
	_, err := server.Open(dir, servertest.Password)
	if !errors.Is(err, server.ErrOtherCluster) || !strings.Contains(err.Error(), filepath.Join(dir, "raft")) {
		t.Fatalf("Raft state of another cluster: %v", err)
	}
}

// `serve --join` with a token for another cluster, on a data directory that
// is already a member of one, is refused instead of starting the old
// cluster's node; a token for its own cluster is a restart.
func TestJoinToAnotherClusterRefused(t *testing.T) {
	ctx := context.Background()
	mineDir, _ := initNode(t)
	mine := openNode(t, mineDir)
	otherDir, _ := initNode(t)
	other := openNode(t, otherDir)
	foreign, err := other.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	own, err := mine.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := server.CheckJoinTarget(mineDir, foreign.String()); !errors.Is(err, server.ErrOtherCluster) {
		t.Fatalf("token for another cluster: %v", err)
	}
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = "node-2", "127.0.0.1:0", "127.0.0.1:0"
	if err := server.Join(ctx, mineDir, servertest.Password, other.Addr(), foreign.String(), cfg); !errors.Is(err, server.ErrOtherCluster) {
		t.Fatalf("join of a member into another cluster: %v", err)
	}
	if err := server.CheckJoinTarget(mineDir, own.String()); err != nil {
		t.Fatalf("token for its own cluster: %v", err)
	}
	if err := server.Join(ctx, mineDir, servertest.Password, mine.Addr(), own.String(), cfg); !errors.Is(err, server.ErrAlreadyInitialized) {
		t.Fatalf("join of a member into its own cluster: %v", err)
	}
}

// A node whose Raft peers belong to another cluster (its peer's address now
// runs another cluster's node) is loudly unhealthy: status names the peer
// that refused it, and the refusal is logged at error level.
func TestNodeRefusedByPeersIsUnhealthy(t *testing.T) {
	ctx := context.Background()
	memberDir, refuser := memberRefusedByPeer(t, func(member *server.Appliance, memberDir string) {
		if st, err := server.NewAdminClient(memberDir).Status(ctx); err != nil || !st.Healthy || len(st.Problems) != 0 {
			t.Fatalf("member of its cluster: %+v %v", st, err)
		}
	})
	var logs syncBuffer
	member, err := server.Open(memberDir, servertest.Password, server.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	var st server.Status
	servertest.WaitFor(t, "the refused peer in status", 20*time.Second, func() bool {
		st, err = server.NewAdminClient(memberDir).Status(ctx)
		return err == nil && slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, refuser) && strings.Contains(p, "refused") })
	})
	if st.Healthy {
		t.Fatalf("status with problems says healthy: %+v", st)
	}
	if out := logs.String(); !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "raft peer refused") {
		t.Fatalf("the refusal is not logged at error level:\n%s", out)
	}
}

// memberRefusedByPeer makes a two-node cluster and runs whole on its member
// (open, a voter), then stops both and starts another cluster's node at the
// seed's Raft address. It returns the stopped member's data directory and
// that address, whose node now refuses the member's certificate.
func memberRefusedByPeer(t *testing.T, whole func(member *server.Appliance, memberDir string)) (memberDir, refuser string) {
	t.Helper()
	ctx := context.Background()
	seedDir, seedCfg := initNode(t)
	seed := openNode(t, seedDir)
	tok, err := seed.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = "node-2", "127.0.0.1:0", servertest.FreeAddr(t)
	memberDir = t.TempDir()
	if err := server.Join(ctx, memberDir, servertest.Password, seed.Addr(), tok.String(), cfg); err != nil {
		t.Fatal(err)
	}
	member := servertest.StartNode(t, memberDir)
	servertest.WaitFor(t, "node-2 as a voter", 20*time.Second, func() bool { return voters(seed) == 2 })
	whole(member, memberDir)
	member.Close()
	seed.Close()

	otherDir := t.TempDir()
	otherCfg := server.DefaultConfig()
	otherCfg.TrustDomain, otherCfg.Listen, otherCfg.RaftAddr = servertest.TrustDomain, "127.0.0.1:0", seedCfg.RaftAddr
	if err := server.Init(otherDir, servertest.Password, otherCfg, attest.ManufacturerRootsPEM()); err != nil {
		t.Fatal(err)
	}
	openNode(t, otherDir)
	return memberDir, seedCfg.RaftAddr
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
