package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// status lists every member of a real cluster with the build it reports,
// asked over the node-authenticated cluster API; a member that is down is
// listed with why its version is unknown.
func TestStatusListsEveryNodeVersion(t *testing.T) {
	e := servertest.New(t)
	n2, _ := e.Join(t, "node-2")
	e.Join(t, "node-3")
	want := api.ReadBuildInfo()
	ctx := context.Background()

	var st server.Status
	deadline := time.Now().Add(15 * time.Second)
	for {
		var err error
		st, err = server.NewAdminClient(e.Dir).Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ok := len(st.Nodes) == 3
		for _, n := range st.Nodes {
			ok = ok && n.Version != nil && n.Error == ""
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status nodes never all reported a version: %+v", st.Nodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Version != want {
		t.Fatalf("status version %+v, want %+v", st.Version, want)
	}
	seen := map[string]bool{}
	for _, n := range st.Nodes {
		seen[n.ID] = true
		if *n.Version != want || n.APIAddr == "" || !n.Voter {
			t.Errorf("node %+v (version %+v), want version %+v", n, *n.Version, want)
		}
	}
	if !seen["node-1"] || !seen["node-2"] || !seen["node-3"] {
		t.Fatalf("nodes %v", seen)
	}

	// node-2 stops: still a member, its version unknown, and status still answers.
	n2.Close()
	st, err := server.NewAdminClient(e.Dir).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.ID == "node-2" && (n.Version != nil || n.Error == "") {
			t.Fatalf("stopped node-2 listed as %+v", n)
		}
		if n.ID != "node-2" && n.Version == nil {
			t.Fatalf("running %s without a version: %+v", n.ID, n)
		}
	}
}

// The URL status gives clients (and admin issue-cert writes to admin.json)
// names the node's host name, not its listen address.
func TestStatusDeviceAPIUsesHostname(t *testing.T) {
	e := servertest.New(t)
	st, err := server.NewAdminClient(e.Dir).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(e.App.Addr(), ":")
	if want := "https://localhost:" + port; st.DeviceAPI != want {
		t.Fatalf("device_api %q, want %q", st.DeviceAPI, want)
	}
}

// StatusBrief leaves out the state hash (a read of the whole registry);
// Status keeps it, and both report the same node.
func TestStatusBriefLeavesOutTheStateHash(t *testing.T) {
	e := servertest.New(t)
	c := server.NewAdminClient(e.Dir)
	full, err := c.Status(context.Background())
	if err != nil || len(full.StateHash) != 64 {
		t.Fatalf("status: %q %v", full.StateHash, err)
	}
	brief, err := c.StatusBrief(context.Background())
	if err != nil || brief.StateHash != "" || brief.NodeID != full.NodeID || brief.Version != full.Version || !brief.Healthy {
		t.Fatalf("brief status: %+v %v", brief, err)
	}
}
