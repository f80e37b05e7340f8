package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	bolt "go.etcd.io/bbolt"
)

func fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

func hasRoot(t *testing.T, n *cluster.Node, fp string) bool {
	t.Helper()
	roots, err := n.EKRoots()
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(roots, func(r cluster.EKRoot) bool { return r.SHA256 == fp })
}

// problemCode is the problem code err carries, or "".
func problemCode(err error) string {
	var p *api.Problem
	if errors.As(err, &p) {
		return p.Code
	}
	return ""
}

// enrollCode enrolls a fresh device of m through node and returns the
// refusal's problem code ("" when accepted).
func enrollCode(t *testing.T, node *server.Appliance, m *swtpm.Manufacturer) string {
	t.Helper()
	d := servertest.NewDevice(t, m)
	_, err := fwclient.NewClient("https://"+node.Addr(), node.Root()).Enroll(context.Background(), d.TPM)
	if err != nil && problemCode(err) == "" {
		t.Fatalf("enroll through %s: %v", node.Addr(), err)
	}
	return problemCode(err)
}

// A manufacturer CA added on one node is in force for enrollment on
// another as soon as that node applies it, without touching any node's
// ek-roots.pem; removed on a third node, new enrollments chaining to it are
// refused ek_untrusted there. Each change is audited with the actor, the
// CA's subject and its fingerprint, identically on every replica.
func TestEKRootsReplicated(t *testing.T) {
	e, nodes, dirs := threeNodes(t)
	ctx := context.Background()
	m2 := swtpm.NewTestManufacturer(t)
	inter := fingerprint(m2.Intermediate.Raw)

	// Control: the cluster does not trust the second manufacturer.
	if code := enrollCode(t, nodes[2], m2); code != api.CodeEKUntrusted {
		t.Fatalf("before the add: %q, want %s", code, api.CodeEKUntrusted)
	}
	// Every node seeded from init's bundle: the first manufacturer's two CAs.
	servertest.WaitFor(t, "the seeded set on every node", 10*time.Second, func() bool {
		for _, n := range nodes {
			if !hasRoot(t, n.Node(), fingerprint(e.Mfr.Intermediate.Raw)) {
				return false
			}
		}
		return true
	})

	res, err := server.NewAdminClient(dirs[1]).AddEKRoots(ctx, "alice", servertest.EKRoots(m2), false, "m2.pem")
	if err != nil || res.Written != 2 || len(res.Roots) != 2 {
		t.Fatalf("add on node-2: %+v %v", res, err)
	}
	servertest.WaitFor(t, "node-3 applies the add", 10*time.Second, func() bool { return hasRoot(t, nodes[2].Node(), inter) })
	if code := enrollCode(t, nodes[2], m2); code != "" {
		t.Fatalf("enroll on node-3 after the add on node-2: %q", code)
	}
	// node-3's file was not what changed.
	if b, _ := os.ReadFile(filepath.Join(dirs[2], "ek-roots.pem")); bytes.Contains(b, m2.RootPEM()) {
		t.Fatal("the add rewrote node-3's ek-roots.pem; the set should be replicated state")
	}
	// Listed by every node (the served set).
	served, err := server.NewAdminClient(dirs[0]).EKRoots(ctx)
	if err != nil || !slices.ContainsFunc(served, func(r server.EKRootInfo) bool { return r.SHA256 == inter && r.AddedBy == "alice" }) {
		t.Fatalf("ekroots list on node-1: %v %+v", err, served)
	}

	if err := server.NewAdminClient(dirs[0]).RemoveEKRoot(ctx, "bob", inter); err != nil {
		t.Fatalf("remove on node-1: %v", err)
	}
	servertest.WaitFor(t, "node-2 applies the remove", 10*time.Second, func() bool { return !hasRoot(t, nodes[1].Node(), inter) })
	if code := enrollCode(t, nodes[1], m2); code != api.CodeEKUntrusted {
		t.Fatalf("enroll on node-2 after the remove: %q, want %s", code, api.CodeEKUntrusted)
	}
	// The first manufacturer still enrolls (the remove took only one CA).
	if code := enrollCode(t, nodes[1], e.Mfr); code != "" {
		t.Fatalf("enroll of the first manufacturer after the remove: %q", code)
	}

	sameState(t, nodes...)
	entries, err := nodes[2].Node().AuditEntries(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	subject := attestName(m2.Intermediate)
	var added, removed, seeded int
	for _, en := range entries {
		switch en.Type {
		case cluster.AuditEKRootsSeeded:
			seeded++
			if !strings.Contains(en.Detail, `"count":2`) || !strings.Contains(en.Detail, fingerprint(e.Mfr.Intermediate.Raw)) || en.Actor != "node:node-1" {
				t.Fatalf("seed entry %+v", en)
			}
		case cluster.AuditEKRootAdded:
			if en.Subject == "ekroot/"+inter {
				added++
				if en.Actor != "alice" || !strings.Contains(en.Detail, subject) || !strings.Contains(en.Detail, inter) {
					t.Fatalf("add entry %+v", en)
				}
			}
		case cluster.AuditEKRootRemoved:
			removed++
			if en.Actor != "bob" || en.Subject != "ekroot/"+inter || !strings.Contains(en.Detail, subject) || !strings.Contains(en.Detail, inter) {
				t.Fatalf("remove entry %+v", en)
			}
		}
	}
	if seeded != 1 || added != 1 || removed != 1 {
		t.Fatalf("audit: %d seeded, %d added, %d removed entries (want 1 each)", seeded, added, removed)
	}
}

func attestName(c *x509.Certificate) string { return strings.TrimSpace(c.Subject.String()) }

// selfSignedCert makes a self-signed certificate, a CA or not, as PEM.
func selfSignedCert(t *testing.T, cn string, isCA bool) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: isCA, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// What ekroots add refuses, each beside an accepted control: a
// certificate that is not a CA, garbage, other PEM blocks, nothing, more
// than the bound; what remove refuses: a malformed or unknown fingerprint,
// and the last CA. An auditor lists but may neither add nor remove.
func TestEKRootsRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)
	// Entries about the set and refused admin requests (member.set from the
	// node's registration may land at any time).
	audit := func() int {
		entries, err := e.App.Node().AuditEntries(time.Time{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, en := range entries {
			if strings.HasPrefix(en.Type, "ekroot") || en.Type == cluster.AuditAdminDenied {
				n++
			}
		}
		return n
	}

	goodCA := selfSignedCert(t, "Good Vendor EK CA", true)
	res, err := admin.AddEKRoots(ctx, "alice", goodCA, true, "good.pem")
	if err != nil || res.Written != 1 || !res.Roots[0].AllowNoTPMEvidence {
		t.Fatalf("control: a CA certificate: %+v %v", res, err)
	}
	goodFP := res.Roots[0].SHA256
	before := audit()
	if res, err := admin.AddEKRoots(ctx, "alice", goodCA, true, "good.pem"); err != nil || res.Written != 0 || audit() != before {
		t.Fatalf("the same CA again: %+v %v, audit %d -> %d (want nothing written)", res, err, before, audit())
	}
	// Changing its allowance is a write, audited.
	if res, err := admin.AddEKRoots(ctx, "alice", goodCA, false, "good.pem"); err != nil || res.Written != 1 || audit() != before+1 {
		t.Fatalf("the same CA with another allowance: %+v %v", res, err)
	}

	var many []byte
	for range cluster.MaxEKRoots + 1 {
		many = append(many, goodCA...)
	}
	for _, c := range []struct {
		name, pem, want string
	}{
		{"a leaf certificate", string(selfSignedCert(t, "device.example", false)), "not a CA certificate"},
		{"a CA beside a leaf", string(goodCA) + string(selfSignedCert(t, "leaf", false)), "certificate 2"},
		{"garbage in a PEM block", "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n", "does not parse"},
		{"text", "hello, world", "does not parse"},
		{"a private key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})), "not a CERTIFICATE"},
		{"nothing", "", "no certificate"},
		{"over the bound", string(many), "at most"},
	} {
		seq := audit()
		_, err := admin.AddEKRoots(ctx, "alice", []byte(c.pem), false, c.name)
		var p *api.Problem
		if !errors.As(err, &p) || p.Status != http.StatusBadRequest || p.Code != api.CodeEKRootInvalid || !strings.Contains(p.Detail, c.want) {
			t.Errorf("%s: %v, want 400 %s naming %q", c.name, err, api.CodeEKRootInvalid, c.want)
		}
		if audit() != seq {
			t.Errorf("%s: a refused add wrote to the audit log", c.name)
		}
	}

	for _, c := range []struct{ fp, code string }{
		{"xyz", api.CodeMalformed},
		{strings.ToUpper(goodFP), api.CodeMalformed},
		{strings.Repeat("ab", 32), api.CodeNotFound},
	} {
		if err := admin.RemoveEKRoot(ctx, "alice", c.fp); problemCode(err) != c.code {
			t.Errorf("remove %s: %v, want %s", c.fp, err, c.code)
		}
	}

	// Over HTTPS: the auditor lists, and is refused add and remove.
	as := func(role string) *server.AdminClient {
		return server.NewRemoteAdminClient(e.URL(), adminCert(t, e, role, role+"-1"), e.App.Root())
	}
	auditor := as(ca.RoleAuditor)
	if roots, err := auditor.EKRoots(ctx); err != nil || len(roots) != 3 {
		t.Fatalf("auditor lists: %d roots, %v", len(roots), err)
	}
	seq := audit()
	if _, err := auditor.AddEKRoots(ctx, "", selfSignedCert(t, "Sneaky CA", true), false, ""); problemCode(err) != api.CodeForbidden {
		t.Fatalf("auditor adds: %v", err)
	}
	if err := auditor.RemoveEKRoot(ctx, "", goodFP); problemCode(err) != api.CodeForbidden {
		t.Fatalf("auditor removes: %v", err)
	}
	if roots, _ := admin.EKRoots(ctx); len(roots) != 3 || audit() != seq+2 { // two admin.denied entries
		t.Fatalf("after the auditor's attempts: %d roots, audit %d -> %d", len(roots), seq, audit())
	}
	// The operator over HTTPS: the actor is the certificate's, not a claim.
	if err := as(ca.RoleOperator).RemoveEKRoot(ctx, "someone-else", goodFP); err != nil {
		t.Fatalf("operator removes: %v", err)
	}
	entries, _ := e.App.Node().AuditEntries(time.Time{}, 0)
	last := entries[len(entries)-1]
	if last.Type != cluster.AuditEKRootRemoved || last.Actor != "admin:operator-1(operator)" || !strings.Contains(last.Detail, "Good Vendor EK CA") {
		t.Fatalf("remove audit entry %+v", last)
	}

	// Down to one CA: the last one stays.
	if err := admin.RemoveEKRoot(ctx, "alice", fingerprint(e.Mfr.Intermediate.Raw)); err != nil {
		t.Fatalf("control: removing a CA that is not the last: %v", err)
	}
	var p *api.Problem
	if err := admin.RemoveEKRoot(ctx, "alice", fingerprint(e.Mfr.Root.Raw)); !errors.As(err, &p) || p.Status != http.StatusConflict || p.Code != api.CodeEKRootLast {
		t.Fatalf("removing the last CA: %v", err)
	}
	if roots, _ := admin.EKRoots(ctx); len(roots) != 1 {
		t.Fatalf("%d roots after refusing to remove the last", len(roots))
	}
	// A restart does not seed again: ek-roots.pem, which still holds the
	// removed intermediate, does not bring it back.
	e.App.Close()
	e.Start()
	time.Sleep(time.Second) // the seed loop's first rounds
	roots, err := server.NewAdminClient(e.Dir).EKRoots(ctx)
	if err != nil || len(roots) != 1 || roots[0].SHA256 != fingerprint(e.Mfr.Root.Raw) {
		t.Fatalf("after a restart: %+v %v", roots, err)
	}
	seeds := 0
	entries, _ = e.App.Node().AuditEntries(time.Time{}, 0)
	for _, en := range entries {
		if en.Type == cluster.AuditEKRootsSeeded {
			seeds++
		}
	}
	if seeds != 1 {
		t.Fatalf("%d seed entries after a restart, want 1", seeds)
	}
	if code := enrollCode(t, e.App, e.Mfr); code != api.CodeEKUntrusted {
		t.Fatalf("enroll through the removed intermediate after a restart: %q", code)
	}
}

// Cluster-wide settings are the first node's: two nodes that join with
// default configurations answer a pending device with the cluster's
// approval_retry and issue with its cert_validity. `settings set` on one
// node reaches the others, audited; bad changes are refused.
func TestClusterSettingsReachJoiners(t *testing.T) {
	e := servertest.NewWithConfig(t, func(c *server.Config) {
		c.ApprovalRetry = server.Duration{Duration: 7 * time.Second}
		c.CertValidity = server.Duration{Duration: 48 * time.Hour}
	})
	n2, d2 := e.Join(t, "node-2")
	n3, d3 := e.Join(t, "node-3")
	nodes := []*server.Appliance{e.App, n2, n3}
	for _, n := range nodes {
		servertest.WaitFor(t, "three registered voters", 20*time.Second, func() bool { return voters(n) == 3 })
	}
	ctx := context.Background()

	// cert_validity on a joiner.
	d := servertest.NewDevice(t, e.Mfr)
	id, err := fwclient.NewClient("https://"+n3.Addr(), n3.Root()).Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if v := id.Certificate.NotAfter.Sub(id.Certificate.NotBefore); v < 47*time.Hour || v > 49*time.Hour {
		t.Fatalf("a certificate from node-3 is valid for %v, want the cluster's 48h", v)
	}

	if _, err := server.NewAdminClient(e.Dir).ApplyPolicy(ctx, "test", []byte(`{"groups":[{"name":"floor","mode":"approve"}]}`)); err != nil {
		t.Fatal(err)
	}
	retryAfter := func(n *server.Appliance) int {
		t.Helper()
		d := servertest.NewDevice(t, e.Mfr)
		_, err := fwclient.NewClient("https://"+n.Addr(), n.Root()).Enroll(ctx, d.TPM)
		var p *api.Pending
		if !errors.As(err, &p) {
			t.Fatalf("enroll through %s in approve mode: %v", n.Addr(), err)
		}
		return p.RetryAfterSeconds
	}
	for i, n := range nodes {
		if got := retryAfter(n); got != 7 {
			t.Fatalf("node-%d answers Retry-After %d, want the cluster's 7", i+1, got)
		}
	}
	// The joiners' config.json records the cluster's values.
	if cfg, err := server.LoadConfig(d2); err != nil || cfg.ApprovalRetry.Duration != 7*time.Second || cfg.CertValidity.Duration != 48*time.Hour {
		t.Fatalf("node-2 config.json: %+v %v", cfg, err)
	}

	// settings set on node-3 reaches node-2.
	admin3 := server.NewAdminClient(d3)
	v, err := admin3.ChangeSettings(ctx, "alice", 0, json.RawMessage(`{"approval_retry":"9s"}`))
	if err != nil || v.Settings.ApprovalRetry.Duration != 9*time.Second || v.Settings.CertValidity.Duration != 48*time.Hour || v.Version != 2 {
		t.Fatalf("settings set: %+v %v", v, err)
	}
	servertest.WaitFor(t, "node-2 applies the settings", 10*time.Second, func() bool { return n2.Settings().Version == 2 })
	if got := retryAfter(n2); got != 9 {
		t.Fatalf("node-2 answers Retry-After %d after settings set, want 9", got)
	}
	entries, _ := n2.Node().AuditEntries(time.Time{}, 0)
	var changes []cluster.AuditEntry
	for _, en := range entries {
		if en.Type == cluster.AuditSettings {
			changes = append(changes, en)
		}
	}
	if len(changes) != 2 || changes[0].Actor != "node:node-1" || !strings.Contains(changes[0].Detail, `"approval_retry":"7s"`) ||
		changes[1].Actor != "alice" || !strings.Contains(changes[1].Detail, `"approval_retry":"9s"`) {
		t.Fatalf("settings audit entries %+v", changes)
	}

	for _, c := range []struct {
		name   string
		base   int
		change string
		code   string
	}{
		{"unknown key", 0, `{"approval_rety":"9s"}`, api.CodeSettingsInvalid},
		{"trust domain", 0, `{"trust_domain":"other.example"}`, api.CodeSettingsInvalid},
		{"zero validity", 0, `{"cert_validity":"0s"}`, api.CodeSettingsInvalid},
		{"not a duration", 0, `{"session_ttl":"soon"}`, api.CodeSettingsInvalid},
		{"stale base", 1, `{"approval_retry":"3s"}`, api.CodeSettingsConflict},
	} {
		if _, err := admin3.ChangeSettings(ctx, "alice", c.base, json.RawMessage(c.change)); problemCode(err) != c.code {
			t.Errorf("%s: %v, want %s", c.name, err, c.code)
		}
	}
	if got := n3.Settings(); got.Version != 2 || got.Settings.ApprovalRetry.Duration != 9*time.Second {
		t.Fatalf("a refused change changed the settings: %+v", got)
	}
}

// A backup carries the replicated set and settings: a cluster made from it
// trusts a CA added after init, and keeps the changed settings.
func TestBackupCarriesEKRootsAndSettings(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)
	m2 := swtpm.NewTestManufacturer(t)
	if _, err := admin.AddEKRoots(ctx, "alice", servertest.EKRoots(m2), false, "m2.pem"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ChangeSettings(ctx, "alice", 0, json.RawMessage(`{"approval_retry":"11s"}`)); err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := admin.Backup(ctx, &archive); err != nil {
		t.Fatal(err)
	}
	if files := archiveFiles(t, archive.Bytes()); !bytes.Contains(files["ek-roots.pem"], pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m2.Intermediate.Raw})) {
		t.Fatal("the backup's ek-roots.pem lacks the CA added after init")
	}
	fresh := restoreIntoFreshNode(t, archive.Bytes())
	if !hasRoot(t, fresh.Node(), fingerprint(m2.Intermediate.Raw)) {
		t.Fatal("the restored cluster lacks the CA added after init")
	}
	if s := fresh.Settings(); s.Settings.ApprovalRetry.Duration != 11*time.Second {
		t.Fatalf("restored settings %+v", s)
	}
	if code := enrollCode(t, fresh, m2); code != "" {
		t.Fatalf("enroll through the restored cluster with the added CA: %q", code)
	}
}

