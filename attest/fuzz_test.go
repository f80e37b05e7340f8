package attest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
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
			return
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
