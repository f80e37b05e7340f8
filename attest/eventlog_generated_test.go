package attest

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/maphash"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// baseReplay replays the real log the generated ones derive from, with
// go-attestation's parser and the test's own replay: the reference the
// generated logs are checked against, independent of the own parser.
func baseReplay(t *testing.T) (map[string]map[int][]byte, map[string][][]byte) {
	t.Helper()
	raw, err := goattest.ParseEventLog(readVector(t, testvectors.GeneratedLogsBase))
	if err != nil {
		t.Fatal(err)
	}
	replays, pcr0 := map[string]map[int][]byte{}, map[string][][]byte{}
	for _, a := range raw.Algs {
		h, _ := tpm2HashAlg(uint16(a))
		bank := BankName(h)
		events := raw.Events(a)
		replays[bank] = naiveReplay(events, h)
		for _, e := range events {
			if e.Index == 0 && e.Type != evNoAction {
				pcr0[bank] = append(pcr0[bank], e.Digest)
			}
		}
	}
	if len(replays) != 3 {
		t.Fatalf("base log banks: %v", raw.Algs)
	}
	return replays, pcr0
}

func sha256Quote(pcrs map[int][]byte) []goattest.PCR {
	var q []goattest.PCR
	for i, d := range pcrs {
		q = append(q, goattest.PCR{Index: i, Digest: d, DigestAlg: crypto.SHA256})
	}
	return q
}

// The generated logs in testvectors are what testvectors.GeneratedLogs
// makes of the real log they name (SOURCES.tsv says so).
func TestGeneratedLogsReproducible(t *testing.T) {
	logs, err := testvectors.GeneratedLogs(readVector(t, testvectors.GeneratedLogsBase))
	if err != nil {
		t.Fatal(err)
	}
	for rel, b := range logs {
		if !bytes.Equal(readVector(t, rel), b) {
			t.Errorf("%s differs from what testvectors.GeneratedLogs makes: run go run ./testvectors/mkeventlogs", rel)
		}
	}
}

// A log with an SM3_256 bank: go-attestation refuses it whole; the own
// parser skips the SM3 digests by their declared size, says the bank is not
// replayed, and replays the other three banks to the real log's values.
func TestUnknownAlgorithmBank(t *testing.T) {
	b := readVector(t, "eventlogs/generated/sm3-bank.bin")
	if _, err := goattest.ParseEventLog(b); err == nil || !strings.Contains(err.Error(), "unknown algorithm") {
		t.Fatalf("go-attestation: %v, want its unknown-algorithm refusal", err)
	}
	l, err := ParseEventLog(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"sha1", "sha256", "sha384"}; !reflect.DeepEqual(l.Banks, want) {
		t.Fatalf("banks %v, want %v", l.Banks, want)
	}
	sm3 := l.BankInfo[1]
	if sm3.Name != "sm3_256" || sm3.AlgID != 0x0012 || sm3.DigestSize != 32 || sm3.Replayable || !strings.Contains(sm3.Note, "skipped") {
		t.Fatalf("SM3 bank: %+v", sm3)
	}
	if l.Replay("sm3_256") != nil {
		t.Fatal("the SM3 bank was replayed")
	}
	want, _ := baseReplay(t)
	for bank, pcrs := range want {
		if got := l.Replay(bank); !reflect.DeepEqual(got, pcrs) {
			t.Errorf("%s: replay %x, want %x", bank, got, pcrs)
		}
	}
	// Verified against a SHA-256 quote, the facts are the real log's.
	if err := l.Verify(sha256Quote(want["sha256"])); err != nil {
		t.Fatal(err)
	}
	base, err := ParseEventLog(readVector(t, testvectors.GeneratedLogsBase))
	if err != nil {
		t.Fatal(err)
	}
	if err := base.Verify(sha256Quote(want["sha256"])); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l.Facts, base.Facts) || len(l.Events) != len(base.Events) {
		t.Fatalf("facts %+v, want %+v", l.Facts, base.Facts)
	}
}

