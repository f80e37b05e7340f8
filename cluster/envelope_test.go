package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// envelopeRecord is an accepted record with the certificate's validity
// (what v3 and v4 require) and both blobs.
func envelopeRecord(dev, serial string, nb, na time.Time) AttestationRecord {
	r := record(dev, OutcomeAccepted)
	r.CertificateSerial, r.CertificateNotBefore, r.CertificateNotAfter = serial, nb, na
	r.Checks = []Check{{Name: "quote", Passed: true}}
	r.Policy = &attest.Decision{PolicyVersion: 1, Group: "default", Mode: "auto"}
	r.RawEvidenceGzip = bytes.Repeat([]byte{0x1f, 0x8b, 1, 2, 3}, 700)
	r.EventLogGzip = bytes.Repeat([]byte{0x1f, 0x8b, 9, 8}, 9000)
	return r
}

// enrollment.accept and renewal.accept v4 (the binary envelope) apply
// exactly as v3 (JSON): the same payloads at the same time reach the same
// state hash, blobs included, and the entries are framed as the envelope,
// the evidence not base64 in JSON.
func TestEnvelopeAppliesAsV3(t *testing.T) {
	for _, c := range EnvelopeCommands {
		if !slices.Contains(Commands(), c) {
			t.Fatalf("%s is not in Commands %v", c, Commands())
		}
	}
	nb, na := t0.Add(-time.Minute), t0.Add(24*time.Hour)
	exp, at := t0.Add(time.Minute), t0.Add(time.Second+123456789)
	enr := func() *acceptEnrollment {
		return &acceptEnrollment{SessionID: "e1", SessionExpires: exp, Flags: []Flag{{Name: FlagReprovisioned, Detail: "x"}},
			Device:      Device{ID: "d1", Status: DeviceActive, CertificateSerial: "a1", CertificateNotAfter: na},
			Attestation: envelopeRecord("d1", "a1", nb, na)}
	}
	ren := func() *acceptRenewal {
		return &acceptRenewal{SessionID: "r1", SessionExpires: exp, Attestation: envelopeRecord("d1", "a2", nb, na.Add(time.Hour)), NotAfter: na.Add(time.Hour), Group: "default", Mode: "auto", PolicyVersion: 1}
	}
	jsonLog := func() []*raft.Log {
		e, err := encodeCommand("enrollment.accept", 3, at, &acceptEnrollmentV3{*enr()})
		if err != nil {
			t.Fatal(err)
		}
		r, err := encodeCommand("renewal.accept", 3, at, &acceptRenewalV3{*ren()})
		if err != nil {
			t.Fatal(err)
		}
		return []*raft.Log{{Index: 1, Type: raft.LogCommand, Data: e}, {Index: 2, Type: raft.LogCommand, Data: r}}
	}
	e, err := encodeEnvelope("enrollment.accept", 4, at, &acceptEnrollmentV3{*enr()})
	if err != nil {
		t.Fatal(err)
	}
	r, err := encodeEnvelope("renewal.accept", 4, at, &acceptRenewalV3{*ren()})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{e, r} {
		if !IsEnvelope(b) || !bytes.Contains(b, enr().Attestation.EventLogGzip) && !bytes.Contains(b, ren().Attestation.EventLogGzip) {
			t.Fatal("the envelope does not carry the event log as raw bytes")
		}
	}
	binLog := []*raft.Log{{Index: 1, Type: raft.LogCommand, Data: e}, {Index: 2, Type: raft.LogCommand, Data: r}}

	open := func() *fsm {
		f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.close() })
		return f
	}
	hash := func(log []*raft.Log) (string, *fsm) {
		f := open()
		for i, res := range f.ApplyBatch(log) {
			if err := res.(applyResult).Err; err != nil {
				t.Fatalf("entry %d: %v", i+1, err)
			}
		}
		h, err := f.stateHash()
		if err != nil {
			t.Fatal(err)
		}
		return h, f
	}
	want, _ := hash(jsonLog())
	got, f := hash(binLog)
	if got != want {
		t.Fatalf("v4 state hash %s, v3 %s", got, want)
	}
	for id, blob := range map[uint64][]byte{1: enr().Attestation.EventLogGzip, 2: ren().Attestation.EventLogGzip} {
		var ev, raw []byte
		_ = f.view(func(tx *bolt.Tx) error {
			ev, raw = bytes.Clone(tx.Bucket(bEvidence).Get(be64(id))), bytes.Clone(tx.Bucket(bRawEvidence).Get(be64(id)))
			return nil
		})
		if !bytes.Equal(ev, blob) || !bytes.Equal(raw, enr().Attestation.RawEvidenceGzip) {
			t.Errorf("record %d: stored event log %d bytes, raw evidence %d bytes", id, len(ev), len(raw))
		}
	}
	// v4 checks what v3 checks: a validity that is not the device's.
	bad := enr()
	bad.SessionID, bad.Device.ID, bad.Attestation.DeviceID = "e9", "d9", "d9"
	bad.Device.CertificateNotAfter = na.Add(time.Second)
	b, err := encodeEnvelope("enrollment.accept", 4, at, &acceptEnrollmentV3{*bad})
	if err != nil {
		t.Fatal(err)
	}
	if res := f.ApplyBatch([]*raft.Log{{Index: 3, Type: raft.LogCommand, Data: b}})[0].(applyResult); !errors.Is(res.Err, ErrCertificateValidity) {
		t.Fatalf("v4 with a mismatched validity: %v", res.Err)
	}
}

