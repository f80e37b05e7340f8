package cluster

import (
	"crypto/ed25519"
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