// StartupLocality 3 starts PCR 0 at 0x00..03; StartupLocality 4 with the
// H-CRTM event starts it at 0x00..04 extended by the H-CRTM digest. Every
// other PCR replays as in the real log, and the S-CRTM version after the
// H-CRTM measurement is still the firmware's.
func TestStartupLocalityAndHCRTM(t *testing.T) {
	want, pcr0 := baseReplay(t)
	for _, tc := range []struct {
		file     string
		locality byte
		hcrtm    bool
	}{{"startup-locality3.bin", 3, false}, {"hcrtm-locality4.bin", 4, true}} {
		t.Run(tc.file, func(t *testing.T) {
			l, err := ParseEventLog(readVector(t, "eventlogs/generated/"+tc.file))
			if err != nil {
				t.Fatal(err)
			}
			for bank, pcrs := range want {
				h := bankHashes[bank]
				v := make([]byte, h.Size())
				v[len(v)-1] = tc.locality
				ext := func(d []byte) {
					hh := h.New()
					hh.Write(v)
					hh.Write(d)
					v = hh.Sum(nil)
				}
				if tc.hcrtm {
					hh := h.New()
					hh.Write(testvectors.HCRTMImage)
					ext(hh.Sum(nil))
				}
				for _, d := range pcr0[bank] {
					ext(d)
				}
				got := l.Replay(bank)
				if !bytes.Equal(got[0], v) {
					t.Errorf("%s PCR 0: %x, want %x", bank, got[0], v)
				}
				for i, d := range pcrs {
					if i != 0 && !bytes.Equal(got[i], d) {
						t.Errorf("%s PCR %d: %x, want %x", bank, i, got[i], d)
					}
				}
			}
			quote := sha256Quote(l.Replay("sha256"))
			if err := l.Verify(quote); err != nil {
				t.Fatal(err)
			}
			if l.Facts.StartupLocality != int(tc.locality) || l.Facts.SCRTMVersion != "GCE Virtual Firmware v1" {
				t.Fatalf("facts: locality %d, S-CRTM version %q", l.Facts.StartupLocality, l.Facts.SCRTMVersion)
			}
			// The real log's PCR 0 (from locality 0) is not this one.
			if err := l.Verify(sha256Quote(want["sha256"])); !errors.Is(err, ErrEventLogInvalid) {
				t.Fatalf("verified against the locality-0 PCR 0: %v", err)
			}
		})
	}
}

// An H-CRTM or StartupLocality event out of place is refused, naming it.
func TestHCRTMOutOfPlaceRefused(t *testing.T) {
	banks := []testvectors.LogBank{{ID: 0x000b, Size: 32}}
	d := func(b []byte) map[uint16][]byte { return map[uint16][]byte{0x000b: b} }
	zero := make([]byte, 32)
	loc := func(n byte) testvectors.LogEvent {
		return testvectors.LogEvent{PCR: 0, Type: evNoAction, Data: append([]byte("StartupLocality\x00"), n), Digests: d(zero)}
	}
	hcrtm := testvectors.LogEvent{PCR: 0, Type: evEFIHCRTMEvent, Data: []byte("HCRTM"), Digests: d(bytes.Repeat([]byte{1}, 32))}
	scrtm := testvectors.LogEvent{PCR: 0, Type: evSCRTMContents, Data: []byte("x"), Digests: d(bytes.Repeat([]byte{2}, 32))}
	for name, tc := range map[string]struct {
		events []testvectors.LogEvent
		event  int // the one refused, counted from the Spec ID event (0)
		want   string
	}{
		"H-CRTM after a PCR 0 measurement":    {[]testvectors.LogEvent{scrtm, hcrtm}, 2, "an H-CRTM event after PCR 0 was measured"},
		"H-CRTM after StartupLocality 3":      {[]testvectors.LogEvent{loc(3), hcrtm}, 2, "an H-CRTM event after PCR 0 was measured, or after a StartupLocality other than 4"},
		"StartupLocality 0 after an H-CRTM":   {[]testvectors.LogEvent{hcrtm, loc(0)}, 2, "a StartupLocality after PCR 0 was measured"},
		"StartupLocality 2":                   {[]testvectors.LogEvent{loc(2), scrtm}, 1, "StartupLocality 2; the PC Client PFP defines 0, 3 and 4"},
		"second StartupLocality":              {[]testvectors.LogEvent{loc(3), loc(3), scrtm}, 2, "a StartupLocality after PCR 0 was measured or set"},
		"StartupLocality after a measurement": {[]testvectors.LogEvent{scrtm, loc(3)}, 2, "a StartupLocality after"},
		"PCR 24":                              {[]testvectors.LogEvent{scrtm, {PCR: 24, Type: evSeparator, Data: make([]byte, 4), Digests: d(zero)}}, 2, "extends PCR 24 (0x18), beyond PCR 23"},
	} {
		t.Run(name, func(t *testing.T) {
			log := testvectors.WriteAgileLog(banks, tc.events)
			_, err := ParseEventLog(log)
			var fe *LogFormatError
			if !errors.Is(err, ErrEventLogInvalid) || !errors.As(err, &fe) || fe.Event != tc.event || !strings.Contains(fe.Reason, tc.want) {
				t.Fatalf("err %v, want event %d: %q", err, tc.event, tc.want)
			}
			// The offset is where the refused event starts: after the
			// Spec ID event and the events before it (one SHA-256 digest each).
			at := 32 + int(binary.LittleEndian.Uint32(log[28:]))
			for _, e := range tc.events[:tc.event-1] {
				at += 4 + 4 + 4 + 2 + 32 + 4 + len(e.Data)
			}
			if fe.Offset != at {
				t.Fatalf("offset %d, want %d", fe.Offset, at)
			}
		})
	}
	// An H-CRTM event alone starts PCR 0 at locality 4.
	l, err := ParseEventLog(testvectors.WriteAgileLog(banks, []testvectors.LogEvent{hcrtm, scrtm}))
	if err != nil {
		t.Fatal(err)
	}
	v := make([]byte, 32)
	v[31] = 4
	for _, e := range []testvectors.LogEvent{hcrtm, scrtm} {
		hh := crypto.SHA256.New()
		hh.Write(v)
		hh.Write(e.Digests[0x000b])
		v = hh.Sum(nil)
	}
	if got := l.Replay("sha256")[0]; !bytes.Equal(got, v) || l.Facts.StartupLocality != 4 {
		t.Fatalf("PCR 0 %x, want %x; startup locality %d", got, v, l.Facts.StartupLocality)
	}
}

