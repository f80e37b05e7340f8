package server_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/internal/testdisk"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// Through the HTTP API, a node whose disk is full answers an enrollment and
// an admin write with 503 storage_full (nothing written), and /readyz
// fails its storage check; the other two nodes go on committing. Once
// space returns, the node is ready again, takes writes, and holds the
// registry the leader holds.
func TestDiskFullNodeAnswersStorageFull(t *testing.T) {
	e := servertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	small := testdisk.Small(t, 48<<20)

	// node-2 lives on the small disk.
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := filepath.Join(small, "node-2")
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = "node-2", "127.0.0.1:0", servertest.FreeAddr(t)
	servertest.Unthrottled(&cfg)
	if err := server.Join(ctx, dir2, servertest.Password, e.App.Addr(), tok.String(), cfg); err != nil {
		t.Fatal(err)
	}
	n2 := servertest.StartNode(t, dir2)
	e.Join(t, "node-3")

	filler := testdisk.Fill(t, small)
	// The leader writes (join tokens) until node-2 fails to store them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var rd server.Readiness
		if probe(t, n2, "/readyz?noleader", &rd); !rd.Checks[server.CheckStorage].OK {
			if !strings.Contains(failing(rd)[server.CheckStorage], "disk is full") {
				t.Fatalf("storage check: %+v", rd.Checks[server.CheckStorage])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node-2 never met its full disk")
		}
		if _, err := e.App.CreateJoinToken(ctx, time.Minute); err != nil {
			t.Fatalf("the leader refused a write while only node-2's disk is full: %v", err)
		}
	}

	// An enrollment through node-2: 503 storage_full.
	d := servertest.NewDevice(t, e.Mfr)
	_, err = fwclient.NewClient("https://"+n2.Addr(), n2.Root()).Enroll(ctx, d.TPM)
	var p *api.Problem
	if !errors.As(err, &p) || p.Status != http.StatusServiceUnavailable || p.Code != api.CodeStorageFull {
		t.Fatalf("enrollment through the full node: %v, want 503 %s", err, api.CodeStorageFull)
	}
	// An admin write through node-2: the same.
	admin := server.NewAdminClient(dir2)
	admin.Retry = &server.RetryPolicy{}
	if _, _, err := admin.CreateJoinToken(ctx, time.Minute); !errors.As(err, &p) || p.Status != http.StatusServiceUnavailable || p.Code != api.CodeStorageFull {
		t.Fatalf("admin write through the full node: %v, want 503 %s", err, api.CodeStorageFull)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		var rd server.Readiness
		probe(t, n2, "/readyz?noleader", &rd)
		want, _ := e.App.Node().StateHash()
		got, _ := n2.Node().StateHash()
		if rd.Checks[server.CheckStorage].OK && got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-2 did not recover within 30 s of space returning: %+v, hash %s vs %s", failing(rd), got, want)
		}
		// A write gives node-2 entries to store (and moves its commit index).
		e.App.CreateJoinToken(ctx, time.Minute)
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := fwclient.NewClient("https://"+n2.Addr(), n2.Root()).Enroll(ctx, d.TPM); err != nil {
		t.Fatalf("enrollment through node-2 after space returned: %v", err)
	}
}
