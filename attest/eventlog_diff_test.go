package attest

import (
	"bytes"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"
	tpm2new "github.com/google/go-tpm/tpm2"
)

// parseViaGoAttestation is the event-log path as it was before the own
// parser: go-attestation reads the wire format, one copy of the events per
// bank, and this package's checks, descriptions and facts run on that. It
// is kept (in tests only) as the reference the own parser is compared with.
func parseViaGoAttestation(b []byte) (*EventLog, error) {
	if len(b) == 0 {
		return nil, ErrEventLogInvalid
	}
	raw, err := goattest.ParseEventLog(b)
	if err != nil {
		return nil, errors.Join(ErrEventLogInvalid, err)
	}
	l := &EventLog{replayed: map[string]map[int][]byte{}, pcr0Init: -1}
	var perBank [][]goattest.Event
	for _, a := range raw.Algs {
		h, err := tpm2HashAlg(uint16(a))
		if err != nil {
			continue
		}
		name := BankName(h)
		if slices.Contains(l.Banks, name) {
			return nil, ErrEventLogInvalid
		}
		l.Banks = append(l.Banks, name)
		l.hashes = append(l.hashes, h)
		l.BankInfo = append(l.BankInfo, BankInfo{Name: name, AlgID: uint16(a), DigestSize: h.Size(), Replayable: true})
		perBank = append(perBank, raw.Events(a))
	}
	if len(l.Banks) == 0 {
		return nil, ErrEventLogInvalid
	}
	l.agile = len(raw.Algs) != 1 || raw.Algs[0] != goattest.HashSHA1 || (len(b) > 48 && bytes.HasPrefix(b[32:], []byte("Spec ID Event03")))
	// The events' data and digests are laid out in raw as the own parser
	// lays them; offset 0 means "no digest", so it is padding.
	l.raw = []byte{0}
	for i, e := range perBank[0] {
		ev := event{pcr: e.Index, typ: uint32(e.Type), data: uint32(len(l.raw)), size: uint32(len(e.Data))}
		l.raw = append(l.raw, e.Data...)
		l.evs = append(l.evs, ev)
		for j := range l.Banks {
			d := perBank[j][i].Digest
			if d == nil {
				l.dig = append(l.dig, 0)
				continue
			}
			if len(d) != l.hashes[j].Size() {
				return nil, ErrEventLogInvalid
			}
			l.dig = append(l.dig, uint32(len(l.raw)))
			l.raw = append(l.raw, d...)
		}
	}
	return l.finish()
}

// logVectors is every binary event log in testvectors.
func logVectors(t testing.TB) []string {
	var out []string
	err := filepath.WalkDir(filepath.Join(vectors, "eventlogs"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "expected" || d.Name() == "expected-yaml") {
			return filepath.SkipDir
		}
		if !d.IsDir() && !strings.HasSuffix(p, ".warn") && !strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, ".md") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 30 {
		t.Fatalf("only %d event logs found", len(out))
	}
	return out
}

// naiveReplay replays go-attestation's events for one bank, independently
// of this package: every measured event with a digest extends its PCR;
// PCR 0 starts at the locality of a StartupLocality event.
func naiveReplay(events []goattest.Event, h crypto.Hash) map[int][]byte {
	pcrs := map[int][]byte{}
	for _, e := range events {
		if e.Type == 3 {
			if e.Index == 0 && len(e.Data) == 17 && strings.HasPrefix(string(e.Data), "StartupLocality\x00") {
				v := make([]byte, h.Size())
				v[len(v)-1] = e.Data[16]
				pcrs[0] = v
			}
			continue
		}
		if e.Digest == nil {
			continue
		}
		cur, ok := pcrs[e.Index]
		if !ok {
			cur = make([]byte, h.Size())
		}
		hh := h.New()
		hh.Write(cur)
		hh.Write(e.Digest)
		pcrs[e.Index] = hh.Sum(nil)
	}
	return pcrs
}

// intendedRefusals are logs go-attestation parses and the own parser
// refuses, each with why that is intended.
var intendedRefusals = map[string]string{}

// unreplayedBanks are banks a log declares in its Spec ID event whose
// digests its measured events do not carry. The go-attestation path
// replayed them from the events that had one (nothing, here), so PCRs
// looked untouched; the own parser reports the bank as not replayable,
// with the first event that lacks it, and never replays it.
var unreplayedBanks = map[string][]string{
	"eventlogs/tpm2-tools/event-uefiaction.bin": {"sha384", "sha512"},
	"eventlogs/tpm2-tools/event-uefivar.bin":    {"sha384", "sha512"},
}

func tpm2HashAlg(id uint16) (crypto.Hash, error) {
	return tpm2new.TPMIAlgHash(id).Hash()
}

