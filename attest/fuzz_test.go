package attest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"
)

func seedFiles(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		files, _ := filepath.Glob(filepath.Join(vectors, p))
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil {
				f.Add(b)
			}
		}
	}
}

// Any input either parses into a log whose events all name a real PCR (or
// extend nothing) and whose replay covers only those PCRs, or fails with
// ErrEventLogInvalid. It never panics.
func FuzzParseEventLog(f *testing.F) {
	seedFiles(f, "eventlogs/*/*")
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseEventLog(b)
		if err != nil {
			var fe *LogFormatError
			if !errors.Is(err, ErrEventLogInvalid) || (errors.As(err, &fe) && (fe.Offset < 0 || fe.Offset > len(b) || fe.Event < 0)) {
				t.Fatalf("error %v", err)
			}
			return
		}
		for _, bi := range l.BankInfo {
			if bi.Replayable != (l.Replay(bi.Name) != nil) || (!bi.Replayable && bi.Note == "") {
				t.Fatalf("bank %+v, replay %v", bi, l.Replay(bi.Name))
			}
		}
		touched := map[int]bool{}
		for _, e := range l.Events {
			if e.TypeCode != evNoAction {
				if e.PCR < 0 || e.PCR > maxPCR {
					t.Fatalf("event %d extends PCR %d", e.Number, e.PCR)
				}
				touched[e.PCR] = true
			}
		}
		for _, bank := range l.Banks {
			pcrs := l.Replay(bank)
			if pcrs == nil {
				continue // not replayable: BankInfo says why (checked above)
			}
			for i, d := range pcrs {
				if !touched[i] && i != 0 {
					t.Fatalf("%s PCR %d replayed without an event", bank, i)
				}
				if len(d) != bankHashes[bank].Size() {
					t.Fatalf("%s PCR %d is %d bytes", bank, i, len(d))
				}
			}
		}
	})
}

// On any input both go-attestation and the own parser accept, the events
// (PCR, type, data, each bank's digest) and every replayable bank's replay
// equal go-attestation's, and the facts and problems equal the
// go-attestation path's (parseViaGoAttestation). A bank the own parser does
// not replay must have a measured event without its digest. Where only the
// own parser refuses, the reason is one of the intended ones.
func FuzzEventLogDifferential(f *testing.F) {
	seedFiles(f, "eventlogs/*/*")
	intended := []string{
		"two ",            // two digests of one bank in one event: which one the TPM extended is unknown
		"more than",       // more digests in an event than banks: two of one bank
		"algorithms (",    // no algorithm, or more than a TPM has banks
		"0-byte",          // a bank declared with empty digests
		"declares",        // a Spec ID event declaring a known hash with another digest size
		"Spec ID event",   // a first event that starts like a Spec ID event but is not a whole one
		"StartupLocality", // a StartupLocality value the PFP does not define
		"H-CRTM",          // an H-CRTM event after PCR 0 was measured
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, gaErr := goattest.ParseEventLog(b)
		own, ownErr := ParseEventLog(b)
		if gaErr != nil {
			return
		}
		if slices.ContainsFunc(specIDAlgs(b), func(id uint16) bool { return id > 0xff }) {
			// go-attestation's HashAlg is a uint8: it reads TPM_ALG_ID
			// 0x3004 as SHA-1. The own parser keeps all 16 bits.
			return
		}
		ref, refErr := parseViaGoAttestation(b)
		if ownErr != nil {
			if refErr != nil {
				return
			}
			if !slices.ContainsFunc(intended, func(s string) bool { return strings.Contains(ownErr.Error(), s) }) {
				t.Fatalf("only the own parser refuses: %v", ownErr)
			}
			return
		}
		for _, a := range raw.Algs {
			h, err := tpm2HashAlg(uint16(a))
			if err != nil {
				continue
			}
			bank := BankName(h)
			j := own.bank(bank)
			events := raw.Events(a)
			if j < 0 || len(events) != len(own.evs) {
				t.Fatalf("%s: bank %d, %d events, go-attestation %d", bank, j, len(own.evs), len(events))
			}
			missing := false
			for i, e := range events {
				oe := own.evs[i]
				if oe.pcr != e.Index || oe.typ != uint32(e.Type) || !bytes.Equal(own.data(oe), e.Data) || !bytes.Equal(own.digest(i, j), e.Digest) {
					t.Fatalf("%s event %d differs", bank, i)
				}
				missing = missing || (e.Type != evNoAction && e.Digest == nil)
			}
			got := own.Replay(bank)
			if got == nil {
				if !missing {
					t.Fatalf("%s not replayed, but every measured event has its digest", bank)
				}
				continue
			}
			if want := naiveReplay(events, h); !reflect.DeepEqual(got, want) {
				t.Fatalf("%s replay %x, want %x", bank, got, want)
			}
		}
		if refErr != nil {
			t.Fatalf("the go-attestation path refuses what the own parser reads: %v", refErr)
		}
		if !reflect.DeepEqual(own.Events, ref.Events) || !reflect.DeepEqual(own.Facts, ref.Facts) || !reflect.DeepEqual(own.Problems, ref.Problems) {
			t.Fatalf("events or facts differ:\n own %+v %q\n ref %+v %q", own.Facts, own.Problems, ref.Facts, ref.Problems)
		}
	})
}