// The leader's periodic duties use the replicated settings, not the
// node's config.json: a checkpoint interval and a retention shortened with
// settings set take effect (config.json keeps 5m and 90 days).
func TestLeaderDutiesUseReplicatedSettings(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	node := e.App.Node()
	// A refused record to compact: a genuine device no group admits.
	applyPolicy(t, e, `{"groups":[{"name":"other","mode":"auto","match":{"models":["no-such-model"]}}]}`)
	if code := enrollCode(t, e.App, e.Mfr); code != api.CodePolicyDenied {
		t.Fatalf("enroll outside every group: %q", code)
	}
	refused := func() int {
		recs, err := node.Attestations(cluster.AttestationQuery{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range recs {
			if r.Outcome == cluster.OutcomeRejected {
				n++
			}
		}
		return n
	}
	if refused() == 0 {
		t.Fatal("the refusal left no record")
	}
	// Control: under config.json's 90 days nothing goes.
	if n, err := e.App.CompactRetention(ctx); err != nil || n != 0 || refused() == 0 {
		t.Fatalf("compaction under the default retention: removed %d, %v", n, err)
	}
	checkpoints := func() int {
		entries, _ := node.AuditEntries(time.Time{}, 0)
		n := 0
		for _, en := range entries {
			if en.Type == cluster.AuditCheckpoint {
				n++
			}
		}
		return n
	}
	before := checkpoints()
	if _, err := server.NewAdminClient(e.Dir).ChangeSettings(ctx, "alice", 0, json.RawMessage(`{"retain_refused":"1s","audit_checkpoint_every":"1s"}`)); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, "a checkpoint at the replicated interval", 10*time.Second, func() bool { return checkpoints() > before })
	servertest.WaitFor(t, "the refused record compacted at the replicated retention", 10*time.Second, func() bool { return refused() == 0 })
	if cfg, _ := server.LoadConfig(e.Dir); cfg.RetainRefused.Duration != 90*24*time.Hour || cfg.AuditCheckpointEvery.Duration != 5*time.Minute {
		t.Fatalf("config.json changed: %+v", cfg)
	}
}

// A data directory from before the set and settings were replicated (Raft
// state without them, ek-roots.pem and config.json beside it) is migrated
// once when its node leads: audited, and the registry kept.
func TestEKRootsAndSettingsMigratedOnce(t *testing.T) {
	e := newEnv(t)
	if code := enrollCode(t, e.App, e.Mfr); code != "" {
		t.Fatalf("enroll: %q", code)
	}
	devs, _ := e.App.Node().Devices()
	e.App.Close()
	// Make it an old data directory: empty the two buckets.
	db, err := bolt.Open(filepath.Join(e.Dir, "raft", "fsm.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"ek_roots", "settings"} {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	// A restart does not wait for the migration (WaitReady): it follows.
	servertest.WaitFor(t, "the migration", 10*time.Second, func() bool {
		_, err := e.App.Node().Settings()
		roots, _ := e.App.Node().EKRoots()
		return err == nil && len(roots) > 0
	})
	roots, err := e.App.Node().EKRoots()
	if err != nil || len(roots) != 2 || !hasRoot(t, e.App.Node(), fingerprint(e.Mfr.Intermediate.Raw)) {
		t.Fatalf("migrated set: %d roots, %v", len(roots), err)
	}
	if s := e.App.Settings(); s.Version != 1 || s.Settings.ApprovalRetry.Duration != time.Second || s.Actor != "node:node-1" {
		t.Fatalf("migrated settings %+v", s)
	}
	if after, _ := e.App.Node().Devices(); len(after) != len(devs) {
		t.Fatalf("the migration changed the registry: %d devices, had %d", len(after), len(devs))
	}
	count := func() (seeds, settings int) {
		entries, _ := e.App.Node().AuditEntries(time.Time{}, 0)
		for _, en := range entries {
			switch en.Type {
			case cluster.AuditEKRootsSeeded:
				seeds++
			case cluster.AuditSettings:
				settings++
			}
		}
		return
	}
	// Two of each: the first start's seed, and the migration.
	if seeds, settings := count(); seeds != 2 || settings != 2 {
		t.Fatalf("%d seed and %d settings entries, want 2 each", seeds, settings)
	}
	// Once: another restart writes nothing.
	e.App.Close()
	e.Start()
	if seeds, settings := count(); seeds != 2 || settings != 2 {
		t.Fatalf("after another restart: %d seed and %d settings entries", seeds, settings)
	}
	if code := enrollCode(t, e.App, e.Mfr); code != "" {
		t.Fatalf("enroll after the migration: %q", code)
	}
}
