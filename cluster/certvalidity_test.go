package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// enrollment.accept and renewal.accept v3 keep the certificate's validity
// on the record; v1 and v2 entries (an old log replayed, or a cluster with
// an older member) apply as before and store none, even if a payload
// carried one, as an older replica decoding them would. Every replica, and
// one restored from a snapshot, holds the same state.
func TestAcceptV3RecordsCertificateValidity(t *testing.T) {
	for _, c := range ValidityCommands {
		if !slices.Contains(Commands(), c) {
			t.Fatalf("%s is not in Commands %v", c, Commands())
		}
	}
	nb, na := t0.Add(-time.Minute), t0.Add(24*time.Hour)
	withCert := func(dev, serial string, notBefore, notAfter time.Time) AttestationRecord {
		r := record(dev, OutcomeAccepted)
		r.CertificateSerial, r.CertificateNotBefore, r.CertificateNotAfter = serial, notBefore, notAfter
		return r
	}
	at := t0.Add(time.Second)
	entry := func(index uint64, typ string, version int, payload any) *raft.Log {
		t.Helper()
		b, err := encodeCommand(typ, version, at, payload)
		if err != nil {
			t.Fatal(err)
		}
		return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
	}
	exp := t0.Add(time.Minute)
	log := []*raft.Log{
		// v3: enrollment then renewal, each with its certificate's validity.
		entry(1, "enrollment.accept", 3, &acceptEnrollment{SessionID: "e1", SessionExpires: exp, Device: Device{ID: "d1", Status: DeviceActive, CertificateSerial: "a1", CertificateNotAfter: na}, Attestation: withCert("d1", "a1", nb, na)}),
		entry(2, "renewal.accept", 3, &acceptRenewal{SessionID: "r1", SessionExpires: exp, Attestation: withCert("d1", "a2", nb.Add(time.Hour), na.Add(time.Hour)), NotAfter: na.Add(time.Hour)}),
		// v3 refuses a validity that is not the device's, reversed, or without a serial.
		entry(3, "enrollment.accept", 3, &acceptEnrollment{SessionID: "e3", SessionExpires: exp, Device: Device{ID: "d3", Status: DeviceActive, CertificateSerial: "a3", CertificateNotAfter: na.Add(time.Second)}, Attestation: withCert("d3", "a3", nb, na)}),
		entry(4, "renewal.accept", 3, &acceptRenewal{SessionID: "r4", SessionExpires: exp, Attestation: withCert("d1", "a4", na, nb), NotAfter: nb}),
		entry(5, "renewal.accept", 3, &acceptRenewal{SessionID: "r5", SessionExpires: exp, Attestation: withCert("d1", "", nb, na), NotAfter: na}),
		// v2 and v1, carrying a validity anyway: stored without it.
		entry(6, "enrollment.accept", 2, &acceptEnrollment{SessionID: "e6", SessionExpires: exp, Device: Device{ID: "d6", Status: DeviceActive, CertificateSerial: "a6", CertificateNotAfter: na}, Attestation: withCert("d6", "a6", nb, na)}),
		entry(7, "renewal.accept", 2, &acceptRenewal{SessionID: "r7", SessionExpires: exp, Attestation: withCert("d6", "a7", nb, na), NotAfter: na}),
		entry(8, "enrollment.accept", 1, &acceptEnrollment{SessionID: "e8", SessionExpires: exp, Device: Device{ID: "d8", Status: DeviceActive, CertificateSerial: "a8"}, Attestation: withCert("d8", "a8", nb, na)}),
		entry(9, "renewal.accept", 1, &acceptRenewal{SessionID: "r9", SessionExpires: exp, Attestation: withCert("d8", "a9", nb, na), NotAfter: na}),
		// A refusal has no certificate.
		entry(10, "attestation.reject", 1, &rejectAttestation{SessionID: "x10", SessionExpires: exp, Attestation: withCert("d8", "", nb, na)}),
	}
	open := func() *fsm {
		f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.close() })
		return f
	}
	f := open()
	for i, res := range f.ApplyBatch(log) {
		err := res.(applyResult).Err
		switch i + 1 {
		case 3, 4, 5:
			if !errors.Is(err, ErrCertificateValidity) {
				t.Errorf("entry %d: %v, want ErrCertificateValidity", i+1, err)
			}
		default:
			if err != nil {
				t.Errorf("entry %d: %v", i+1, err)
			}
		}
	}
	if _, err := f.device("d3"); !errors.Is(err, ErrNotFound) {
		t.Fatal("a refused v3 enrollment wrote its device")
	}
	validity := func(id uint64) (time.Time, time.Time) {
		t.Helper()
		r, err := f.attestation(id)
		if err != nil {
			t.Fatal(err)
		}
		return r.CertificateNotBefore, r.CertificateNotAfter
	}
	for id, want := range map[uint64][2]time.Time{
		1: {nb, na}, 2: {nb.Add(time.Hour), na.Add(time.Hour)},
		6: {}, 7: {}, 8: {}, 9: {}, 10: {},
	} {
		if b, a := validity(id); !b.Equal(want[0]) || !a.Equal(want[1]) {
			t.Errorf("record %d validity %v..%v, want %v..%v", id, b, a, want[0], want[1])
		}
	}
	if d, _ := f.device("d1"); d.CertificateSerial != "a2" || !d.CertificateNotAfter.Equal(na.Add(time.Hour)) {
		t.Fatalf("device d1 %s until %v", d.CertificateSerial, d.CertificateNotAfter)
	}

	// Another replica applying the same log, and one restored from a
	// snapshot, hold the same state.
	want, err := f.stateHash()
	if err != nil {
		t.Fatal(err)
	}
	g := open()
	g.ApplyBatch(log)
	if got, _ := g.stateHash(); got != want {
		t.Fatalf("replica hash %s, want %s", got, want)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	h := open()
	if err := h.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.stateHash(); got != want {
		t.Fatalf("restored hash %s, want %s", got, want)
	}
	if r, err := h.attestation(1); err != nil || !r.CertificateNotBefore.Equal(nb) || !r.CertificateNotAfter.Equal(na) {
		t.Fatalf("restored record 1: %v..%v %v", r.CertificateNotBefore, r.CertificateNotAfter, err)
	}
}

