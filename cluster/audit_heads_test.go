package cluster

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"
)

// --expect-head against a filtered export (--since) that starts after every
// head the auditor kept: nothing can be compared, so a chain rewritten
// before the export's start (by the CA key holder, who re-signs the export
// range) would pass. It must be reported, not counted as a head checked. A
// head just before the export's start is comparable through the first
// entry's signed prev.
func TestExpectHeadNotCoveredByFilteredExport(t *testing.T) {
	_, key, entries := auditChain(t) // seq 1..9
	pub := key.Public().(ed25519.PublicKey)
	old := SignHead(key, RangeHead, "example.test", t0, entries[2]) // seq 3
	part := entries[5:]                                             // seq 6..9
	export := writeExport(t, AuditJSONL, key, part[0].Time, part)
	rep := verifyBytes(t, export, pub, ExpectHeads(old))
	if rep.OK() || rep.HeadsSeen != 0 || !hasKind(rep, "head_not_covered", 3) {
		t.Fatalf("export from seq 6 against a head at seq 3: %+v", rep)
	}
	// A rewritten past: the head the auditor kept at seq 5 differs from the
	// prev the export's first entry links to.
	forged := entries[4]
	forged.Hash = strings.Repeat("ab", 32)
	rep = verifyBytes(t, export, pub, ExpectHeads(SignHead(key, RangeHead, "example.test", t0, forged)))
	if !hasKind(rep, "head_mismatch", 5) {
		t.Fatalf("head at seq 5 against an export linking to another seq 5: %v", rep.Problems)
	}
	// Controls: the genuine head at seq 5, and an old head alongside one the
	// export covers, verify.
	at5 := SignHead(key, RangeHead, "example.test", t0, entries[4])
	if rep := verifyBytes(t, export, pub, ExpectHeads(at5)); !rep.OK() || rep.HeadsSeen != 1 {
		t.Fatalf("head at seq 5 (the export's prev): %+v", rep)
	}
	in := SignHead(key, RangeHead, "example.test", t0.Add(time.Hour), entries[7])
	if rep := verifyBytes(t, export, pub, ExpectHeads(old, in)); !rep.OK() || rep.HeadsSeen != 1 {
		t.Fatalf("an old head and one the export covers: %+v", rep)
	}
}

// The audit log's times are the leader's clock at apply: after a leader
// change (or a clock step) they can go back. An export --since must still
// be one contiguous run of the chain, from the first entry at or after
// since to the head, or its own verification reports entries "removed".
func TestAuditSinceExportIsContiguous(t *testing.T) {
	now := t0
	n := openNode(t, t.TempDir(), WithClock(func() time.Time { return now }))
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	for _, at := range []time.Duration{0, time.Hour, 2 * time.Hour, 90 * time.Minute, 3 * time.Hour} {
		now = t0.Add(at) // the fourth entry is stamped by a leader 30 minutes behind
		if err := n.AppendAudit(ctx, AuditAdminDenied, "x", "y", nil); err != nil {
			t.Fatal(err)
		}
	}
	since := t0.Add(2 * time.Hour)
	entries, err := n.AuditEntries(since, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 || entries[len(entries)-1].Seq-entries[0].Seq+1 != uint64(len(entries)) {
		var seqs []uint64
		for _, e := range entries {
			seqs = append(seqs, e.Seq)
		}
		t.Fatalf("export --since holds seqs %v: not one run of the chain", seqs)
	}
	if rep := verifyBytes(t, writeExport(t, AuditJSONL, key, since, entries), key.Public().(ed25519.PublicKey)); hasKind(rep, "removed", entries[len(entries)-1].Seq) {
		t.Fatalf("genuine export --since: %v", rep.Problems)
	}
}
