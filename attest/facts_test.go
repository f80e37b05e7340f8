package attest

import (
	"crypto"
	_ "crypto/sha1"
	_ "crypto/sha512"
	"strings"
	"testing"
	"unicode/utf16"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// forgeSCRTM returns the reference log with its S-CRTM version event's
// digests (every bank) replaced by those of version: what a device that
// booted that firmware measured, with the log still claiming the real one.
func forgeSCRTM(t testing.TB, raw []byte, version string) []byte {
	t.Helper()
	l, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte{}
	for _, c := range utf16.Encode([]rune(version + "\x00")) {
		data = append(data, byte(c), byte(c>>8))
	}
	out := raw
	for _, e := range l.Events {
		if e.TypeCode != evSCRTMVersion {
			continue
		}
		for _, bd := range e.Digests {
			old := bd.Digest
			h := bankHashes[bd.Bank].New()
			h.Write(data)
			if out, err = testvectors.ReplaceDigest(out, old, h.Sum(nil)); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	t.Fatal("no S-CRTM version event")
	return nil
}

func quoteOf(l *EventLog, bank string) []goattest.PCR {
	var q []goattest.PCR
	for i, d := range l.Replay(bank) {
		q = append(q, goattest.PCR{Index: i, Digest: d, DigestAlg: bankHashes[bank]})
	}
	return q
}

// Issue 9, item 2: a log that keeps the measured digests of "EVIL Virtual
// Firmware v0" but states "GCE Virtual Firmware v1" replays to the quote,
// yet its version is not evidence: the fact is dropped with a Problem, and
// firmware_version fails saying why. The unforged log, the control, passes.
func TestFactsOnlyFromDataBoundEvents(t *testing.T) {
	raw := readVector(t, ubuntuLog)
	p := &Policy{Groups: []Group{{Name: "edge", Mode: ModeAuto, Require: Requirements{FirmwareVersions: []string{"GCE Virtual Firmware v1"}}}}}
	for _, bank := range []string{"sha1", "sha256", "sha384"} {
		t.Run(bank, func(t *testing.T) {
			good, err := ParseEventLog(raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := good.Verify(quoteOf(good, bank)); err != nil {
				t.Fatal(err)
			}
			in := &Input{PCRs: map[string]map[int][]byte{bank: good.Replay(bank)}, Log: good}
			if d := p.Evaluate(in); !d.Passed {
				t.Fatalf("control: %v", d.Err())
			}

			forged, err := ParseEventLog(forgeSCRTM(t, raw, "EVIL Virtual Firmware v0"))
			if err != nil {
				t.Fatal(err)
			}
			if err := forged.Verify(quoteOf(forged, bank)); err != nil {
				t.Fatalf("the forged log replays to its own quote: %v", err)
			}
			if forged.Facts.SCRTMVersion != "" {
				t.Fatalf("S-CRTM version %q taken from an event whose digest is not over it", forged.Facts.SCRTMVersion)
			}
			if !strings.Contains(strings.Join(forged.Problems, "\n"), "digest is not the hash of its data") {
				t.Fatalf("problems %q", forged.Problems)
			}
			in = &Input{PCRs: map[string]map[int][]byte{bank: forged.Replay(bank)}, Log: forged}
			d := p.Evaluate(in)
			if d.Passed {
				t.Fatal("firmware_version passed on a forged S-CRTM version")
			}
			if err := d.Err(); !strings.Contains(err.Error(), RuleFirmware) {
				t.Fatalf("decision %v", err)
			}
		})
	}
}

// Facts come only from the quoted bank: boot applications carry that
// bank's digest alone, and a quote that does not cover PCR 7 or PCR 0
// leaves no Secure Boot or firmware fact to judge.
func TestFactsOnlyFromQuotedBankAndPCRs(t *testing.T) {
	l, err := ParseEventLog(readVector(t, ubuntuLog))
	if err != nil {
		t.Fatal(err)
	}
	var q []goattest.PCR
	for _, p := range quoteOf(l, "sha1") {
		if p.Index == 4 {
			q = append(q, p)
		}
	}
	if err := l.Verify(q); err != nil {
		t.Fatal(err)
	}
	if len(l.Facts.BootApps) == 0 {
		t.Fatal("no boot applications from a PCR 4 quote")
	}
	for _, app := range l.Facts.BootApps {
		if len(app.Digests) != 1 || len(app.Digests["sha1"]) != 2*crypto.SHA1.Size() {
			t.Fatalf("boot application digests %v from a sha1 quote", app.Digests)
		}
	}
	if _, ok := l.Facts.Separators[4]; l.Facts.SecureBoot != nil || l.Facts.SCRTMVersion != "" || len(l.Facts.Separators) != 1 || !ok {
		t.Fatalf("facts from unquoted PCRs: %+v", l.Facts)
	}
}

// Issue 9, item 1: a group whose rules read PCRs the quote did not cover
// is refused by its own rule naming them; with them covered it passes.
func TestPolicyQuoteCoverage(t *testing.T) {
	ref := inputFromLog(t, readVector(t, ubuntuLog))
	ref.PCRs = map[string]map[int][]byte{"sha256": ref.Log.Replay("sha256")}
	if err := ref.Log.Verify(quoteOf(ref.Log, "sha256")); err != nil {
		t.Fatal(err)
	}
	p := &Policy{Groups: []Group{Capture("edge", ref)}}
	if d := p.Evaluate(ref); !d.Passed {
		t.Fatalf("control: %v", d.Err())
	}
	for _, tc := range []struct {
		name    string
		quoted  map[string]map[int][]byte
		missing []string
	}{
		{"an empty SHA-1 quote", map[string]map[int][]byte{}, []string{"PCR 4 (sha256, rule pcrs)", "PCR 7 (quoted bank, rule secure_boot)", "PCR 0 (quoted bank, rule firmware_version)"}},
		{"PCR 7 not quoted", func() map[string]map[int][]byte {
			m := map[int][]byte{}
			for i, d := range ref.PCRs["sha256"] {
				if i != 7 {
					m[i] = d
				}
			}
			return map[string]map[int][]byte{"sha256": m}
		}(), []string{"PCR 7 (sha256, rule pcrs)", "PCR 7 (quoted bank, rule secure_boot)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := *ref
			in.PCRs = tc.quoted
			d := p.Evaluate(&in)
			if d.Passed {
				t.Fatal("passed")
			}
			var cov *Outcome
			for i, o := range d.Outcomes {
				if o.Rule == RuleQuoteCoverage {
					cov = &d.Outcomes[i]
				}
			}
			if cov == nil || cov.Passed {
				t.Fatalf("no failing %s outcome: %+v", RuleQuoteCoverage, d.Outcomes)
			}
			for _, m := range tc.missing {
				if !strings.Contains(cov.Detail, m) {
					t.Errorf("coverage %q does not name %s", cov.Detail, m)
				}
			}
		})
	}
}

// A log of many events whose digests are not over their data names a few
// and counts the rest: a device cannot bloat its record with Problems.
func TestUnboundEventProblemsBounded(t *testing.T) {
	l, err := ParseEventLog(readVector(t, ubuntuLog))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		// Appended to the log's bytes: "claimed" and a zero digest.
		at := uint32(len(l.raw))
		l.raw = append(l.raw, "claimed"...)
		l.raw = append(l.raw, make([]byte, 32)...)
		l.evs = append(l.evs, event{pcr: 8, typ: evAction, data: at, size: 7})
		for j := range l.Banks {
			d := uint32(0)
			if l.Banks[j] == "sha256" {
				d = at + 7
			}
			l.dig = append(l.dig, d)
		}
		l.Events = append(l.Events, LogEvent{Number: 1000 + i, PCR: 8})
	}
	l.bindFacts("sha256", map[int]bool{8: true})
	if len(l.Problems) != 9 || !strings.Contains(l.Problems[8], "92 more events") {
		t.Fatalf("%d problems: %q", len(l.Problems), l.Problems)
	}
	if len(l.Facts.Actions) != 0 {
		t.Fatalf("actions from unbound events: %q", l.Facts.Actions)
	}
}
