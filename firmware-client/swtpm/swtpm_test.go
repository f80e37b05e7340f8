package swtpm

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"syscall"
	"testing"

	"github.com/google/go-attestation/attest"
)

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// Devices made in parallel each have their own EK, certified by the
// manufacturer with the critical TPM SAN real EK certificates have, and
// their TPMs quote.
func TestDevicesHaveManufacturerEKCertificates(t *testing.T) {
	m := NewTestManufacturer(t)
	devs, err := m.NewDevices(t.TempDir(), 4)
	if err != nil {
		t.Fatal(err)
	}
	var ekPubs [][]byte
	for _, d := range devs[:2] {
		p, err := d.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop() })
		tpm, err := p.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		eks, err := tpm.EKs()
		if err != nil || len(eks) == 0 || eks[0].Certificate == nil {
			t.Fatalf("EKs: %v %+v", err, eks)
		}
		cert := eks[0].Certificate
		if len(cert.UnhandledCriticalExtensions) != 1 || !cert.UnhandledCriticalExtensions[0].Equal(oidSAN) {
			t.Fatalf("want the critical TPM SAN, got %v", cert.UnhandledCriticalExtensions)
		}
		cert.UnhandledCriticalExtensions = nil // handled by attest.ParseEKCertificate in production
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		roots.AddCert(m.Root)
		inter.AddCert(m.Intermediate)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("EK certificate does not chain to the manufacturer: %v", err)
		}
		pub, _ := x509.MarshalPKIXPublicKey(eks[0].Public)
		ekPubs = append(ekPubs, pub)

		ak, err := tpm.NewAK(&attest.AKConfig{Algorithm: attest.ECDSA})
		if err != nil {
			t.Fatal(err)
		}
		nonce := []byte("0123456789abcdef0123456789abcdef")
		q, err := ak.Quote(tpm.TPM, nonce, attest.HashSHA256)
		if err != nil {
			t.Fatal(err)
		}
		pcrs, err := tpm.PCRs(attest.HashSHA256)
		if err != nil {
			t.Fatal(err)
		}
		akPub, err := attest.ParseAKPublic(ak.AttestationParameters().Public)
		if err != nil {
			t.Fatal(err)
		}
		if err := akPub.Verify(*q, pcrs, nonce); err != nil {
			t.Fatalf("quote does not verify: %v", err)
		}
		ak.Close(tpm.TPM)
	}
	if bytes.Equal(ekPubs[0], ekPubs[1]) {
		t.Fatal("two devices share an EK")
	}
}

// Stop kills the process; a restart on the same state is a reboot: same EK.
func TestStopAndReboot(t *testing.T) {
	m := NewTestManufacturer(t)
	d, err := m.NewDevice(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ekOf := func(p *Process) []byte {
		tpm, err := p.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		eks, err := tpm.EKs()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := x509.MarshalPKIXPublicKey(eks[0].Public)
		return b
	}
	p, err := d.Start()
	if err != nil {
		t.Fatal(err)
	}
	first := ekOf(p)
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() || syscall.Kill(p.PID, 0) == nil {
		t.Fatalf("swtpm %d still running after Stop", p.PID)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	p2, err := d.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Stop()
	if !bytes.Equal(first, ekOf(p2)) {
		t.Fatal("EK changed across a reboot")
	}
}

func TestLoadManufacturer(t *testing.T) {
	m := NewTestManufacturer(t)
	again, err := NewManufacturer(m.Dir, "ignored")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Root.Equal(m.Root) || !again.Intermediate.Equal(m.Intermediate) {
		t.Fatal("reopening a manufacturer made a new CA")
	}
}