// CommitEnrollment and CommitRenewal propose v3 for a record that carries
// the validity (kept) and v2 for one without (the fallback while a member
// does not apply v3).
func TestCommitChoosesAcceptVersion(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	nb := time.Now().UTC().Truncate(time.Second)
	na := nb.Add(time.Hour)
	r := record("dev-v", OutcomeAccepted)
	r.CertificateSerial, r.CertificateNotBefore, r.CertificateNotAfter = "c1", nb, na
	id1, err := n.CommitEnrollment(ctx, "s1", time.Now().Add(time.Minute), Device{ID: "dev-v", Status: DeviceActive, CertificateSerial: "c1", CertificateNotAfter: na}, r)
	if err != nil {
		t.Fatal(err)
	}
	r.CertificateSerial, r.CertificateNotBefore, r.CertificateNotAfter = "c2", time.Time{}, time.Time{}
	id2, err := n.CommitRenewal(ctx, "s2", time.Now().Add(time.Minute), r, na)
	if err != nil {
		t.Fatal(err)
	}
	r.CertificateSerial, r.CertificateNotBefore, r.CertificateNotAfter = "c3", nb, na.Add(time.Minute)
	id3, err := n.CommitRenewal(ctx, "s3", time.Now().Add(time.Minute), r, na.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// A v3 renewal whose record disagrees with the device's notAfter is refused.
	r.CertificateSerial = "c4"
	if _, err := n.CommitRenewal(ctx, "s4", time.Now().Add(time.Minute), r, na); !errors.Is(err, ErrCertificateValidity) {
		t.Fatalf("mismatched renewal: %v", err)
	}
	for id, want := range map[uint64][2]time.Time{id1: {nb, na}, id2: {}, id3: {nb, na.Add(time.Minute)}} {
		rec, err := n.Attestation(id)
		if err != nil || !rec.CertificateNotBefore.Equal(want[0]) || !rec.CertificateNotAfter.Equal(want[1]) {
			t.Errorf("record %d: %v..%v (%v), want %v..%v", id, rec.CertificateNotBefore, rec.CertificateNotAfter, err, want[0], want[1])
		}
	}
}