// specIDAlgs returns the algorithm IDs a Spec ID event declares, read
// independently of both parsers (nil when b does not start with one).
func specIDAlgs(b []byte) []uint16 {
	const at = 32 + 28 // the legacy header, then the Spec ID event's fixed part
	if len(b) < at || !bytes.HasPrefix(b[32:], []byte("Spec ID Event03\x00")) {
		return nil
	}
	n := binary.LittleEndian.Uint32(b[at-4:])
	var ids []uint16
	for i := 0; i < int(min(n, 64)) && at+4*i+2 <= len(b); i++ {
		ids = append(ids, binary.LittleEndian.Uint16(b[at+4*i:]))
	}
	return ids
}

// Any input either parses into an EK certificate with no unhandled critical
// extension but the ones Go itself reports, or fails with ErrEKInvalid.
func FuzzParseEKCertificate(f *testing.F) {
	seedFiles(f, "ek-certs/leaf/*.der")
	f.Fuzz(func(t *testing.T, b []byte) {
		ek, err := ParseEKCertificate(b)
		if err != nil {
			return
		}
		for _, id := range ek.Cert.UnhandledCriticalExtensions {
			if id.Equal(oidSubjectAltName) {
				t.Fatal("the TPM SAN was parsed but left unhandled")
			}
		}
		_ = ek.HasEKUsage()
	})
}

// A policy that parses survives a JSON round trip unchanged and validates
// again; anything else fails with ErrPolicyInvalid.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"groups":[{"name":"edge","mode":"auto","match":{"manufacturers":["id:49465800"]},"require":{"secure_boot":true,"pcrs":{"sha256":{"7":"` + zeros(32) + `"}}},"certificate":{"validity":"720h","dns_names":["{{.DeviceID}}.example.com"]},"config":{"a":1}}]}`))
	f.Add([]byte(`{"groups":[{"name":"a","mode":"approve","match":{"ek_public_sha256":["` + zeros(32) + `"]}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		q, err := ParsePolicy(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalize(t, p), normalize(t, q)) {
			t.Fatalf("round trip changed the policy:\n%s", out)
		}
		in := &Input{PCRs: map[string]map[int][]byte{}}
		_ = p.Evaluate(in) // must not panic on empty evidence
	})
}

func zeros(n int) string {
	b := make([]byte, 2*n)
	for i := range b {
		b[i] = '0'
	}
	return string(b)
}

func normalize(t *testing.T, p *Policy) any {
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	json.Unmarshal(b, &v)
	return v
}
