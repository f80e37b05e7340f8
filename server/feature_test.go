package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A cluster created by a build before this one (feature version 0) is
// raised to this build's feature version by its leader only once every
// member reports a build that applies it: not while one member is behind,
// and at once (within the leader's check interval) after the last is
// upgraded. Every replica then holds it. A node whose build is older than
// the committed version cannot join, and its token stays unused.
func TestFeatureVersionRaisedAfterTheLastMember(t *testing.T) {
	server.SetDefaultFeatureVersionForTest(0) // every node starts as an older build
	t.Cleanup(func() { server.SetDefaultFeatureVersionForTest(-1) })
	e := servertest.New(t)
	n2, _ := e.Join(t, "node-2")
	n3, _ := e.Join(t, "node-3")
	nodes := map[string]*server.Appliance{"node-1": e.App, "node-2": n2, "node-3": n3}
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)
	st, err := admin.Status(ctx)
	if err != nil || st.FeatureVersion != 0 || st.BuildFeatureVersion != 0 {
		t.Fatalf("an older build's cluster: status %+v, %v", st, err)
	}
	if mf := scrape(t, e); value(mf, "gatehouse_cluster_feature_version", nil) != 0 || value(mf, "gatehouse_registry_halted", nil) != 0 {
		t.Fatalf("metrics before the upgrade: feature version %v, halted %v", value(mf, "gatehouse_cluster_feature_version", nil), value(mf, "gatehouse_registry_halted", nil))
	}

	// Upgraded one at a time, node-3 last; the leader is among the first
	// two, so it is the one that would raise too early.
	if n3.Node().IsLeader() {
		if err := n3.Node().TransferLeadership(); err != nil {
			t.Fatal(err)
		}
	}
	server.SetFeatureVersionForTest(e.App, cluster.FeatureVersion)
	server.SetFeatureVersionForTest(n2, cluster.FeatureVersion)
	time.Sleep(3 * server.FeatureCheckEvery) // the leader looked, at least once
	for id, n := range nodes {
		if v := n.Node().FeatureVersion(); v != 0 {
			t.Fatalf("%s: feature version %d raised while node-3 runs an older build", id, v)
		}
	}
	// The leader's check, run now (an election in between makes it a
	// no-op: look again).
	var why string
	for range 50 {
		for _, n := range []*server.Appliance{e.App, n2, n3} {
			if n.Node().IsLeader() {
				why, err = server.RaiseFeatureForTest(n)
			}
		}
		if err != nil || why != "" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if why != "" || err == nil || !strings.Contains(err.Error(), "node-3: its build") || !strings.Contains(err.Error(), "applies feature version 0") {
		t.Fatalf("raise with node-3 behind: %q, %v", why, err)
	}
	st, err = admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if want := map[string]int{"node-1": cluster.FeatureVersion, "node-2": cluster.FeatureVersion, "node-3": 0}[n.ID]; n.FeatureVersion != want {
			t.Errorf("status: %s reports feature version %d, want %d", n.ID, n.FeatureVersion, want)
		}
	}

	server.SetFeatureVersionForTest(n3, cluster.FeatureVersion)
	deadline := time.Now().Add(10 * server.FeatureCheckEvery)
	for id, n := range nodes {
		for n.Node().FeatureVersion() != cluster.FeatureVersion {
			if time.Now().After(deadline) {
				t.Fatalf("%s: feature version %d after the last member was upgraded", id, n.Node().FeatureVersion())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	head, err := e.App.Node().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := e.App.Node().AuditEntries(time.Time{}, head.Seq)
	if err != nil {
		t.Fatal(err)
	}
	raised := 0
	for _, en := range entries {
		if en.Type == cluster.AuditFeatureRaised {
			raised++
			if en.Actor != "node:node-1" && en.Actor != "node:node-2" {
				t.Errorf("raised by %q", en.Actor)
			}
		}
	}
	if raised != 1 {
		t.Fatalf("%d %s audit entries, want 1", raised, cluster.AuditFeatureRaised)
	}
	if st, err = admin.Status(ctx); err != nil || st.FeatureVersion != cluster.FeatureVersion || st.BuildFeatureVersion != cluster.FeatureVersion || st.Halted != nil {
		t.Fatalf("status after the upgrade %+v, %v", st, err)
	}

	mf := scrape(t, e)
	if v := value(mf, "gatehouse_cluster_feature_version", nil); v != cluster.FeatureVersion {
		t.Fatalf("metric gatehouse_cluster_feature_version %v after the upgrade", v)
	}
	if v := value(mf, "gatehouse_build_feature_version", nil); v != cluster.FeatureVersion {
		t.Fatalf("metric gatehouse_build_feature_version %v after the upgrade", v)
	}

	// A node of the older build cannot join now; the token is not spent.
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = "node-4", "127.0.0.1:0", servertest.FreeAddr(t)
	err = server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), tok.String(), cfg)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodeBuildTooOld || !strings.Contains(p.Detail, "the cluster is at feature version 1, the joining build applies up to 0") {
		t.Fatalf("an older build's join: %v", err)
	}
	server.SetDefaultFeatureVersionForTest(-1)
	if err := server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), tok.String(), cfg); err != nil {
		t.Fatalf("the same token, from this build: %v", err)
	}
}
