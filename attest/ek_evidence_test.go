package attest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

func readCert(t *testing.T, rel string) *attest.EKCertificate {
	t.Helper()
	b, err := os.ReadFile(testvectors.Path(rel))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := attest.ParseCertificates(b)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := attest.ParseEKCertificate(cs[0].Raw)
	if err != nil {
		t.Fatal(err)
	}
	return ek
}

// Issue 9, item 4: a certificate a trusted vendor CA issued is an EK
// certificate only with TPM evidence (EK EKU or TPM SAN), or from a CA
// allowed to omit it, and never when it is a CA certificate. The vendors'
// own intermediate CAs presented as EKs, GCE's AK certificates from the
// allowed PCA, and a plain leaf from the swtpm test manufacturer all fail,
// while the swtpm EK certificates (swtpm_localca) pass.
func TestEKCertificateMustCarryTPMEvidence(t *testing.T) {
	const gcePCA = "CN=EK/AK CA Intermediate,OU=Google Cloud,O=Google LLC,L=Mountain View,ST=California,C=US"
	bundle, err := attest.AllowNoTPMEvidence(attest.ManufacturerRootsPEM(), []string{gcePCA})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(bundle), attest.NoTPMEvidenceHeader) != 1 {
		t.Fatal("the allowance did not mark exactly one CA")
	}
	if _, err := attest.AllowNoTPMEvidence(attest.ManufacturerRootsPEM(), []string{"CN=No Such CA"}); err == nil {
		t.Fatal("allowed a CA that is not in the bundle")
	}
	roots, err := attest.ParseCertificates(bundle)
	if err != nil {
		t.Fatal(err)
	}
	at := attest.WithVerifyTime(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	v := attest.NewEKVerifier(roots, append(attest.EKRootsOptions(bundle), at)...)
	for _, rel := range []string{
		"ca/keylime-tpm_cert_store/STM_RSA_05I.pem", // issued keylime_stm_rsa_ek
		"ca/keylime-tpm_cert_store/STM_ECC_01I.pem", // issued keylime_stm_ecc_ek
		"ca/go-tpm-tools-gce/gcp_ek_ak_ca_intermediate_v3.crt",
		"ek-certs/gce/pca_tpm_rsa_sign_cert.pem", // an AK certificate from the allowed PCA
		"ek-certs/gce/pca_tpm_ecc_sign_cert.pem",
	} {
		if _, err := v.Verify(readCert(t, rel)); !errors.Is(err, attest.ErrEKUntrusted) {
			t.Errorf("%s as an EK certificate: %v, want ErrEKUntrusted", rel, err)
		}
	}
	// The control: the EK certificates from the same CAs pass.
	for _, rel := range []string{"ek-certs/leaf/keylime_stm_rsa_ek_trailing_ff_padding.der", "ek-certs/gce/pca_tpm_rsa_enc_cert.pem"} {
		if _, err := v.Verify(readCert(t, rel)); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
	}

	// swtpm: its EK certificates pass; a leaf without EKU or TPM SAN that
	// the same EK CA issued does not.
	m := swtpm.NewTestManufacturer(t)
	sv := attest.NewEKVerifier([]*x509.Certificate{m.Root, m.Intermediate})
	p := swtpm.StartTest(t, m)
	tpm, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	eks, err := tpm.EKs()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range eks {
		if k.Certificate == nil {
			continue
		}
		n++
		ek, err := attest.ParseEKCertificate(k.Certificate.Raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sv.Verify(ek); err != nil {
			t.Errorf("swtpm EK certificate: %v", err)
		}
	}
	if n == 0 {
		t.Fatal("swtpm has no EK certificate")
	}
	b, err := os.ReadFile(filepath.Join(m.Dir, "signkey.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	caKey, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: "not an EK"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageKeyAgreement, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Intermediate, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := attest.ParseEKCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sv.Verify(leaf); !errors.Is(err, attest.ErrEKUntrusted) || !strings.Contains(err.Error(), "no TPM evidence") {
		t.Fatalf("a plain leaf of the EK CA: %v, want ErrEKUntrusted for no TPM evidence", err)
	}
}
