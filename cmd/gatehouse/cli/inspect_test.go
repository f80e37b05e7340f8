package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// eventlog inspect -o json reports the replayed PCRs go-tpm-tools expects,
// and refuses a non-log with an error in "errors".
func TestEventlogInspect(t *testing.T) {
	var exp struct {
		Logs map[string]struct {
			File string                       `json:"file"`
			PCRs map[string]map[string]string `json:"pcrs"`
			Errs []string                     `json:"expected_error_substrings"`
		} `json:"logs"`
	}
	b, err := os.ReadFile(testvectors.Path("eventlogs/expected/go-tpm-tools_eventlog_test.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &exp); err != nil {
		t.Fatal(err)
	}
	for name, tc := range exp.Logs {
		out, err := run(t, "eventlog", "inspect", "-o", "json", testvectors.Path(tc.File))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var rep eventLogReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		for bank, vals := range tc.PCRs {
			for idx, want := range vals {
				if got := rep.ReplayedPCRs[bank][idx]; got != want {
					t.Errorf("%s %s PCR %s: %s, want %s", name, bank, idx, got, want)
				}
			}
		}
		for _, e := range tc.Errs {
			if !strings.Contains(strings.Join(rep.Errors, "\n"), e) {
				t.Errorf("%s: errors %q lack %q", name, rep.Errors, e)
			}
		}
		if len(rep.Events) == 0 || rep.Facts == nil {
			t.Errorf("%s: no events or facts", name)
		}
	}
	// A log with a bank the parser does not implement (SM3_256): each bank
	// is listed, the three it replays with their PCRs (the base log's), the
	// SM3 one with a note and none.
	out, err := run(t, "eventlog", "inspect", "-o", "json", testvectors.Path("eventlogs/generated/sm3-bank.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var sm3 eventLogReport
	if err := json.Unmarshal([]byte(out), &sm3); err != nil {
		t.Fatal(err)
	}
	base := exp.Logs["Ubuntu2104NoSecureBootGCE"]
	if len(sm3.Banks) != 4 || sm3.Banks[1].Name != "sm3_256" || sm3.Banks[1].Replayable || sm3.Banks[1].ReplayedPCRs != nil || !strings.Contains(sm3.Banks[1].Note, "not implemented") || len(base.PCRs) == 0 {
		t.Fatalf("banks %+v", sm3.Banks)
	}
	for _, br := range []bankReport{sm3.Banks[0], sm3.Banks[2]} {
		for idx, want := range base.PCRs[br.Name] {
			if !br.Replayable || br.ReplayedPCRs[idx] != want {
				t.Errorf("sm3-bank.bin %s PCR %s: %s, want %s", br.Name, idx, br.ReplayedPCRs[idx], want)
			}
		}
	}
	if _, ok := sm3.ReplayedPCRs["sm3_256"]; ok || sm3.Banks[3].Name != "sha384" || len(sm3.Banks[3].ReplayedPCRs) == 0 {
		t.Fatalf("replayed %v", sm3.ReplayedPCRs)
	}
	out, err = run(t, "eventlog", "inspect", testvectors.Path("eventlogs/generated/sm3-bank.bin"))
	if err != nil || !strings.Contains(out, "not replayed sm3_256:") {
		t.Fatalf("table output: %v\n%s", err, out)
	}
	out, err = run(t, "eventlog", "inspect", "-o", "json", testvectors.Path("eventlogs/keylime/binary_bios_measurements-bogus"))
	if err == nil {
		t.Fatal("bogus log accepted")
	}
	var rep eventLogReport
	if json.Unmarshal([]byte(out), &rep) != nil || len(rep.Errors) != 1 || !strings.Contains(rep.Errors[0], "event log rejected") {
		t.Fatalf("report %s", out)
	}
	out, err = run(t, "eventlog", "inspect", testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil || !strings.Contains(out, `\EFI\ubuntu\shimx64.efi`) || !regexp.MustCompile(`Secure Boot:\s+off`).MatchString(out) {
		t.Fatalf("table output: %v\n%s", err, out)
	}
}

// ekcert inspect chains every vendor EK certificate with the shipped bundle
// and with --roots, and reports a certificate from an unknown CA as not
// verified, with the reason.
func TestEKCertInspect(t *testing.T) {
	leaves, _ := filepath.Glob(testvectors.Path("ek-certs/leaf/*_ek*.der"))
	gce, _ := filepath.Glob(testvectors.Path("ek-certs/gce/*_enc_cert.pem"))
	files := append(leaves, gce...)
	if len(files) != 9 {
		t.Fatalf("%d EK certificates", len(files))
	}
	for _, f := range files {
		for _, roots := range [][]string{nil, {"--roots", testvectors.Path("ca")}} {
			args := append([]string{"ekcert", "inspect", "-o", "json", "--at", "2026-06-01T00:00:00Z", f}, roots...)
			if strings.Contains(f, "pca_") { // GCE's PCA ships EK certificates without TPM evidence
				args = append(args, "--ek-allow-no-tpm-evidence", "CN=EK/AK CA Intermediate,OU=Google Cloud,O=Google LLC,L=Mountain View,ST=California,C=US")
			}
			out, err := run(t, args...)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var rep ekCertReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatal(err)
			}
			if !rep.Chain.Verified || rep.Chain.Root == "" || rep.Chain.Error != "" {
				t.Errorf("%s %v: chain %+v", filepath.Base(f), roots, rep.Chain)
			}
			if strings.Contains(f, "keylime") && (rep.Manufacturer == "" || rep.Model == "") {
				t.Errorf("%s: TPM attributes missing: %+v", f, rep)
			}
		}
	}
	// A GCE certificate against the Infineon-only store.
	out, err := run(t, "ekcert", "inspect", "-o", "json", "--roots", testvectors.Path("ca/keylime-tpm_cert_store"), gce[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep ekCertReport
	if json.Unmarshal([]byte(out), &rep) != nil || rep.Chain.Verified || !strings.Contains(rep.Chain.Error, "does not chain") {
		t.Fatalf("unknown CA: %s", out)
	}
}
