package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// noteCmd stands in for a command a later build adds: it appends an audit
// entry, so whether it applied shows in the state hash.
type noteCmd struct {
	Note string `json:"note"`
}

func (c *noteCmd) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	return applyResult{Result: index, Err: appendAudit(tx, at, "test.note", "test", c.Note, nil)}
}

// registerNote makes test.note v1 a command of this build from feature
// version since, until the test ends.
func registerNote(t *testing.T, since int) {
	t.Helper()
	k := cmdKey{"test.note", 1}
	commandTypes[k] = decodeAs[noteCmd]
	if since > 0 {
		commandSince[k] = since
	}
	t.Cleanup(func() { delete(commandTypes, k); delete(commandSince, k) })
}

// The committed feature version starts at 0, is raised through the log
// with an audit entry, never lowered, survives a snapshot, and a raise
// beyond this build is refused before it is proposed.
func TestFeatureVersionRaised(t *testing.T) {
	n := openNode(t, t.TempDir(), WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	ctx := context.Background()
	if v := n.FeatureVersion(); v != 0 {
		t.Fatalf("a new registry at feature version %d", v)
	}
	h0, _ := n.StateHash()
	if v, err := n.RaiseFeatureVersion(ctx, FeatureVersion, "node:n1"); err != nil || v != FeatureVersion {
		t.Fatalf("raise: %d, %v", v, err)
	}
	if v := n.FeatureVersion(); v != FeatureVersion {
		t.Fatalf("feature version %d after the raise", v)
	}
	h1, _ := n.StateHash()
	if h1 == h0 {
		t.Fatal("the raise is not in the state hash")
	}
	head, err := n.AuditHead()
	if err != nil || head.Type != AuditFeatureRaised || head.Actor != "node:n1" || head.Detail != fmt.Sprintf(`{"from":0,"to":%d}`, FeatureVersion) {
		t.Fatalf("audit head %+v, %v", head, err)
	}
	rec, err := n.Feature()
	if err != nil || rec.Version != FeatureVersion || rec.Actor != "node:n1" || rec.Time.IsZero() {
		t.Fatalf("record %+v, %v", rec, err)
	}
	// Again, and lower: nothing changes (no second audit entry).
	for _, v := range []int{FeatureVersion, 0} {
		if got, err := n.RaiseFeatureVersion(ctx, v, "node:n1"); err != nil || got != FeatureVersion {
			t.Fatalf("raise to %d: %d, %v", v, got, err)
		}
	}
	if h, _ := n.StateHash(); h != h1 {
		t.Fatal("a raise to the committed version (or lower) changed the state")
	}
	last := n.raft.LastIndex()
	if _, err := n.RaiseFeatureVersion(ctx, FeatureVersion+1, "node:n1"); !errors.Is(err, ErrFeatureVersion) {
		t.Fatalf("raise beyond this build: %v", err)
	}
	if n.raft.LastIndex() != last {
		t.Fatal("a raise beyond this build reached the log")
	}
	// A forwarded one (a newer follower's) is refused by the leader too.
	if _, err := n.ApplyForwarded(ctx, mustEncode(t, "cluster.feature", 1, &raiseFeature{Version: FeatureVersion + 1})); !errors.Is(err, ErrFeatureVersion) {
		t.Fatalf("forwarded raise beyond this build: %v", err)
	}

	// Snapshots carry it.
	var snap bytes.Buffer
	s, err := n.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Persist(&writerSink{w: &snap}); err != nil {
		t.Fatal(err)
	}
	s.Release()
	dst, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(error) {})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.close()
	if err := dst.Restore(io.NopCloser(&snap)); err != nil {
		t.Fatal(err)
	}
	if v := dst.feature.Load(); v != FeatureVersion {
		t.Fatalf("restored feature version %d", v)
	}
	if h, _ := dst.stateHash(); h != h1 {
		t.Fatal("restored state differs")
	}
}