// A bank the Spec ID event declares but a measured event does not carry is
// reported and never replayed; a quote of it is refused, a quote of a bank
// the events carry verifies.
func TestBankWithoutDigestsNotReplayed(t *testing.T) {
	banks := []testvectors.LogBank{{ID: 0x0004, Size: 20}, {ID: 0x000b, Size: 32}}
	sep := testvectors.LogEvent{PCR: 7, Type: evSeparator, Data: make([]byte, 4), Digests: map[uint16][]byte{}}
	h1 := crypto.SHA1.New()
	h1.Write(sep.Data)
	sep.Digests[0x0004] = h1.Sum(nil)
	l, err := ParseEventLog(testvectors.WriteAgileLog(banks, []testvectors.LogEvent{sep}))
	if err != nil {
		t.Fatal(err)
	}
	if l.Replay("sha256") != nil || l.BankInfo[1].Replayable || l.BankInfo[1].Note != "event 1 carries no sha256 digest: the bank is not replayed" {
		t.Fatalf("sha256: %+v", l.BankInfo[1])
	}
	if err := l.Verify([]goattest.PCR{{Index: 7, Digest: make([]byte, 32), DigestAlg: crypto.SHA256}}); !errors.Is(err, ErrEventLogInvalid) || !strings.Contains(err.Error(), "cannot be replayed") {
		t.Fatalf("sha256 quote: %v", err)
	}
	v := make([]byte, 20)
	hh := crypto.SHA1.New()
	hh.Write(v)
	hh.Write(sep.Digests[0x0004])
	if err := l.Verify([]goattest.PCR{{Index: 7, Digest: hh.Sum(nil), DigestAlg: crypto.SHA1}}); err != nil {
		t.Fatal(err)
	}
}

