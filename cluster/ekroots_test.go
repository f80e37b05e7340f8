package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"testing"
)

func randomRoots(n int) []EKRoot {
	out := make([]EKRoot, n)
	for i := range out {
		der := make([]byte, 64)
		rand.Read(der)
		out[i] = EKRoot{Subject: "CN=test", DER: der}
	}
	return out
}

// The FSM keys CAs by the SHA-256 it computes, seeds only an empty set,
// bounds the set, refuses to remove the last CA, and carries the set and
// the settings through a snapshot; every accepted change moves
// ConfigGeneration.
func TestEKRootsAndSettingsInFSM(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	gen := n.ConfigGeneration()
	lie := randomRoots(1)
	lie[0].SHA256 = "00" // the FSM computes the key itself
	if ok, err := n.SeedEKRoots(ctx, "node:n1", lie); err != nil || !ok {
		t.Fatalf("seed an empty set: %v %v", ok, err)
	}
	if n.ConfigGeneration() == gen {
		t.Fatal("the seed did not move ConfigGeneration")
	}
	if ok, err := n.SeedEKRoots(ctx, "node:n1", randomRoots(3)); err != nil || ok {
		t.Fatalf("seed a set that has CAs: %v %v (want a no-op)", ok, err)
	}
	roots, _ := n.EKRoots()
	if len(roots) != 1 || roots[0].SHA256 == "00" || len(roots[0].SHA256) != 64 || roots[0].AddedBy != "node:n1" {
		t.Fatalf("after the seed: %+v", roots)
	}
	if err := n.RemoveEKRoot(ctx, "alice", roots[0].SHA256); !errors.Is(err, ErrLastEKRoot) {
		t.Fatalf("remove the last CA: %v", err)
	}
	if w, err := n.AddEKRoots(ctx, "alice", randomRoots(MaxEKRoots-1)); err != nil || w != MaxEKRoots-1 {
		t.Fatalf("fill the set: %d %v", w, err)
	}
	if _, err := n.AddEKRoots(ctx, "alice", randomRoots(1)); !errors.Is(err, ErrEKRootsLimit) {
		t.Fatalf("one over the bound: %v", err)
	}
	// A refused command writes nothing, also when its first CAs would fit.
	if err := n.RemoveEKRoot(ctx, "alice", roots[0].SHA256); err != nil {
		t.Fatalf("control: remove one of many: %v", err)
	}
	head, _ := n.AuditHead()
	if _, err := n.AddEKRoots(ctx, "alice", randomRoots(2)); !errors.Is(err, ErrEKRootsLimit) {
		t.Fatalf("two over a bound one away: %v", err)
	}
	if after, _ := n.AuditHead(); after.Seq != head.Seq {
		t.Fatal("a refused add wrote audit entries")
	}
	if rs, _ := n.EKRoots(); len(rs) != MaxEKRoots-1 {
		t.Fatalf("a refused add left %d CAs, want %d", len(rs), MaxEKRoots-1)
	}
	big := randomRoots(1)
	big[0].DER = make([]byte, MaxEKRootDER+1)
	if _, err := n.AddEKRoots(ctx, "alice", big); !errors.Is(err, ErrEKRootsLimit) {
		t.Fatalf("an oversized certificate: %v", err)
	}
	if err := n.RemoveEKRoot(ctx, "alice", roots[0].SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove twice: %v", err)
	}

	if _, err := n.Settings(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("settings before the seed: %v", err)
	}
	if ok, err := n.SeedSettings(ctx, "node:n1", json.RawMessage(`{"a":1}`)); err != nil || !ok {
		t.Fatalf("seed settings: %v %v", ok, err)
	}
	if ok, _ := n.SeedSettings(ctx, "node:n1", json.RawMessage(`{"a":2}`)); ok {
		t.Fatal("a second seed overwrote the settings")
	}
	if _, err := n.SetSettings(ctx, "alice", 0, json.RawMessage(`{"a":3}`)); !errors.Is(err, ErrSettingsConflict) {
		t.Fatalf("a change based on no version: %v", err)
	}
	if v, err := n.SetSettings(ctx, "alice", 1, json.RawMessage(`{"a":4}`)); err != nil || v != 2 {
		t.Fatalf("a change based on version 1: %d %v", v, err)
	}

	want, _ := n.StateHash()
	snap, _ := n.fsm.Snapshot()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	other, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer other.close()
	g := other.confGen.Load()
	if err := other.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, _ := other.stateHash(); got != want || other.confGen.Load() == g {
		t.Fatalf("restored hash %s (want %s), generation moved: %v", got, want, other.confGen.Load() != g)
	}
	restored := &Node{fsm: other}
	if rs, _ := restored.EKRoots(); len(rs) != MaxEKRoots-1 {
		t.Fatalf("%d CAs after restore", len(rs))
	}
	if s, err := restored.Settings(); err != nil || s.Version != 2 || string(s.Document) != `{"a":4}` {
		t.Fatalf("settings after restore: %+v %v", s, err)
	}
}
