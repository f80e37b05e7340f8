package cluster

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// A join attempt with a wrong secret, an unknown token or a used token is
// refused before anything reaches the Raft log.
func TestJoinTokenRefusalsWriteNothing(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	secret := []byte("0123456789abcdef0123456789abcdef")
	if err := n.CreateJoinToken(ctx, "tok1", secret, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	last := func() uint64 { return n.raft.LastIndex() }
	// The first linearizable read of a term appends Raft's barrier, once.
	if err := n.Linearize(ctx); err != nil {
		t.Fatal(err)
	}
	before := last()
	for i := 0; i < 20; i++ {
		if err := n.ConsumeJoinToken(ctx, "tok1", []byte("wrong secret, right token id...."), "n2"); !errors.Is(err, ErrJoinTokenInvalid) {
			t.Fatalf("wrong secret: %v", err)
		}
		if err := n.ConsumeJoinToken(ctx, "nosuchtoken", secret, "n2"); !errors.Is(err, ErrJoinTokenInvalid) {
			t.Fatalf("unknown token: %v", err)
		}
	}
	if got := last(); got != before {
		t.Fatalf("40 bad join attempts moved the Raft log from %d to %d", before, got)
	}
	if err := n.ConsumeJoinToken(ctx, "tok1", secret, "n2"); err != nil {
		t.Fatalf("good token: %v", err)
	}
	before = last()
	if err := n.ConsumeJoinToken(ctx, "tok1", secret, "n3"); !errors.Is(err, ErrJoinTokenUsed) {
		t.Fatalf("used token: %v", err)
	}
	if got := last(); got != before {
		t.Fatalf("a used-token attempt moved the Raft log from %d to %d", before, got)
	}
}

// The FSM judges session expiry by the command's time: an enrollment or
// renewal whose session expired is refused at apply and writes nothing.
func TestSessionExpiryJudgedAtApply(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	_, err := n.CommitEnrollment(ctx, "s1", time.Now().Add(-time.Second), Device{ID: "dev-a", Status: DeviceActive, CertificateSerial: "1"}, record("dev-a", OutcomeAccepted))
	if !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("expired session: %v", err)
	}
	if _, err := n.Device("dev-a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the refused enrollment stored the device: %v", err)
	}
	enroll(t, n, "s2", "dev-a")
	rec := record("dev-a", OutcomeAccepted)
	rec.Stage, rec.CertificateSerial = "renew", "2"
	if _, err := n.CommitRenewal(ctx, "s3", time.Now().Add(-time.Second), rec, time.Now().Add(time.Hour)); !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("expired renewal session: %v", err)
	}
	if d, _ := n.Device("dev-a"); d.CertificateSerial != "s-s2" {
		t.Fatalf("the refused renewal changed the device: %+v", d)
	}
}

// Compaction removes refused records older than their retention, and raw
// evidence older than its own, in one audited command; accepted records
// stay (without their blobs), and the audit chain still verifies.
func TestRetentionCompaction(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	raw, evlog := []byte("raw evidence gzip"), []byte("event log gzip")

	old := record("dev-a", OutcomeAccepted) // t0: days ago
	old.RawEvidenceGzip, old.EventLogGzip = raw, evlog
	accepted, err := n.CommitEnrollment(ctx, "s1", time.Now().Add(time.Minute), Device{ID: "dev-a", Status: DeviceActive, CertificateSerial: "1"}, old)
	if err != nil {
		t.Fatal(err)
	}
	refused := record("dev-a", OutcomeRejected)
	refused.Code, refused.RawEvidenceGzip = "pcr_mismatch", raw
	oldRefusal, err := n.CommitRejection(ctx, "s2", time.Now().Add(time.Minute), refused)
	if err != nil {
		t.Fatal(err)
	}
	recent := record("dev-a", OutcomeRejected)
	recent.Time, recent.Code, recent.RawEvidenceGzip = time.Now(), "pcr_mismatch", raw
	newRefusal, err := n.CommitRejection(ctx, "s3", time.Now().Add(time.Minute), recent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Checkpoint(ctx, "test", key); err != nil {
		t.Fatal(err)
	}

	removed, more, err := n.Compact(ctx, "node:n1", time.Hour, time.Hour)
	if err != nil || more || removed != 2 { // the old refusal, the old accepted record's blobs
		t.Fatalf("compact: removed %d, more %v, err %v", removed, more, err)
	}
	if _, err := n.Attestation(oldRefusal); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old refused record still there: %v", err)
	}
	if recs, _ := n.Attestations(AttestationQuery{DeviceID: "dev-a"}); len(recs) != 2 || recs[0].ID != newRefusal || recs[1].ID != accepted {
		t.Fatalf("device index after compaction: %+v", recs)
	}
	a, err := n.Attestation(accepted)
	if err != nil || a.HasRawEvidence || a.HasEventLog || a.Outcome != OutcomeAccepted {
		t.Fatalf("accepted record after compaction: %+v, %v", a, err)
	}
	if _, err := n.RawEvidence(accepted); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old raw evidence still there: %v", err)
	}
	if _, err := n.EventLog(accepted); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old event log still there: %v", err)
	}
	if b, err := n.RawEvidence(newRefusal); err != nil || string(b) != string(raw) {
		t.Fatalf("recent raw evidence: %q, %v", b, err)
	}

	head, err := n.AuditHead()
	if err != nil || head.Type != AuditRetentionCompacted || head.Actor != "node:n1" {
		t.Fatalf("audit head %+v, %v", head, err)
	}
	var rep CompactionReport
	if err := json.Unmarshal([]byte(head.Detail), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.RefusedRecords != 1 || rep.RefusedFirstID != oldRefusal || rep.RawEvidence != 1 || rep.EventLogs != 1 || rep.EvidenceFirstID != accepted {
		t.Fatalf("compaction entry says %s", head.Detail)
	}

	// Nothing left to remove: no command result, no audit entry.
	if removed, _, err := n.Compact(ctx, "node:n1", time.Hour, time.Hour); err != nil || removed != 0 {
		t.Fatalf("second compaction: %d, %v", removed, err)
	}
	if again, _ := n.AuditHead(); again.Seq != head.Seq {
		t.Fatalf("an empty compaction was audited: %+v", again)
	}
	if _, err := n.Checkpoint(ctx, "test", key); err != nil {
		t.Fatal(err)
	}
	entries, err := n.AuditEntries(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep := VerifyAudit(exportLines(entries, key), key.Public().(ed25519.PublicKey)); !rep.OK() {
		t.Fatalf("the audit chain does not verify after compaction: %+v", rep)
	}
}
