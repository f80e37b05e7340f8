package attest

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Real vendor EK certificates (testvectors/SOURCES.tsv) must parse despite
// their quirks, expose the TPM attributes of their critical SAN, and chain to
// the vendor roots in keylime's trust store.
func TestVendorEKCertificates(t *testing.T) {
	// The shipped bundle alone must chain every vendor certificate; GCE's
	// PCA, whose EK certificates carry no TPM evidence, is allowed to.
	bundle, err := AllowNoTPMEvidence(ManufacturerRootsPEM(), []string{gcePCA})
	if err != nil {
		t.Fatal(err)
	}
	store, err := ParseCertificates(bundle)
	if err != nil {
		t.Fatal(err)
	}
	opts := append(EKRootsOptions(bundle), WithVerifyTime(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)))
	for _, tc := range []struct {
		file, manufacturer string
	}{
		{"keylime_infineon_slb9670_rsa_ek.der", "id:49465800"},
		{"keylime_infineon_slb9670_ecc_ek.der", "id:49465800"},
		{"keylime_stm_rsa_ek_trailing_ff_padding.der", "id:53544D20"},
		{"keylime_stm_ecc_ek.der", "id:53544D20"},
		{"keylime_nuvoton_npct75x_rsa_ek_nonDER.der", "id:4E544300"},
		// GCE vTPM EK certificates: PCA-issued ones carry no SAN at all.
		{"../gce/pca_tpm_rsa_enc_cert.pem", ""},
		{"../gce/pca_tpm_ecc_enc_cert.pem", ""},
		{"../gce/uca_tpm_rsa_enc_cert.pem", "id:474F4F47"},
		{"../gce/uca_tpm_ecc_enc_cert.pem", "id:474F4F47"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			der, err := os.ReadFile(filepath.Join("../testvectors/ek-certs/leaf", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if blk, _ := pem.Decode(der); blk != nil {
				der = blk.Bytes
			}
			if err != nil {
				t.Fatal(err)
			}
			ek, err := ParseEKCertificate(der)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if ek.Manufacturer != tc.manufacturer || (tc.manufacturer != "" && (ek.Model == "" || ek.Version == "")) {
				t.Fatalf("TPM attributes %q %q %q, want manufacturer %q", ek.Manufacturer, ek.Model, ek.Version, tc.manufacturer)
			}
			if len(ek.Cert.UnhandledCriticalExtensions) != 0 {
				t.Fatalf("critical extensions left unhandled: %v", ek.Cert.UnhandledCriticalExtensions)
			}
			if tc.manufacturer != "" && !ek.HasEKUsage() {
				t.Fatal("EK certificate EKU 2.23.133.8.1 not found")
			}
			// A fixed date inside every chain's validity keeps the test from
			// expiring with the vendors' certificates (STM ECC in 2028).
			v := NewEKVerifier(store, opts...)
			chain, err := v.Verify(ek)
			if err != nil {
				t.Fatalf("chain: %v", err)
			}
			// Without the allowance, only certificates with TPM evidence pass.
			_, err = NewEKVerifier(store, opts[len(opts)-1]).Verify(ek)
			if tc.manufacturer == "" && !errors.Is(err, ErrEKUntrusted) || tc.manufacturer != "" && err != nil {
				t.Fatalf("without the allowance: %v", err)
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

const gcePCA = "CN=EK/AK CA Intermediate,OU=Google Cloud,O=Google LLC,L=Mountain View,ST=California,C=US"

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

// Every certificate in the shipped bundle comes from a trust store in
// testvectors/ca, whose SOURCES.tsv rows give its provenance and licence.
func TestManufacturerBundleProvenance(t *testing.T) {
	bundle, err := ParseCertificates(ManufacturerRootsPEM())
	if err != nil || len(bundle) < 100 {
		t.Fatalf("%d certificates: %v", len(bundle), err)
	}
	files, _ := filepath.Glob("../testvectors/ca/*/*")
	var all []*x509.Certificate
	for _, f := range files {
		if cs, err := LoadCertificates(f); err == nil {
			all = append(all, cs...)
		}
	}
	sources, err := os.ReadFile("../testvectors/SOURCES.tsv")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range bundle {
		found := false
		for _, s := range all {
			found = found || bytes.Equal(s.Raw, c.Raw)
		}
		if !found {
			t.Errorf("%s is in the bundle but in no testvectors/ca store", Name(c.Subject))
		}
	}
	for _, f := range files {
		rel, _ := filepath.Rel("../testvectors", f)
		if filepath.Ext(f) != ".yaml" && filepath.Base(filepath.Dir(f)) != "src" && !bytes.Contains(sources, []byte(rel+"\t")) {
			t.Errorf("%s has no SOURCES.tsv row", rel)
		}
	}
}

// The Nuvoton root's multi-valued RDN is not in DER order; Go parses it.
func TestNuvotonRootNonDERSet(t *testing.T) {
	b, err := os.ReadFile("../testvectors/ek-certs/leaf/keylime_nuvoton_root_ca_2110_bad_set_ordering.der")
	if err != nil {
		t.Fatal(err)
	}
	cs, err := ParseCertificates(b)
	if err != nil || !cs[0].IsCA {
		t.Fatalf("%v", err)
	}
	if err := cs[0].CheckSignatureFrom(cs[0]); err != nil {
		t.Fatalf("self-signature: %v", err)
	}
}

// The Infineon EK certificates' keys equal the TPM2B_PUBLIC of the EKs they
// certify (EK templates L-1 and L-2).
func TestInfineonEKMatchesTPMPublic(t *testing.T) {
	for _, name := range []string{"keylime_infineon_slb9670_rsa_ek", "keylime_infineon_slb9670_ecc_ek"} {
		der, err := os.ReadFile("../testvectors/ek-certs/leaf/" + name + ".der")
		if err != nil {
			t.Fatal(err)
		}
		ek, err := ParseEKCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		pubBytes, err := os.ReadFile("../testvectors/ek-certs/tpm2b_public/" + name + ".tpm2b_public")
		if err != nil {
			t.Fatal(err)
		}
		pub, err := ParseTPM2BPublic(pubBytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !PublicKeysEqual(pub, ek.Cert.PublicKey) {
			t.Fatalf("%s: TPM public and certificate key differ", name)
		}
	}
}
