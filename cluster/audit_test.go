package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// auditChain builds a registry with every kind of decision and a final
// checkpoint, and returns its entries.
func auditChain(t *testing.T) (*Node, ed25519.PrivateKey, []AuditEntry) {
	t.Helper()
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	enroll(t, n, "s1", "dev-a")
	enroll(t, n, "s2", "dev-b")
	if _, err := n.CommitRejection(ctx, "s3", time.Now().Add(time.Minute), record("dev-c", OutcomeRejected)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.TransitionDevice(ctx, "dev-a", OpDisable, "admin:alice", "lost in transit"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Checkpoint(ctx, "test", key); err != nil {
		t.Fatal(err)
	}
	if _, err := n.ApplyPolicy(ctx, "admin:alice", json.RawMessage(`{"groups":[]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.LabelDevice(ctx, "dev-b", "admin:bob", map[string]string{"site": "lyon"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := n.AppendAudit(ctx, AuditAdminDenied, "cert:mallory", "/admin/v1/devices", map[string]string{"why": "no role"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Checkpoint(ctx, "test", key); err != nil {
		t.Fatal(err)
	}
	entries, err := n.AuditEntries(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n, key, entries
}

func TestAuditChainRecordsDecisions(t *testing.T) {
	_, key, entries := auditChain(t)
	var types []string
	for i, e := range entries {
		types = append(types, e.Type)
		if e.Seq != uint64(i+1) || e.Hash != e.ComputeHash() {
			t.Fatalf("entry %d: %+v", i, e)
		}
		if i > 0 && e.Prev != entries[i-1].Hash {
			t.Fatalf("entry %d does not link to %d", i, i-1)
		}
	}
	want := []string{AuditEnrollmentAccepted, AuditEnrollmentAccepted, AuditEnrollmentRejected, AuditDeviceState, AuditCheckpoint,
		AuditPolicyApplied, AuditDeviceLabels, AuditAdminDenied, AuditCheckpoint}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Fatalf("types %v\nwant  %v", types, want)
	}
	if !strings.Contains(entries[3].Detail, "lost in transit") || entries[3].Actor != "admin:alice" {
		t.Fatalf("state change entry %+v", entries[3])
	}
	rep := VerifyAudit(lines(entries), key.Public().(ed25519.PublicKey))
	if !rep.OK() || rep.Checkpoints != 2 || rep.SignedUpTo != 8 {
		t.Fatalf("report %+v", rep)
	}
}

func lines(entries []AuditEntry) []AuditLine {
	out := make([]AuditLine, len(entries))
	for i, e := range entries {
		out[i] = AuditLine{Line: i + 2, Entry: e}
	}
	return out
}

// Export in both formats, verify, then damage the file: one flipped byte,
// one deleted entry, two swapped entries; each is found at its line.
func TestAuditExportTamperDetection(t *testing.T) {
	_, key, entries := auditChain(t)
	pub := key.Public().(ed25519.PublicKey)
	for _, format := range []string{AuditJSONL, AuditCSV} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteAudit(&buf, format, AuditHeader{ExportedAt: t0}, entries); err != nil {
				t.Fatal(err)
			}
			verify := func(b []byte) AuditReport {
				t.Helper()
				_, ls, err := ReadAudit(bytes.NewReader(b))
				if err != nil {
					t.Fatal(err)
				}
				return VerifyAudit(ls, pub)
			}
			if rep := verify(buf.Bytes()); !rep.OK() || rep.Entries != len(entries) {
				t.Fatalf("clean export: %+v", rep)
			}
			rows := strings.SplitAfter(buf.String(), "\n") // row 0 is the header in both formats

			// Flip one byte inside the actor of entry seq 4 (file line 5).
			flipped := append([]string(nil), rows...)
			flipped[4] = strings.Replace(flipped[4], "admin:alice", "admin:alicf", 1)
			rep := verify([]byte(strings.Join(flipped, "")))
			if !hasProblem(rep, 5, 4, "modified") || hasProblem(rep, 4, 3, "modified") {
				t.Fatalf("flipped byte: %v", rep.Problems)
			}
			if !hasProblem(rep, 6, 5, "bad_signature") {
				t.Fatalf("the checkpoint over the flipped entry still verifies: %v", rep.Problems)
			}

			// Delete entry seq 3 (line 4).
			deleted := append(append([]string(nil), rows[:3]...), rows[4:]...)
			rep = verify([]byte(strings.Join(deleted, "")))
			if !hasProblem(rep, 4, 4, "removed") {
				t.Fatalf("deleted entry: %v", rep.Problems)
			}

			// Swap entries seq 6 and 7 (lines 7 and 8).
			swapped := append([]string(nil), rows...)
			swapped[6], swapped[7] = swapped[7], swapped[6]
			rep = verify([]byte(strings.Join(swapped, "")))
			if !hasProblem(rep, 7, 7, "removed") || !hasProblem(rep, 8, 6, "reordered") {
				t.Fatalf("swapped entries: %v", rep.Problems)
			}

			// A cut tail: the export no longer ends on a checkpoint.
			rep = verify([]byte(strings.Join(rows[:len(rows)-2], "")))
			if !hasProblem(rep, 9, 8, "unsigned_tail") {
				t.Fatalf("cut tail: %v", rep.Problems)
			}
		})
	}
	// A checkpoint under another key is refused.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	if rep := VerifyAudit(lines(entries), other.Public().(ed25519.PublicKey)); rep.Checkpoints != 0 || rep.OK() {
		t.Fatalf("foreign key: %+v", rep)
	}
}

func hasProblem(rep AuditReport, line int, seq uint64, kind string) bool {
	for _, p := range rep.Problems {
		if p.Line == line && p.Seq == seq && p.Kind == kind {
			return true
		}
	}
	return false
}

func TestCheckpointMustMatchChain(t *testing.T) {
	n, key, _ := auditChain(t)
	before, _ := n.StateHash()
	if err := n.AppendAudit(context.Background(), AuditAdminDenied, "x", "y", nil); err != nil {
		t.Fatal(err)
	}
	head, _ := n.AuditHead()
	before, _ = n.StateHash()
	for _, cp := range []CheckpointDetail{{Seq: 2, Hash: strings.Repeat("0", 64)}, {Seq: head.Seq, Hash: strings.Repeat("0", 64)}, {Seq: 2, Hash: head.Hash}} {
		cp.KeyID = KeyID(key.Public().(ed25519.PublicKey))
		_, err := n.apply(context.Background(), "audit.checkpoint", 1, &checkpointAudit{Actor: "x", Checkpoint: cp})
		if !errors.Is(err, ErrAuditCheckpoint) {
			t.Fatalf("checkpoint %+v: %v", cp, err)
		}
	}
	if after, _ := n.StateHash(); after != before {
		t.Fatal("a refused checkpoint changed the state")
	}
}