// Every truncation of a log is refused with a *LogFormatError naming the
// event being read and an offset inside the log; one cut inside an event's
// header names that event and the field's offset.
func TestTruncatedLogRefusedWithEventAndOffset(t *testing.T) {
	b := readVector(t, "eventlogs/generated/sm3-bank.bin")
	l, err := ParseEventLog(b)
	if err != nil {
		t.Fatal(err)
	}
	for cut := 1; cut < len(b); cut += 7 {
		_, err := ParseEventLog(b[:cut])
		var fe *LogFormatError
		boundary := false // ends on an event boundary: a shorter, whole log
		for _, e := range l.evs {
			boundary = boundary || int(e.offset) == cut
		}
		if boundary {
			continue
		}
		if !errors.As(err, &fe) || !errors.Is(err, ErrEventLogInvalid) || fe.Offset > cut || fe.Offset < 0 {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
	e := l.evs[41]
	_, err = ParseEventLog(b[:e.offset+10])
	var fe *LogFormatError
	if !errors.As(err, &fe) || fe.Event != l.Events[41].Number || fe.Offset != int(e.offset)+8 {
		t.Fatalf("cut in event %d's header: %v (%+v)", l.Events[41].Number, err, fe)
	}
	// A digest of an algorithm the Spec ID event does not declare.
	bad := bytes.Clone(b)
	at := int(e.offset) + 12 // the first TPMT_HA's algorithm ID
	bad[at], bad[at+1] = 0x27, 0x00
	_, err = ParseEventLog(bad)
	if !errors.As(err, &fe) || fe.Event != l.Events[41].Number || fe.Offset != at || !strings.Contains(fe.Reason, "0x0027") {
		t.Fatalf("undeclared algorithm: %v", err)
	}
}

// The Spec ID event bounds the work a log can cause: at most 16 algorithms,
// none with empty digests, and no event with more digests than algorithms
// (else lookups grow with the square of the log's size).
func TestSpecIDBounds(t *testing.T) {
	many := make([]testvectors.LogBank, 17)
	for i := range many {
		many[i] = testvectors.LogBank{ID: uint16(0x100 + i), Size: 32}
	}
	sha256Bank := testvectors.LogBank{ID: 0x000b, Size: 32}
	sep := testvectors.LogEvent{PCR: 7, Type: evSeparator, Data: make([]byte, 4), Digests: map[uint16][]byte{0x000b: make([]byte, 32)}}
	for name, tc := range map[string]struct {
		log  []byte
		want string
	}{
		"18 algorithms": {testvectors.WriteAgileLog(append(many, sha256Bank), nil), "18 algorithms (1 to 16 expected)"},
		"empty digests": {testvectors.WriteAgileLog([]testvectors.LogBank{sha256Bank, {ID: 0x0012, Size: 0}}, nil), "sm3_256 with 0-byte digests"},
		"extra digests": {withDigestCount(t, testvectors.WriteAgileLog([]testvectors.LogBank{sha256Bank}, []testvectors.LogEvent{sep}), 2), "2 digests, more than the 1 algorithms"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseEventLog(tc.log)
			var fe *LogFormatError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// withDigestCount rewrites the last event's TPML_DIGEST_VALUES count (the
// log has one event after the Spec ID event).
func withDigestCount(t *testing.T, log []byte, n byte) []byte {
	t.Helper()
	specSize := int(log[28]) | int(log[29])<<8
	at := 32 + specSize + 8 // the event's count, after PCR and type
	out := bytes.Clone(log)
	out[at] = n
	return out
}

// A Windows boot configuration log (WBCL, go-attestation's GCE Shielded VM
// sample) parses, replays to the PCRs its source quoted (PCRs 11-14 of
// Windows' SIPA events included), and its SIPA events read as such.
func TestWBCL(t *testing.T) {
	var exp struct {
		PCRs map[string]map[string]string `json:"pcrs"`
	}
	if err := json.Unmarshal(readVector(t, "eventlogs/expected/go-attestation_windows_pcrs.json"), &exp); err != nil {
		t.Fatal(err)
	}
	var quote []goattest.PCR
	for idx, v := range exp.PCRs["sha1"] {
		i, _ := strconv.Atoi(idx)
		d, _ := hex.DecodeString(v)
		quote = append(quote, goattest.PCR{Index: i, Digest: d, DigestAlg: crypto.SHA1})
	}
	if len(quote) != 24 {
		t.Fatalf("%d PCRs", len(quote))
	}
	l, err := ParseEventLog(readVector(t, "eventlogs/go-attestation/windows_gcp_shielded_vm_wbcl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{11, 12, 13, 14} {
		if _, ok := l.Replay("sha1")[i]; !ok {
			t.Fatalf("PCR %d not replayed", i)
		}
	}
	if err := l.Verify(quote); err != nil {
		t.Fatal(err)
	}
	if l.Facts.SecureBoot == nil || !*l.Facts.SecureBoot {
		t.Fatalf("Secure Boot %v", l.Facts.SecureBoot)
	}
	tags := 0
	for _, e := range l.Events {
		if e.TypeCode == evEventTag {
			tags++
			if !strings.HasPrefix(e.Description, "SIPA ") || strings.ContainsAny(e.Description, "\n\r") {
				t.Errorf("event %d: %q", e.Number, e.Description)
			}
		}
	}
	if tags != 6 || !strings.Contains(l.Events[11].Description, "TrustBoundary{BootCounter=4, LoadedModuleAggregation{AuthenticodeHash=") ||
		!strings.Contains(l.Events[15].Description, "SystemRoot=\\Windows") {
		t.Fatalf("%d SIPA events; event 11 %q, 15 %q", tags, l.Events[11].Description, l.Events[15].Description)
	}
	// A PCR 12 value other than the quoted one is a mismatch.
	bad := slices.Clone(quote)
	for i := range bad {
		if bad[i].Index == 12 {
			bad[i].Digest = make([]byte, 20)
		}
	}
	l, _ = ParseEventLog(readVector(t, "eventlogs/go-attestation/windows_gcp_shielded_vm_wbcl"))
	var mm *PCRMismatch
	if err := l.Verify(bad); !errors.As(err, &mm) || len(mm.PCRs) != 1 || mm.PCRs[0].Index != 12 {
		t.Fatalf("PCR 12 changed: %v", err)
	}
}

// SIPA data is described within bounds: nesting stops at a depth, the
// text at a length, and data that is not SIPA is not described as such.
func TestDescribeSIPABounded(t *testing.T) {
	ev := func(typ uint32, data []byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, typ)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	nested := ev(0x00020002, []byte{7, 0, 0, 0, 0, 0, 0, 0})
	for range 10 {
		nested = ev(0x40010001, nested)
	}
	if d := describeSIPA(nested); strings.Count(d, "{") != sipaMaxDepth || strings.Contains(d, "BootCounter") {
		t.Fatalf("nested: %q", d)
	}
	var long []byte
	for range 500 {
		long = append(long, ev(0x00050001, []byte{0})...)
	}
	if d := describeSIPA(long); len(d) > sipaMaxDesc+len("SIPA …") {
		t.Fatalf("%d characters", len(d))
	}
	if d := describeSIPA([]byte("not a SIPA event at all")); d != "" {
		t.Fatalf("text described as %q", d)
	}
	if d := describeSIPA(ev(0x00070001, []byte{'a', 0, '\n', 0, 'b', 0})); d != "SIPA FilePath=a.b" {
		t.Fatalf("path: %q", d)
	}
}

// The Secure Boot memo returns a result only for exactly the events it was
// computed from: a log whose db data differs in one byte is decoded anew
// (and refused by its digest), and an entry under a colliding hash with
// other key bytes is a miss.
func TestSecureBootMemoExact(t *testing.T) {
	raw := readVector(t, ubuntuLog)
	l, err := ParseEventLog(raw)
	if err != nil || l.Facts.SecureBoot == nil {
		t.Fatalf("%v %v", err, l.Facts.SecureBoot)
	}
	j := l.bank("sha256")
	var key maphash.Hash
	key.SetSeed(secureBootMemo.seed)
	l.secureBootKey(j, func(b []byte) { key.Write(b) })
	secureBootMemo.put(key.Sum64(), []byte("other events"), secureBootResult{enabled: true, dbx: 12345})
	if l, _ = ParseEventLog(raw); l.Facts.SecureBoot == nil || *l.Facts.SecureBoot || l.Facts.DBXEntries == 12345 {
		t.Fatalf("colliding entry used: %+v", l.Facts)
	}
	for i, e := range l.evs {
		if e.pcr == 7 && l.Events[i].Description == "EFI variable db" {
			bad := bytes.Clone(raw)
			bad[e.data+e.size-1] ^= 1
			m, err := ParseEventLog(bad)
			if err != nil {
				t.Fatal(err)
			}
			if m.Facts.SecureBoot != nil || len(m.Problems) == 0 || !strings.Contains(m.Problems[0], "invalid digest") {
				t.Fatalf("db changed: %+v %q", m.Facts, m.Problems)
			}
			return
		}
	}
	t.Fatal("no db event")
}

// An event's digests are a JSON object of bank → hex, as before they were a
// map; they read back to the same digests, and a value that is not hex is
// refused.
func TestEventDigestsJSON(t *testing.T) {
	l, err := ParseEventLog(readVector(t, ubuntuLog))
	if err != nil {
		t.Fatal(err)
	}
	e := l.Events[0]
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Digests map[string]string `json:"digests"`
	}
	if err := json.Unmarshal(b, &m); err != nil || len(m.Digests) != 3 || m.Digests["sha256"] != hex.EncodeToString(e.Digests[1].Digest) || e.Digests[1].Bank != "sha256" {
		t.Fatalf("%s: %v %v", b, m.Digests, err)
	}
	var back LogEvent
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, e) {
		t.Fatalf("read back %+v, want %+v (%v)", back, e, err)
	}
	if err := json.Unmarshal([]byte(`{"digests":{"sha256":"zz"}}`), &back); err == nil {
		t.Fatal("non-hex digest accepted")
	}
}
