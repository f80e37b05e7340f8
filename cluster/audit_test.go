package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
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
	rep := VerifyAudit(exportLines(entries, key), key.Public().(ed25519.PublicKey))
	if !rep.OK() || rep.Checkpoints != 2 || rep.SignedUpTo != 8 || rep.Range == nil || rep.Range.LastSeq != 9 {
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

// exportLines is lines(entries) ended by their signed export range.
func exportLines(entries []AuditEntry, key ed25519.PrivateKey) []AuditLine {
	r := SignRange(key, RangeExport, "example.test", time.Time{}, t0, entries)
	return append(lines(entries), AuditLine{Line: len(entries) + 2, Range: &r})
}

// writeExport writes entries in format, ended by a range signed by key.
func writeExport(t *testing.T, format string, key ed25519.PrivateKey, since time.Time, entries []AuditEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteAudit(&buf, format, AuditHeader{ExportedAt: t0, Since: since}, entries); err != nil {
		t.Fatal(err)
	}
	if err := WriteAuditRange(&buf, format, SignRange(key, RangeExport, "example.test", since, t0, entries)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func verifyBytes(t *testing.T, b []byte, pub ed25519.PublicKey, opts ...VerifyOption) AuditReport {
	t.Helper()
	_, ls, err := ReadAudit(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return VerifyAudit(ls, pub, opts...)
}

// Export in both formats, verify, then damage the file: one flipped byte,
// one deleted entry, two swapped entries; each is found at its line.
func TestAuditExportTamperDetection(t *testing.T) {
	_, key, entries := auditChain(t)
	pub := key.Public().(ed25519.PublicKey)
	for _, format := range []string{AuditJSONL, AuditCSV} {
		t.Run(format, func(t *testing.T) {
			buf := bytes.NewBuffer(writeExport(t, format, key, time.Time{}, entries))
			verify := func(b []byte) AuditReport { return verifyBytes(t, b, pub) }
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
			rep = verify([]byte(strings.Join(rows[:9], "")))
			if !hasProblem(rep, 9, 8, "unsigned_tail") {
				t.Fatalf("cut tail: %v", rep.Problems)
			}
		})
	}
	// A checkpoint under another key is refused.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	if rep := VerifyAudit(exportLines(entries, key), other.Public().(ed25519.PublicKey)); rep.Checkpoints != 0 || rep.OK() {
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

// FailureThreshold refusals for one device within FailureWindow raise one
// flag on the registered device and one audit entry; the count restarts
// after the window.
func TestRepeatedFailuresFlag(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	enroll(t, n, "s0", "dev")
	fail := func(i int, at time.Time) {
		t.Helper()
		rec := record("dev", OutcomeRejected)
		rec.Time, rec.Code = at, "pcr_mismatch"
		if _, err := n.CommitRejection(ctx, fmt.Sprintf("f%d-%d", i, at.Unix()), time.Now().Add(time.Minute), rec); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < FailureThreshold-1; i++ {
		fail(i, time.Now())
	}
	if d, _ := n.Device("dev"); len(d.Flags) != 0 {
		t.Fatalf("flagged after %d failures: %+v", FailureThreshold-1, d.Flags)
	}
	fail(99, time.Now())
	fail(100, time.Now()) // past the threshold: no second flag in the window
	d, _ := n.Device("dev")
	if len(d.Flags) != 1 || d.Flags[0].Name != FlagRepeatedFailures || !strings.Contains(d.Flags[0].Detail, "pcr_mismatch") {
		t.Fatalf("flags %+v", d.Flags)
	}
	entries, _ := n.AuditEntries(time.Time{}, 0)
	flags := 0
	for _, e := range entries {
		if e.Type == AuditDeviceFlag && e.Subject == "dev" {
			flags++
		}
	}
	if flags != 1 {
		t.Fatalf("%d flag audit entries, want 1", flags)
	}
}

// The leader proposes stale devices with cutoffs; the FSM marks only the
// active ones still behind their cutoff, once.
func TestMarkStale(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	enroll(t, n, "s1", "old")
	enroll(t, n, "s2", "fresh")
	enroll(t, n, "s3", "off")
	if _, err := n.TransitionDevice(ctx, "off", OpDisable, "ops", "x"); err != nil {
		t.Fatal(err)
	}
	// record() dates attestations at t0.
	cut := map[string]time.Time{"old": t0.Add(time.Hour), "fresh": t0.Add(-time.Hour), "off": t0.Add(time.Hour), "missing": t0}
	for i := 0; i < 2; i++ {
		if err := n.MarkStale(ctx, cut); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]bool{"old": true, "fresh": false, "off": false} {
		d, _ := n.Device(id)
		if d.Stale != want || want && (len(d.Flags) != 1 || d.Flags[0].Name != FlagStale) {
			t.Fatalf("%s: stale=%v flags=%+v", id, d.Stale, d.Flags)
		}
	}
	// A renewal clears it.
	rec := record("old", OutcomeAccepted)
	rec.CertificateSerial = "abc"
	if _, err := n.CommitRenewal(ctx, "r1", time.Now().Add(time.Minute), rec, t0.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if d, _ := n.Device("old"); d.Stale || d.CertificateSerial != "abc" || d.Serials[len(d.Serials)-1] != "abc" {
		t.Fatalf("after renewal %+v", d)
	}
}

// However often a device enrolls, its record keeps only the newest serials
// and flags; the audit log keeps every flag.
func TestDeviceRecordStaysSmall(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		rec := record("dev", OutcomeAccepted)
		rec.CertificateSerial = fmt.Sprintf("%x", i+1)
		if _, err := n.CommitEnrollment(ctx, fmt.Sprintf("s%d", i), time.Now().Add(time.Minute), Device{ID: "dev", Status: DeviceActive, CertificateSerial: rec.CertificateSerial}, rec,
			Flag{Name: FlagReprovisioned, Detail: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := n.Device("dev")
	if len(d.Serials) != MaxSerials || d.Serials[MaxSerials-1] != "28" || len(d.Flags) != MaxFlags || d.Flags[MaxFlags-1].Detail != "39" {
		t.Fatalf("serials %v, %d flags", d.Serials, len(d.Flags))
	}
	entries, _ := n.AuditEntries(time.Time{}, 0)
	flags := 0
	for _, e := range entries {
		if e.Type == AuditDeviceFlag {
			flags++
		}
	}
	if flags != 40 {
		t.Fatalf("%d flag entries in the audit log, want 40", flags)
	}
}

// An export is ended by a signed range over exactly its entries: dropping
// entries at its start, or cutting its end back to an earlier checkpoint
// (with or without the range line), is reported in both formats.
func TestAuditExportTruncation(t *testing.T) {
	_, key, entries := auditChain(t) // seq 1..9, checkpoints at 5 and 9
	pub := key.Public().(ed25519.PublicKey)
	for _, format := range []string{AuditJSONL, AuditCSV} {
		t.Run(format, func(t *testing.T) {
			rows := strings.SplitAfter(string(writeExport(t, format, key, time.Time{}, entries)), "\n")
			// rows: 0 header, 1..9 entries seq 1..9, 10 the range, 11 "".
			if rep := verifyBytes(t, []byte(strings.Join(rows, "")), pub); !rep.OK() || rep.Range == nil || rep.Range.FirstSeq != 1 || rep.Range.LastSeq != 9 {
				t.Fatalf("clean export: %+v", rep)
			}
			// Drop the first three entries.
			headCut := append([]string{rows[0]}, rows[4:]...)
			rep := verifyBytes(t, []byte(strings.Join(headCut, "")), pub)
			if !hasKind(rep, "truncated_head", 4) || rep.OK() {
				t.Fatalf("head cut: %v", rep.Problems)
			}
			// Cut the tail back to the checkpoint at seq 5, keeping the range line.
			tailCut := append(append([]string(nil), rows[:6]...), rows[10:]...)
			rep = verifyBytes(t, []byte(strings.Join(tailCut, "")), pub)
			if !hasKind(rep, "truncated_tail", 5) || hasKind(rep, "unsigned_tail", 5) {
				t.Fatalf("tail cut to a checkpoint: %v", rep.Problems)
			}
			// The same cut, with the range line dropped too.
			rep = verifyBytes(t, []byte(strings.Join(rows[:6], "")), pub)
			if !hasKind(rep, "truncated_tail", 5) {
				t.Fatalf("tail cut without the range: %v", rep.Problems)
			}
			// A range signed by another key does not count.
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			rep = verifyBytes(t, writeExport(t, format, other, time.Time{}, entries), pub)
			if rep.Range != nil || !hasKind(rep, "bad_signature", 0) {
				t.Fatalf("foreign range: %+v", rep)
			}
		})
	}
	// An export --since starts later; its range signs the filter and that
	// start, so it verifies, and dropping its first entry does not.
	since := entries[3].Time
	part := entries[3:]
	if rep := verifyBytes(t, writeExport(t, AuditJSONL, key, since, part), pub); !rep.OK() || rep.Range.Since.IsZero() {
		t.Fatalf("export --since: %+v", rep)
	}
	rows := strings.SplitAfter(string(writeExport(t, AuditJSONL, key, since, part)), "\n")
	if rep := verifyBytes(t, []byte(rows[0]+strings.Join(rows[2:], "")), pub); !hasKind(rep, "truncated_head", 5) {
		t.Fatalf("head cut of an export --since: %v", rep.Problems)
	}
	// An unfiltered range that does not start at seq 1 is reported.
	if rep := verifyBytes(t, writeExport(t, AuditJSONL, key, time.Time{}, part), pub); !hasKind(rep, "truncated_head", 4) {
		t.Fatalf("unfiltered export from seq 4: %v", rep.Problems)
	}
}

// An auditor compares an export with signed heads kept earlier: an export
// that ends before one, or whose entry differs from it, is reported.
func TestAuditExpectHead(t *testing.T) {
	n, key, entries := auditChain(t)
	pub := key.Public().(ed25519.PublicKey)
	ctx := context.Background()
	early := SignHead(key, RangeHead, "example.test", t0, entries[4])
	if err := n.AppendAudit(ctx, AuditAdminDenied, "x", "y", nil); err != nil {
		t.Fatal(err)
	}
	head, _ := n.AuditHead()
	later := SignHead(key, RangeHead, "example.test", t0.Add(time.Hour), head)
	if later.FirstSeq != 1 || later.LastSeq != 10 || later.Verify(pub) != nil {
		t.Fatalf("signed head %+v", later)
	}
	export := writeExport(t, AuditJSONL, key, time.Time{}, entries) // ends at seq 9
	if rep := verifyBytes(t, export, pub, ExpectHeads(early)); !rep.OK() || rep.HeadsSeen != 1 {
		t.Fatalf("export against an earlier head: %+v", rep)
	}
	rep := verifyBytes(t, export, pub, ExpectHeads(early, later))
	if !hasKind(rep, "truncated_tail", 10) || len(rep.Problems) != 1 {
		t.Fatalf("export against a later head: %v", rep.Problems)
	}
	// A head over a rewritten chain (the key holder re-signed it).
	forged := entries[4]
	forged.Hash = strings.Repeat("ab", 32)
	rep = verifyBytes(t, export, pub, ExpectHeads(SignHead(key, RangeHead, "example.test", t0, forged)))
	if !hasKind(rep, "head_mismatch", 5) {
		t.Fatalf("forked head: %v", rep.Problems)
	}
	// Heads read back from `audit head -o json` or a sink file.
	var sink bytes.Buffer
	for _, h := range []AuditRange{early, later} {
		b, _ := json.Marshal(h)
		sink.Write(append(b, '\n'))
	}
	heads, err := ReadAuditHeads(sink.Bytes())
	if err != nil || len(heads) != 2 || heads[1] != later {
		t.Fatalf("read heads: %v %+v", err, heads)
	}
	if _, err := ReadAuditHeads([]byte(`{"seq":3}`)); err == nil {
		t.Fatal("a non-head read as a head")
	}
}

func hasKind(rep AuditReport, kind string, seq uint64) bool {
	for _, p := range rep.Problems {
		if p.Kind == kind && p.Seq == seq {
			return true
		}
	}
	return false
}
