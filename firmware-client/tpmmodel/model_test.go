package tpmmodel_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
)

// memManufacturer is a manufacturer CA in memory, for tests of the model
// alone (the swtpm-backed tests use swtpm's manufacturer).
func memManufacturer(t *testing.T) (*tpmmodel.Manufacturer, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "model EK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	m, err := tpmmodel.NewManufacturer(ca, key)
	if err != nil {
		t.Fatal(err)
	}
	return m, ca
}

// challenge makes what the appliance sends: a credential for ak, wrapped
// to ek.
func challenge(t *testing.T, ek *fwclient.Endorsement, ak fwclient.AK, secret []byte) goattest.EncryptedCredential {
	t.Helper()
	v, err := gatehouse.VerifyAK(ak.AttestationParameters())
	if err != nil {
		t.Fatal(err)
	}
	ec, err := v.MakeCredential(ek.Public, ek.Area, secret)
	if err != nil {
		t.Fatal(err)
	}
	return *ec
}

// Like a TPM, the model releases a credential only to the AK it names and
// only with the EK it was wrapped to; a tampered blob fails its integrity
// check.
func TestModelActivationRefusesOtherAKsAndEKs(t *testing.T) {
	m, _ := memManufacturer(t)
	plat, err := tpmmodel.NewPlatform(nil)
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{7}, 32)
	for _, kind := range []string{fwclient.EKECCP256, fwclient.EKRSA2048} {
		t.Run(kind, func(t *testing.T) {
			dev, err := m.NewDevice(plat, kind)
			if err != nil {
				t.Fatal(err)
			}
			other, err := m.NewDevice(plat, fwclient.EKECCP256)
			if err != nil {
				t.Fatal(err)
			}
			ek, _ := dev.Endorsement("")
			ak, _ := dev.CreateAK(goattest.ECDSA)
			ak2, _ := dev.CreateAK(goattest.ECDSA)
			otherAK, _ := other.CreateAK(goattest.ECDSA)
			ec := challenge(t, ek, ak, secret)

			if got, err := ak.ActivateCredential(ek, ec); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("the named AK: %x, %v", got, err)
			}
			if _, err := ak2.ActivateCredential(ek, ec); !errors.Is(err, tpmmodel.ErrActivation) {
				t.Fatalf("another AK of the same device: %v, want ErrActivation", err)
			}
			if _, err := otherAK.ActivateCredential(ek, challenge(t, ek, otherAK, secret)); !errors.Is(err, tpmmodel.ErrActivation) {
				t.Fatalf("another device's EK: %v, want ErrActivation", err)
			}
			otherEK, _ := other.Endorsement("")
			if _, err := otherAK.ActivateCredential(otherEK, challenge(t, ek, otherAK, secret)); !errors.Is(err, tpmmodel.ErrActivation) {
				t.Fatalf("a credential wrapped to another EK: %v, want ErrActivation", err)
			}
			tampered := goattest.EncryptedCredential{Credential: bytes.Clone(ec.Credential), Secret: ec.Secret}
			tampered.Credential[len(tampered.Credential)-1] ^= 1
			if _, err := ak.ActivateCredential(ek, tampered); !errors.Is(err, tpmmodel.ErrActivation) {
				t.Fatalf("a tampered credential: %v, want ErrActivation", err)
			}
		})
	}
}

// Blobs reload only on the device that made them, as the kind of key they
// are; a reloaded AK still quotes with the same key.
func TestModelBlobs(t *testing.T) {
	m, _ := memManufacturer(t)
	plat, err := tpmmodel.NewPlatform(readBootLog(t))
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := m.NewDevice(plat, fwclient.EKECCP256)
	other, _ := m.NewDevice(plat, fwclient.EKECCP256)
	ak, _ := dev.CreateAK(goattest.ECDSA)
	key, err := ak.NewKey([]byte("qualifying"))
	if err != nil {
		t.Fatal(err)
	}
	akBlob, _ := ak.Marshal()
	keyBlob, _ := key.Marshal()
	if _, err := other.OpenAK(akBlob); !errors.Is(err, tpmmodel.ErrUnknownBlob) {
		t.Fatalf("another device's AK blob: %v", err)
	}
	if _, err := dev.OpenAK(keyBlob); !errors.Is(err, tpmmodel.ErrUnknownBlob) {
		t.Fatalf("a key blob as an AK: %v", err)
	}
	if _, err := dev.OpenKey(akBlob); !errors.Is(err, tpmmodel.ErrUnknownBlob) {
		t.Fatalf("an AK blob as a key: %v", err)
	}
	reAK, err := dev.OpenAK(akBlob)
	if err != nil {
		t.Fatal(err)
	}
	reKey, err := dev.OpenKey(keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	if !gatehouse.PublicKeysEqual(reKey.Public(), key.Public()) {
		t.Fatal("reloaded key differs")
	}
	pub, err := goattest.ParseAKPublic(ak.AttestationParameters().Public)
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	q, err := reAK.Quote(nonce, goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, _ := dev.PCRs(goattest.HashSHA256)
	if err := pub.Verify(*q, pcrs, nonce); err != nil {
		t.Fatalf("the reloaded AK's quote does not verify with the enrolled AK: %v", err)
	}
	if log, err := dev.MeasurementLog(); err != nil || !bytes.Equal(log, readBootLog(t)) {
		t.Fatalf("measurement log: %d bytes, %v", len(log), err)
	}
}

// What a TPM (or this model) does not do is refused, not faked.
func TestModelRefusals(t *testing.T) {
	m, _ := memManufacturer(t)
	plat, _ := tpmmodel.NewPlatform(nil)
	dev, _ := m.NewDevice(plat, fwclient.EKECCP256)
	if _, err := dev.Endorsement(fwclient.EKRSA2048); !errors.Is(err, tpmmodel.ErrUnsupported) {
		t.Fatalf("an EK the device does not have: %v", err)
	}
	if _, err := dev.MeasurementLog(); !errors.Is(err, fwclient.ErrNoEventLog) {
		t.Fatalf("a platform without a log: %v", err)
	}
	ak, _ := dev.CreateAK(goattest.ECDSA)
	if _, err := ak.Quote([]byte("n"), goattest.HashSHA1); !errors.Is(err, tpmmodel.ErrUnsupported) {
		t.Fatalf("a SHA-1 quote: %v", err)
	}
	if _, err := dev.PCRs(goattest.HashSHA1); !errors.Is(err, tpmmodel.ErrUnsupported) {
		t.Fatalf("SHA-1 PCRs: %v", err)
	}
	if _, err := ak.Quote(make([]byte, 67), goattest.HashSHA256); !errors.Is(err, tpmmodel.ErrUnsupported) {
		t.Fatalf("a 67-byte nonce: %v; a TPM's TPM2B_DATA holds 66 bytes", err)
	}
	if _, err := m.NewDevice(plat, fwclient.EKECCP384); !errors.Is(err, tpmmodel.ErrUnsupported) {
		t.Fatalf("a P-384 EK: %v", err)
	}
}