// validEnvelope is an enrollment.accept v4 entry.
func validEnvelope(t testing.TB) []byte {
	nb, na := t0.Add(-time.Minute), t0.Add(time.Hour)
	b, err := encodeEnvelope("enrollment.accept", 4, t0, &acceptEnrollmentV3{acceptEnrollment{SessionID: "s", SessionExpires: t0.Add(time.Minute),
		Device: Device{ID: "d", Status: DeviceActive, CertificateSerial: "c", CertificateNotAfter: na}, Attestation: envelopeRecord("d", "c", nb, na)}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// envelopeOf frames the given fields as the envelope does, right or wrong.
func envelopeOf(typ string, version uint64, payload, raw, evlog []byte) []byte {
	b := append(envelopeMagic[:], make([]byte, 8)...)
	b = appendBytes(b, []byte(typ))
	b = binary.AppendUvarint(b, version)
	b = appendBytes(b, payload)
	b = appendBytes(b, raw)
	return appendBytes(b, evlog)
}

// A malformed envelope, a JSON-only command in the envelope and a v4
// accept in JSON are refused with ErrUnknownCommand naming what is wrong:
// by decodeCommand, by the FSM (which calls its fatal hook rather than
// skip the entry), and by ApplyForwarded before the log.
func TestEnvelopeMalformedRefused(t *testing.T) {
	good := validEnvelope(t)
	c, _, err := decodeCommand(good)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte(c.Payload)
	withBlob := bytes.Replace(payload, []byte(`"outcome":"accepted"`), []byte(`"outcome":"accepted","event_log_gzip":"AAAA"`), 1)
	if bytes.Equal(withBlob, payload) {
		t.Fatal("test payload has no outcome field")
	}
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"header only":         {good[:10], "shorter than its header"},
		"truncated":           {good[:len(good)-1], "exceeds"},
		"trailing bytes":      {append(bytes.Clone(good), 0), "after the event log"},
		"bad varint":          {append(append(envelopeMagic[:], make([]byte, 8)...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), "varint"},
		"huge length":         {append(append(envelopeMagic[:], make([]byte, 8)...), binary.AppendUvarint(nil, 1<<62)...), "exceeds"},
		"JSON-only command":   {envelopeOf("policy.apply", 1, []byte(`{}`), nil, nil), `binary envelope of type "policy.apply" version 1`},
		"v3 in the envelope":  {envelopeOf("enrollment.accept", 3, payload, nil, nil), "version 3"},
		"huge version":        {envelopeOf("enrollment.accept", 1<<40, payload, nil, nil), "version"},
		"payload not JSON":    {envelopeOf("enrollment.accept", 4, []byte(`{"session_id":`), nil, nil), "payload"},
		"blob in the payload": {envelopeOf("enrollment.accept", 4, withBlob, nil, []byte{1}), "carries a blob"},
		"v4 in JSON":          {[]byte(`{"type":"enrollment.accept","version":4,"time":"2026-01-01T00:00:00Z","payload":{}}`), "version 4"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := decodeCommand(tc.b)
			if !errors.Is(err, ErrUnknownCommand) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want ErrUnknownCommand saying %q", err, tc.want)
			}
			// The FSM halts at the entry (never skips it, never applies
			// it): the applied index stays before it.
			f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
			if err != nil {
				t.Fatal(err)
			}
			defer f.close()
			res := f.ApplyBatch([]*raft.Log{{Index: 1, Type: raft.LogCommand, Data: tc.b}})[0].(applyResult)
			h := f.halted.Load()
			if !errors.Is(res.Err, ErrHalted) || h == nil || !strings.Contains(h.String(), tc.want) {
				t.Fatalf("FSM: halted %v, result %v", h, res.Err)
			}
			if f.last.Load() != 0 {
				t.Fatalf("applied index %d", f.last.Load())
			}
			if _, err := f.attestation(1); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a refused entry stored a record: %v", err)
			}
		})
	}
	n := openNode(t, t.TempDir(), WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	before := n.raft.LastIndex()
	if _, err := n.ApplyForwarded(context.Background(), good[:len(good)-1]); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("ApplyForwarded of a truncated envelope: %v", err)
	}
	if after := n.raft.LastIndex(); after != before {
		t.Fatalf("the log moved from %d to %d", before, after)
	}
}