// A command newer than the committed feature version is refused at apply,
// writing nothing, on every replica alike (whatever the batching), and
// never proposed by Node.apply; once the version is raised it applies.
func TestFeatureGatedCommand(t *testing.T) {
	registerNote(t, 1)
	n := openNode(t, t.TempDir(), WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	ctx := context.Background()
	last := n.raft.LastIndex()
	if _, err := n.apply(ctx, "test.note", 1, &noteCmd{Note: "early"}); !errors.Is(err, ErrFeatureDisabled) {
		t.Fatalf("proposed before the raise: %v", err)
	}
	if _, err := n.ApplyForwarded(ctx, mustEncode(t, "test.note", 1, &noteCmd{Note: "early"})); !errors.Is(err, ErrFeatureDisabled) {
		t.Fatalf("forwarded before the raise: %v", err)
	}
	if n.raft.LastIndex() != last {
		t.Fatal("a command newer than the feature version reached the log")
	}

	// A leader that proposes it anyway (a bug, or a newer leader without
	// the check): every replica refuses it the same way and goes on.
	var entries [][]byte
	entries = append(entries, mustEncode(t, "test.note", 1, &noteCmd{Note: "refused"}))
	entries = append(entries, mustEncode(t, "cluster.feature", 1, &raiseFeature{Version: 1, Actor: "test"}))
	entries = append(entries, mustEncode(t, "test.note", 1, &noteCmd{Note: "applied"}))
	var hashes []string
	for _, split := range []int{1, 2, 3} { // batches of this many entries
		f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
		if err != nil {
			t.Fatal(err)
		}
		var results []any
		for i := 0; i < len(entries); i += split {
			var batch []*raft.Log
			for j := i; j < min(i+split, len(entries)); j++ {
				batch = append(batch, &raft.Log{Index: uint64(j + 1), Type: raft.LogCommand, Data: entries[j]})
			}
			results = append(results, f.ApplyBatch(batch)...)
		}
		if r := results[0].(applyResult); !errors.Is(r.Err, ErrFeatureDisabled) {
			t.Fatalf("batches of %d: the early note gave %+v", split, r)
		}
		if r := results[2].(applyResult); r.Err != nil || r.Result != 3 {
			t.Fatalf("batches of %d: the note after the raise gave %+v", split, r)
		}
		if f.halted.Load() != nil || f.last.Load() != 3 {
			t.Fatalf("batches of %d: halted %v, last %d", split, f.halted.Load(), f.last.Load())
		}
		var notes []string
		_ = f.view(func(tx *bolt.Tx) error {
			return tx.Bucket(bAudit).ForEach(func(_, v []byte) error {
				var e AuditEntry
				if err := json.Unmarshal(v, &e); err != nil {
					return err
				}
				if e.Type == "test.note" {
					notes = append(notes, e.Subject)
				}
				return nil
			})
		})
		if strings.Join(notes, ",") != "applied" {
			t.Fatalf("batches of %d: notes %v", split, notes)
		}
		h, _ := f.stateHash()
		hashes = append(hashes, h)
		f.close()
	}
	if hashes[0] != hashes[1] || hashes[1] != hashes[2] {
		t.Fatalf("replicas batching differently diverged: %v", hashes)
	}

	if _, err := n.RaiseFeatureVersion(ctx, 1, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.apply(ctx, "test.note", 1, &noteCmd{Note: "after"}); err != nil {
		t.Fatalf("after the raise: %v", err)
	}
}

// A cluster.feature entry above this build's FeatureVersion halts the
// replica (the build does not understand the cluster's version); a
// restart on a build that does applies it and everything after it:
// nothing was skipped.
func TestFeatureBeyondBuildHaltsUntilUpgraded(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true}
	n := openConfigured(t, cfg, WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	enroll(t, n, "s1", "d1")
	raise := n.raft.Apply(mustEncode(t, "cluster.feature", 1, &raiseFeature{Version: FeatureVersion + 1, Actor: "newer"}), time.Second)
	if err := raise.Error(); err != nil {
		t.Fatal(err)
	}
	if r, _ := raise.Response().(applyResult); !errors.Is(r.Err, ErrHalted) {
		t.Fatalf("response %+v", raise.Response())
	}
	h := n.Halted()
	if h == nil || h.Index != raise.Index() || h.Type != "cluster.feature" || !errors.Is(h.cause, ErrFeatureVersion) {
		t.Fatalf("halt %+v", h)
	}
	after := n.raft.Apply(mustEncode(t, "attestation.reject", 1, &rejectAttestation{Attestation: record("d2", OutcomeRejected)}), time.Second)
	if err := after.Error(); err != nil {
		t.Fatal(err)
	}
	if r, _ := after.Response().(applyResult); !errors.Is(r.Err, ErrHalted) {
		t.Fatalf("a later entry: %+v", after.Response())
	}
	if n.FeatureVersion() != 0 {
		t.Fatal("a halted replica moved its feature version")
	}
	n.Close()

	// Restarted on the same build: halts again at the same entry.
	n = openConfigured(t, cfg, WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	waitHalted(t, n, raise.Index())
	n.Close()

	// Restarted on a build that applies it ("upgraded" by accepting one
	// version more): the raise and the rejection after it apply.
	defer func(v int) { buildFeatureVersion = v }(buildFeatureVersion)
	buildFeatureVersion = FeatureVersion + 1
	n = openConfigured(t, cfg, WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.waitApplied(ctx, after.Index()); err != nil {
		t.Fatal(err)
	}
	if n.Halted() != nil || n.FeatureVersion() != FeatureVersion+1 {
		t.Fatalf("upgraded: halted %v, feature version %d", n.Halted(), n.FeatureVersion())
	}
	if _, err := n.Attestation(after.Index()); err != nil {
		t.Fatalf("the entry after the raise was skipped: %v", err)
	}
	n.Close()

	// Rolled back to the older build: it refuses to start, naming both versions.
	buildFeatureVersion = FeatureVersion
	_, err := Open(cfg, WithRaftConfig(fastRaft))
	if !errors.Is(err, ErrFeatureVersion) || !strings.Contains(err.Error(), fmt.Sprintf("at cluster feature version %d", FeatureVersion+1)) || !strings.Contains(err.Error(), fmt.Sprintf("applies up to %d", FeatureVersion)) {
		t.Fatalf("open on a registry at a newer feature version: %v", err)
	}
}

func waitHalted(t *testing.T, n *Node, index uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.Halted() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h := n.Halted(); h == nil || h.Index != index {
		t.Fatalf("halt %+v, want at index %d", h, index)
	}
}

// A snapshot of a registry at a feature version this build does not apply
// is refused whole: the current state stays.
func TestRestoreRefusesNewerFeatureVersion(t *testing.T) {
	src, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(error) {})
	if err != nil {
		t.Fatal(err)
	}
	defer src.close()
	if err := src.db.Update(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bSettings), keyFeature, FeatureRecord{Version: FeatureVersion + 1, Time: t0, Actor: "newer"})
	}); err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	s, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Persist(&writerSink{w: &snap}); err != nil {
		t.Fatal(err)
	}
	s.Release()
	dst, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(error) {})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.close()
	before, _ := dst.stateHash()
	if err := dst.Restore(io.NopCloser(&snap)); !errors.Is(err, ErrFeatureVersion) {
		t.Fatalf("restore: %v", err)
	}
	if h, _ := dst.stateHash(); h != before || dst.feature.Load() != 0 {
		t.Fatal("a refused restore changed the state")
	}
}
