package attest

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Real vendor EK certificates (testvectors/SOURCES.tsv) must parse despite
// their quirks, expose the TPM attributes of their critical SAN, and chain to
// the vendor roots in keylime's trust store.
func TestVendorEKCertificates(t *testing.T) {
	storeFiles, err := filepath.Glob("../testvectors/ca/*/*.pem")
	if err != nil || len(storeFiles) == 0 {
		t.Fatalf("trust store missing: %v", err)
	}
	store, err := LoadCertificates(storeFiles...)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file, manufacturer string
	}{
		{"keylime_infineon_slb9670_rsa_ek.der", "id:49465800"},
		{"keylime_infineon_slb9670_ecc_ek.der", "id:49465800"},
		{"keylime_stm_rsa_ek_trailing_ff_padding.der", "id:53544D20"},
		{"keylime_stm_ecc_ek.der", "id:53544D20"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			der, err := os.ReadFile(filepath.Join("../testvectors/ek-certs/leaf", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			ek, err := ParseEKCertificate(der)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if ek.Manufacturer != tc.manufacturer || ek.Model == "" || ek.Version == "" {
				t.Fatalf("TPM attributes %q %q %q, want manufacturer %q", ek.Manufacturer, ek.Model, ek.Version, tc.manufacturer)
			}
			if len(ek.Cert.UnhandledCriticalExtensions) != 0 {
				t.Fatalf("critical extensions left unhandled: %v", ek.Cert.UnhandledCriticalExtensions)
			}
			if !ek.HasEKUsage() {
				t.Fatal("EK certificate EKU 2.23.133.8.1 not found")
			}
			v := NewEKVerifier(store)
			// A fixed date inside every chain's validity keeps the test from
			// expiring with the vendors' certificates (STM ECC in 2028).
			v.now = func() time.Time { return time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC) }
			chain, err := v.Verify(ek)
			if err != nil {
				t.Fatalf("chain: %v", err)
			}
			if len(chain) < 2 {
				t.Fatalf("chain of %d", len(chain))
			}
			// The same certificate against an unrelated root fails with the sentinel.
			if _, err := NewEKVerifier(store[:1]).Verify(ek); err == nil {
				t.Fatal("verified against an unrelated root")
			}
		})
	}
}

func TestParseEKCertificateRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("not a certificate"), {0x30, 0x03, 0x02, 0x01}} {
		if _, err := ParseEKCertificate(b); err == nil {
			t.Fatalf("parsed %x", b)
		}
	}
}

func TestDeviceIDStable(t *testing.T) {
	der, err := os.ReadFile("../testvectors/ek-certs/leaf/keylime_infineon_slb9670_rsa_ek.der")
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ParseEKCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	a, err := DeviceID(ek.Cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := DeviceID(ek.Cert.PublicKey)
	if a != b || len(a) != 32 {
		t.Fatalf("device IDs %q %q", a, b)
	}
}