// CommitEnrollment and CommitRenewal frame a record with its validity in
// the envelope (v4) when WithEnvelope says every member applies it, as
// JSON v3 when it says not; a forwarded envelope is stamped with the
// leader's clock; the evidence reads back the same either way.
func TestCommitUsesEnvelopeWhenMembersApply(t *testing.T) {
	var members bool
	leaderNow := time.Now().UTC().Add(time.Hour).Truncate(time.Second)
	n := openNode(t, t.TempDir(), WithEnvelope(func(context.Context) bool { return members }), WithClock(func() time.Time { return leaderNow }),
		WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	ctx := context.Background()
	nb := time.Now().UTC().Truncate(time.Second)
	na := nb.Add(time.Hour)
	entry := func(idx uint64) []byte {
		t.Helper()
		var l raft.Log
		if err := n.store.GetLog(idx, &l); err != nil {
			t.Fatal(err)
		}
		return l.Data
	}
	for _, tc := range []struct {
		members bool
		want    string
	}{{false, "/3"}, {true, "/4"}} {
		members = tc.members
		dev := "dev" + tc.want[1:]
		r := envelopeRecord(dev, "c1"+dev, nb, na)
		id, err := n.CommitEnrollment(ctx, "s1"+dev, time.Now().Add(2*time.Hour), Device{ID: dev, Status: DeviceActive, CertificateSerial: "c1" + dev, CertificateNotAfter: na}, r)
		if err != nil {
			t.Fatal(err)
		}
		r.CertificateSerial = "c2" + dev
		id2, err := n.CommitRenewal(ctx, "s2"+dev, time.Now().Add(2*time.Hour), r, na)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []uint64{id, id2} {
			name, err := commandName(entry(i))
			if err != nil || !strings.HasSuffix(name, tc.want) || IsEnvelope(entry(i)) != tc.members {
				t.Errorf("members apply v4: %v; entry %d is %s (%v), want version %s", tc.members, i, name, err, tc.want)
			}
			if ev, err := n.EventLog(i); err != nil || !bytes.Equal(ev, r.EventLogGzip) {
				t.Errorf("entry %d: event log %d bytes (%v)", i, len(ev), err)
			}
			if raw, err := n.RawEvidence(i); err != nil || !bytes.Equal(raw, r.RawEvidenceGzip) {
				t.Errorf("entry %d: raw evidence %d bytes (%v)", i, len(raw), err)
			}
		}
	}
	// A follower's envelope, forwarded: the leader's time replaces its own.
	members = true
	c, o, err := decodeEnvelope(validEnvelope(t))
	if err != nil {
		t.Fatal(err)
	}
	enr := o.(*acceptEnrollmentV3)
	enr.SessionExpires = leaderNow.Add(time.Minute)
	enr.Attestation.CertificateNotBefore, enr.Attestation.CertificateNotAfter, enr.Device.CertificateNotAfter = nb, na, na
	b, err := encodeEnvelope(c.Type, c.Version, time.Now().Add(-time.Hour), enr) // a follower whose clock is behind
	if err != nil {
		t.Fatal(err)
	}
	res, err := n.ApplyForwarded(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := decodeEnvelope(entry(res.Index))
	if err != nil || !got.Time.Equal(leaderNow) {
		t.Fatalf("forwarded envelope committed with time %v (%v), want the leader's %v", got.Time, err, leaderNow)
	}
}

// The envelope decoder never panics, refuses what it cannot read with
// ErrUnknownCommand, and what it reads encodes back to an envelope that
// decodes to the same command and blobs.
func FuzzDecodeEnvelope(f *testing.F) {
	good := validEnvelope(f)
	f.Add(good)
	f.Add(good[:20])
	f.Add(envelopeOf("renewal.accept", 4, []byte(`{"attestation":{}}`), []byte{1}, nil))
	f.Add(envelopeOf("enrollment.accept", 4, []byte(`null`), nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, o, err := decodeCommand(b)
		if err != nil {
			if !errors.Is(err, ErrUnknownCommand) {
				t.Fatalf("error not ErrUnknownCommand: %v", err)
			}
			return
		}
		rc, ok := o.(carriesRecord)
		if !IsEnvelope(b) || !ok {
			return // JSON: decodeCommand's JSON path, fuzzed elsewhere
		}
		rec := *rc.record()
		again, err := encodeEnvelope(c.Type, c.Version, c.Time, rc)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		c2, o2, err := decodeCommand(again)
		if err != nil {
			t.Fatalf("decode of the re-encoded envelope: %v", err)
		}
		rec2 := *o2.(carriesRecord).record()
		if c2.Type != c.Type || c2.Version != c.Version || !c2.Time.Equal(c.Time) ||
			!bytes.Equal(rec2.RawEvidenceGzip, rec.RawEvidenceGzip) || !bytes.Equal(rec2.EventLogGzip, rec.EventLogGzip) {
			t.Fatalf("round trip changed the command: %+v vs %+v", c2, c)
		}
	})
}

// loadtestAccept is an enrollment.accept as the load test commits it: the
// 105-event log's gzip (38 KB stored: it barely deflates), 3 KB of raw
// evidence, 24 PCRs, ten checks and a decision.
func loadtestAccept() *acceptEnrollmentV3 {
	nb, na := t0.Add(-time.Minute), t0.Add(720*time.Hour)
	r := record("d", OutcomeAccepted)
	r.CertificateSerial, r.CertificateNotBefore, r.CertificateNotAfter = "0123456789abcdef0123456789abcdef", nb, na
	fill := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*131) ^ seed ^ byte(i>>7)
		}
		return b
	}
	r.EventLogGzip, r.RawEvidenceGzip = fill(38300, 1), fill(3100, 2)
	for i := range 24 {
		r.Evidence.PCRs = append(r.Evidence.PCRs, PCRValue{Index: i, Digest: strings.Repeat("ab", 32)})
	}
	for _, c := range []string{"ek_chain", "ak", "activation", "nonce", "quote", "pcrs", "event_log", "certify", "csr", "policy"} {
		r.Checks = append(r.Checks, Check{Name: c, Passed: true, Detail: "ok"})
	}
	r.Policy = &attest.Decision{PolicyVersion: 1, Group: "default", Mode: "auto", Passed: true}
	return &acceptEnrollmentV3{acceptEnrollment{SessionID: "0123456789abcdef", SessionExpires: t0.Add(time.Minute),
		Device: Device{ID: "d", Status: DeviceActive, CertificateSerial: r.CertificateSerial, CertificateNotAfter: na}, Attestation: r}}
}

