package server_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	bolt "go.etcd.io/bbolt"
)

// The FSM, not only the admin API, judges settings and EK roots: a
// command that reaches Raft some other way (forwarded by a follower, as any
// node may) with settings `settings set` refuses, or a certificate that is
// not a CA, is refused on apply and changes nothing on any node.
func TestReplicatedConfigJudgedAtApply(t *testing.T) {
	e := servertest.New(t)
	n2, _ := e.Join(t, "node-2")
	servertest.WaitFor(t, "two registered voters", 20*time.Second, func() bool { return voters(e.App) == 2 && voters(n2) == 2 })
	ctx := context.Background()
	leader, follower := e.App, n2
	if !leader.Node().IsLeader() {
		leader, follower = n2, e.App
	}
	before := leader.Settings()
	if before.Version != 1 {
		t.Fatalf("control: seeded settings version %d", before.Version)
	}
	doc := func(edit func(*server.ClusterSettings)) json.RawMessage {
		s := before.Settings
		edit(&s)
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, d := range map[string]json.RawMessage{
		"cert_validity 100y": doc(func(s *server.ClusterSettings) { s.CertValidity.Duration = 100 * 365 * 24 * time.Hour }),
		"session_ttl 0":      doc(func(s *server.ClusterSettings) { s.SessionTTL.Duration = 0 }),
		"session_ttl 1y":     doc(func(s *server.ClusterSettings) { s.SessionTTL.Duration = 365 * 24 * time.Hour }),
		"approval_retry 0":   doc(func(s *server.ClusterSettings) { s.ApprovalRetry.Duration = 0 }),
		"trust_domain":       doc(func(s *server.ClusterSettings) { s.TrustDomain = "other.example" }),
		"not settings":       json.RawMessage(`{"cert_validity":"soon"}`),
	} {
		for _, n := range []*server.Appliance{leader, follower} {
			if _, err := n.Node().SetSettings(ctx, "mallory", before.Version, d); !errors.Is(err, cluster.ErrSettingsInvalid) {
				t.Errorf("%s proposed through %s: %v, want ErrSettingsInvalid", name, n.Addr(), err)
			}
		}
	}
	if _, err := leader.Node().SetSettings(ctx, "mallory", before.Version, doc(func(s *server.ClusterSettings) { s.SessionTTL.Duration = 2 * time.Minute })); err != nil {
		t.Fatalf("control: a valid document through the registry: %v", err)
	}
	servertest.WaitFor(t, "both nodes apply version 2", 10*time.Second, func() bool {
		return leader.Settings().Version == 2 && follower.Settings().Version == 2
	})
	for _, n := range []*server.Appliance{leader, follower} {
		if got := n.Settings().Settings; got.SessionTTL.Duration != 2*time.Minute || got.CertValidity != before.Settings.CertValidity || got.TrustDomain != before.Settings.TrustDomain {
			t.Fatalf("%s uses %+v", n.Addr(), got)
		}
	}
	// The API refuses a session TTL past the bound too.
	if _, err := server.NewAdminClient(e.Dir).ChangeSettings(ctx, "alice", 0, json.RawMessage(`{"session_ttl":"8760h"}`)); problemCode(err) != api.CodeSettingsInvalid {
		t.Fatalf("settings set session_ttl 8760h: %v", err)
	}

	// A leaf certificate proposed as a manufacturer CA through the follower.
	blk, _ := pem.Decode(selfSignedCert(t, "device.example", false))
	der := blk.Bytes
	if _, err := follower.Node().AddEKRoots(ctx, "mallory", []cluster.EKRoot{{DER: der, Subject: "CN=Trusted"}}); err == nil || !strings.Contains(err.Error(), "not a CA certificate") {
		t.Fatalf("a leaf certificate through the follower: %v", err)
	}
	if hasRoot(t, leader.Node(), fingerprint(der)) || hasRoot(t, follower.Node(), fingerprint(der)) {
		t.Fatal("the leaf certificate is in the set")
	}
}

// A stored settings document that fails validation (one from a node that
// did not judge it, or a restored state) is not used: the node keeps the
// settings it had, and says so.
func TestInvalidStoredSettingsNotUsed(t *testing.T) {
	e := servertest.New(t, cluster.WithSettingsValidator(nil)) // this node's FSM stores anything
	ctx := context.Background()
	before := e.App.Settings()
	if before.Version != 1 || before.Settings.SessionTTL.Duration <= 0 {
		t.Fatalf("control: %+v", before)
	}
	bad, _ := json.Marshal(map[string]string{"trust_domain": before.Settings.TrustDomain, "session_ttl": "0s", "cert_validity": "876000h"})
	if _, err := e.App.Node().SetSettings(ctx, "mallory", 1, bad); err != nil {
		t.Fatalf("control: the unjudged FSM stores it: %v", err)
	}
	got := e.App.Settings()
	if got.Version != 1 || got.Settings != before.Settings {
		t.Fatalf("the node uses an invalid stored document: %+v", got)
	}
	// Enrollment still works with the kept settings (a zero session TTL
	// would expire every challenge at once).
	if code := enrollCode(t, e.App, e.Mfr); code != "" {
		t.Fatalf("enroll with the kept settings: %q", code)
	}
}

// emptyReplicatedConfig makes dir an old data directory: Raft state
// without the replicated EK roots and settings (a build before them).
func emptyReplicatedConfig(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "raft", "fsm.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"ek_roots", "settings"} {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A rolling upgrade: the commands that write the replicated EK roots and
// settings are new, and a replica stops on a command it does not know. So
// neither the seed nor `ekroots add` or `settings set` proposes them until
// every member has shown it applies them (GET /cluster/v1/info): here
// node-3 is down, as an old member being upgraded would be, and nothing is
// written, the restarted nodes still start and serve from their local
// files; once node-3 is back, the seed goes through.
func TestReplicatedConfigWaitsForEveryMember(t *testing.T) {
	e := servertest.New(t)
	n2, d2 := e.Join(t, "node-2")
	n3, d3 := e.Join(t, "node-3")
	for _, n := range []*server.Appliance{e.App, n2, n3} {
		servertest.WaitFor(t, "three registered voters", 20*time.Second, func() bool { return voters(n) == 3 })
	}
	e.App.Close()
	n2.Close()
	n3.Close()
	for _, d := range []string{e.Dir, d2, d3} {
		emptyReplicatedConfig(t, d)
	}
	open := func(dir string) *server.Appliance {
		a, err := server.Open(dir, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	n1, n2 := open(e.Dir), open(d2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, n := range []*server.Appliance{n1, n2} {
		if err := n.WaitReady(ctx); err != nil {
			t.Fatalf("a restarted node with a member down: %v", err)
		}
	}
	time.Sleep(2 * time.Second) // the seed loop's first rounds
	for _, n := range []*server.Appliance{n1, n2} {
		if roots, _ := n.Node().EKRoots(); len(roots) != 0 {
			t.Fatalf("the EK roots were seeded with node-3 unaccounted for: %d", len(roots))
		}
		if _, err := n.Node().Settings(); !errors.Is(err, cluster.ErrNotFound) {
			t.Fatalf("the settings were seeded with node-3 unaccounted for: %v", err)
		}
	}
	admin := server.NewAdminClient(e.Dir)
	_, err := admin.AddEKRoots(ctx, "alice", selfSignedCert(t, "New Vendor CA", true), false, "")
	if p := (*api.Problem)(nil); !errors.As(err, &p) || p.Status != 503 || p.Code != api.CodeUnavailable || !strings.Contains(p.Detail, "node-3") {
		t.Fatalf("ekroots add with node-3 unaccounted for: %v", err)
	}
	if _, err := admin.ChangeSettings(ctx, "alice", 0, json.RawMessage(`{"approval_retry":"3s"}`)); problemCode(err) != api.CodeUnavailable {
		t.Fatalf("settings set with node-3 unaccounted for: %v", err)
	}
	// `enrollments delete` is new in the same build.
	if err := admin.DeleteEnrollment(ctx, strings.Repeat("ab", 32), "alice", ""); problemCode(err) != api.CodeUnavailable {
		t.Fatalf("enrollments delete with node-3 unaccounted for: %v", err)
	}
	// A policy using acme: an older build's strict parser would refuse it.
	acmePolicy := []byte(`{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{},"acme":true}]}`)
	if _, err := admin.ApplyPolicy(ctx, "alice", acmePolicy); problemCode(err) != api.CodeUnavailable {
		t.Fatalf("policy apply using acme with node-3 unaccounted for: %v", err)
	}
	if _, err := admin.ApplyPolicy(ctx, "alice", []byte(`{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{}}]}`)); err != nil {
		t.Fatalf("control: policy apply without acme: %v", err)
	}
	// Local files stand in: enrollment works meanwhile.
	if code := enrollCode(t, n1, e.Mfr); code != "" {
		t.Fatalf("enroll while the seed waits: %q", code)
	}

	n3 = open(d3)
	if err := n3.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*server.Appliance{n1, n2, n3} {
		servertest.WaitFor(t, "the seed once every member applies it", 20*time.Second, func() bool {
			roots, _ := n.Node().EKRoots()
			_, err := n.Node().Settings()
			return len(roots) == 2 && err == nil
		})
	}
	if _, err := admin.AddEKRoots(ctx, "alice", selfSignedCert(t, "New Vendor CA", true), false, ""); err != nil {
		t.Fatalf("ekroots add once every member applies it: %v", err)
	}
	if err := admin.DeleteEnrollment(ctx, strings.Repeat("ab", 32), "alice", ""); problemCode(err) != api.CodeNotFound {
		t.Fatalf("enrollments delete once every member applies it: %v, want not_found", err)
	}
	if _, err := admin.ApplyPolicy(ctx, "alice", acmePolicy); err != nil {
		t.Fatalf("policy apply using acme once every member parses it: %v", err)
	}
}

// A replica whose EK roots cannot be read does not fall back to the node's
// ek-roots.pem (which may still hold a CA the cluster removed): the node
// trusts no manufacturer CA until it can read them.
func TestUnreadableEKRootsTrustNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := server.NewAdminClient(e.Dir).RemoveEKRoot(ctx, "alice", fingerprint(e.Mfr.Intermediate.Raw)); err != nil {
		t.Fatal(err)
	}
	if code := enrollCode(t, e.App, e.Mfr); code != api.CodeEKUntrusted {
		t.Fatalf("control: enroll through the removed intermediate: %q", code)
	}
	e.App.Close()
	db, err := bolt.Open(filepath.Join(e.Dir, "raft", "fsm.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Sorts before every fingerprint: the read stops on it.
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("ek_roots")).Put([]byte("0"), []byte("not a record")) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	if code := enrollCode(t, e.App, e.Mfr); code != api.CodeEKUntrusted {
		t.Fatalf("enroll with an unreadable replica of the set: %q, want %s (ek-roots.pem still holds the removed CA)", code, api.CodeEKUntrusted)
	}
}