// On every log in testvectors where go-attestation succeeds, the own
// parser's events (PCR, type, data, every bank's digest), replay, facts,
// problems and verdicts against quotes of each bank equal the
// go-attestation path's; where they differ, the difference is named above.
func TestOwnParserMatchesGoAttestation(t *testing.T) {
	compared := 0
	for _, p := range logVectors(t) {
		rel, _ := filepath.Rel(vectors, p)
		t.Run(rel, func(t *testing.T) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			raw, gaErr := goattest.ParseEventLog(b)
			own, ownErr := ParseEventLog(b)
			ref, refErr := parseViaGoAttestation(b)
			if gaErr != nil {
				if ownErr == nil {
					t.Logf("go-attestation refuses (%v); the own parser reads %d events", gaErr, len(own.Events))
				} else if !errors.Is(ownErr, ErrEventLogInvalid) {
					t.Fatalf("own parser error does not wrap ErrEventLogInvalid: %v", ownErr)
				}
				return
			}
			if why, ok := intendedRefusals[rel]; ok {
				if ownErr == nil {
					t.Fatalf("listed as refused (%s) but parsed", why)
				}
				return
			}
			if (ownErr == nil) != (refErr == nil) {
				t.Fatalf("own parser: %v; go-attestation path: %v", ownErr, refErr)
			}
			if ownErr != nil {
				if !errors.Is(ownErr, ErrEventLogInvalid) || !errors.Is(refErr, ErrEventLogInvalid) {
					t.Fatalf("errors: %v / %v", ownErr, refErr)
				}
				return // both refuse (a PCR beyond 23, a misplaced StartupLocality)
			}
			compared++
			// The wire format, event by event and bank by bank.
			for _, a := range raw.Algs {
				h, err := tpm2HashAlg(uint16(a))
				if err != nil {
					continue
				}
				bank := BankName(h)
				j := own.bank(bank)
				gaEvents := raw.Events(a)
				if len(gaEvents) != len(own.evs) {
					t.Fatalf("%s: %d events, go-attestation %d", bank, len(own.evs), len(gaEvents))
				}
				for i, e := range gaEvents {
					oe := own.evs[i]
					if oe.pcr != e.Index || oe.typ != uint32(e.Type) || !bytes.Equal(own.data(oe), e.Data) || !bytes.Equal(own.digest(i, j), e.Digest) {
						t.Fatalf("%s event %d differs", bank, own.Events[i].Number)
					}
				}
				// Replay against an independent replay of go-attestation's
				// events; a bank the own parser does not replay is named.
				got, want := own.Replay(bank), naiveReplay(gaEvents, h)
				if slices.Contains(unreplayedBanks[rel], bank) {
					missing := slices.ContainsFunc(gaEvents, func(e goattest.Event) bool { return e.Type != evNoAction && e.Digest == nil })
					bi := own.BankInfo[slices.IndexFunc(own.BankInfo, func(b BankInfo) bool { return b.Name == bank })]
					if got != nil || bi.Replayable || !strings.Contains(bi.Note, "carries no "+bank+" digest") || !missing {
						t.Fatalf("%s: replay %x, bank %+v, an event without its digest: %v", bank, got, bi, missing)
					}
					continue
				}
				if got == nil {
					t.Fatalf("%s not replayed: %+v", bank, own.BankInfo)
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s replay differs:\n own %x\n want %x", bank, got, want)
				}
			}
			if !reflect.DeepEqual(own.Banks, ref.Banks) || !reflect.DeepEqual(own.Events, ref.Events) {
				t.Fatalf("banks or events differ:\n own %v %+v\n ref %v %+v", own.Banks, own.Events, ref.Banks, ref.Events)
			}
			if !reflect.DeepEqual(own.Facts, ref.Facts) || !reflect.DeepEqual(own.Problems, ref.Problems) {
				t.Fatalf("facts differ:\n own %+v %q\n ref %+v %q", own.Facts, own.Problems, ref.Facts, ref.Problems)
			}
			// Verified against a quote of each bank (every PCR the log
			// touches, at its replayed value): same verdict, same facts.
			for _, bank := range own.Banks {
				if slices.Contains(unreplayedBanks[rel], bank) {
					continue
				}
				h := bankHashes[bank]
				var quote []goattest.PCR
				for i, d := range own.Replay(bank) {
					quote = append(quote, goattest.PCR{Index: i, Digest: d, DigestAlg: h})
				}
				o, _ := ParseEventLog(b)
				r, _ := parseViaGoAttestation(b)
				oErr, rErr := o.Verify(quote), r.Verify(quote)
				if (oErr == nil) != (rErr == nil) {
					t.Fatalf("%s: Verify %v / %v", bank, oErr, rErr)
				}
				if !reflect.DeepEqual(o.Facts, r.Facts) || !reflect.DeepEqual(o.Problems, r.Problems) {
					t.Fatalf("%s: verified facts differ:\n own %+v %q\n ref %+v %q", bank, o.Facts, o.Problems, r.Facts, r.Problems)
				}
				if _, err := raw.Verify(quote); err != nil && oErr == nil {
					t.Logf("%s: go-attestation's own Verify refuses what both paths accept: %v", bank, err)
				}
			}
		})
	}
	if compared < 25 {
		t.Fatalf("only %d logs compared", compared)
	}
}

// go-attestation's event-log parser and replay are not on the verification
// path: no non-test file of this package calls them.
func TestNoGoAttestationEventLogParser(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		n++
		for _, call := range []string{"goattest.ParseEventLog", "goattest.EventLog", ".Events(goattest", "goattest.AppendEvents"} {
			if strings.Contains(string(b), call) {
				t.Errorf("%s uses %s", f, call)
			}
		}
	}
	if n < 5 {
		t.Fatalf("%d source files", n)
	}
}