// What a replica spends decoding one enrollment entry, JSON v3 against the
// binary envelope v4 (each replica decodes each entry once, the leader
// twice when a follower forwarded it).
func BenchmarkDecodeAccept(b *testing.B) {
	v3, err := encodeCommand("enrollment.accept", 3, t0, loadtestAccept())
	if err != nil {
		b.Fatal(err)
	}
	v4, err := encodeEnvelope("enrollment.accept", 4, t0, loadtestAccept())
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{{"JSON-v3", v3}, {"envelope-v4", v4}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := decodeCommand(tc.b); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(tc.b)), "entry-bytes")
		})
	}
}

// The envelope path checks what every write checks before it proposes: a
// node whose disk is full refuses with ErrStorageFull and proposes nothing.
func TestEnvelopeRefusedWhileStorageFull(t *testing.T) {
	n := openNode(t, t.TempDir(), WithEnvelope(func(context.Context) bool { return true }),
		WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	nb := time.Now().UTC().Truncate(time.Second)
	r := envelopeRecord("dev-full", "c1", nb, nb.Add(time.Hour))
	last := n.raft.LastIndex()
	n.disk.setLog(syscall.ENOSPC)
	_, err := n.CommitEnrollment(context.Background(), "s-full", time.Now().Add(time.Hour), Device{ID: "dev-full", Status: DeviceActive, CertificateSerial: "c1", CertificateNotAfter: nb.Add(time.Hour)}, r)
	if !errors.Is(err, ErrStorageFull) {
		t.Fatalf("enrollment while the disk is full: %v, want ErrStorageFull", err)
	}
	if got := n.raft.LastIndex(); got != last {
		t.Fatalf("Raft log %d -> %d: a refused write was proposed", last, got)
	}
	n.disk.setLog(nil)
	if _, err := n.CommitEnrollment(context.Background(), "s-full", time.Now().Add(time.Hour), Device{ID: "dev-full", Status: DeviceActive, CertificateSerial: "c1", CertificateNotAfter: nb.Add(time.Hour)}, r); err != nil {
		t.Fatalf("after space returned: %v", err)
	}
}
