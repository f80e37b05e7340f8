package fwclient

import (
	"crypto"
	"fmt"

	"github.com/google/go-attestation/attest"
)

// Device is what the enrollment and renewal protocols need from a TPM:
// its EK, attestation keys, credential activation, quotes, PCRs and a
// certified device key. *TPM (a real TPM or swtpm, through go-attestation)
// implements it; so does the test-only software model in
// firmware-client/tpmmodel, which is how a load generator drives the real
// protocol code without a TPM per simulated device.
//
// A Device is used by one goroutine at a time.
type Device interface {
	// Endorsement returns the EK of a kind (EKRSA2048, EKECCP384,
	// EKECCP256; "" is the device's default) with its certificate.
	Endorsement(kind string) (*Endorsement, error)
	// CreateAK creates a fresh attestation key (restricted signing key)
	// with its creation attestation.
	CreateAK(alg attest.Algorithm) (AK, error)
	// OpenAK loads an AK from the blob its Marshal returned.
	OpenAK(blob []byte) (AK, error)
	// OpenKey loads a device key from the blob its Marshal returned.
	OpenKey(blob []byte) (Key, error)
	PCRBanks() ([]attest.HashAlg, error)
	PCRs(alg attest.HashAlg) ([]attest.PCR, error)
	// MeasurementLog returns the firmware event log, or an error wrapping
	// ErrNoEventLog when the platform has none.
	MeasurementLog() ([]byte, error)
}

// AK is an attestation key inside a Device.
type AK interface {
	AttestationParameters() attest.AttestationParameters
	// ActivateCredential is TPM2_ActivateCredential with ek (as returned by
	// the same Device's Endorsement) as the protector.
	ActivateCredential(ek *Endorsement, c attest.EncryptedCredential) ([]byte, error)
	// Quote quotes all 24 PCRs of bank over nonce.
	Quote(nonce []byte, bank attest.HashAlg) (*attest.Quote, error)
	// NewKey creates an ECDSA P-256 signing key in the device and certifies
	// it with this AK (TPM2_Certify) over qualifyingData.
	NewKey(qualifyingData []byte) (Key, error)
	Marshal() ([]byte, error)
	Close() error
}

// Key is a device key inside a Device. *attest.Key implements it.
type Key interface {
	Public() crypto.PublicKey
	// Private returns a crypto.Signer whose signatures are made inside the
	// device.
	Private(pub crypto.PublicKey) (crypto.PrivateKey, error)
	CertificationParameters() attest.CertificationParameters
	Marshal() ([]byte, error)
	Close() error
}

// EKECCP256 is the low-range ECC P-256 EK (TCG template L-2). go-attestation
// reads it only with its certificate at 0x01c0000a, which swtpm does not
// provision, so only the software model offers it.
const EKECCP256 = "ecc-p256"

// Endorsement returns one of the TPM's EKs (see Device).
func (t *TPM) Endorsement(kind string) (*Endorsement, error) {
	switch kind {
	case "", EKRSA2048:
		ek, err := EndorsementKey(t)
		if err != nil {
			return nil, err
		}
		e := &Endorsement{Public: ek.Public, ek: &ek}
		if ek.Certificate != nil {
			e.Certificate = ek.Certificate.Raw
		}
		return e, nil
	case EKECCP384:
		return ReadEK(t.raw, NVIndexECCP384EKCert, HandleECCP384EK)
	}
	return nil, fmt.Errorf("unknown EK %q (want %s or %s)", kind, EKRSA2048, EKECCP384)
}

// CreateAK creates an AK under go-attestation's SRK (see Device).
func (t *TPM) CreateAK(alg attest.Algorithm) (AK, error) {
	ak, err := t.NewAK(&attest.AKConfig{Algorithm: alg})
	if err != nil {
		return nil, err
	}
	return &tpmAK{t: t, ak: ak}, nil
}

// OpenAK loads an AK blob (see Device).
func (t *TPM) OpenAK(blob []byte) (AK, error) {
	ak, err := t.LoadAK(blob)
	if err != nil {
		return nil, err
	}
	return &tpmAK{t: t, ak: ak}, nil
}

// OpenKey loads a device key blob (see Device).
func (t *TPM) OpenKey(blob []byte) (Key, error) { return t.LoadKey(blob) }

// tpmAK is a go-attestation AK bound to its TPM, whose methods take the TPM
// as an argument.
type tpmAK struct {
	t  *TPM
	ak *attest.AK
}

func (a *tpmAK) AttestationParameters() attest.AttestationParameters {
	return a.ak.AttestationParameters()
}

func (a *tpmAK) ActivateCredential(ek *Endorsement, c attest.EncryptedCredential) ([]byte, error) {
	if ek.ek != nil {
		return a.ak.ActivateCredentialWithEK(a.t.TPM, c, *ek.ek)
	}
	return a.t.activateWithEK(a.ak, c, ek)
}

func (a *tpmAK) Quote(nonce []byte, bank attest.HashAlg) (*attest.Quote, error) {
	return a.ak.Quote(a.t.TPM, nonce, bank)
}

func (a *tpmAK) NewKey(qualifyingData []byte) (Key, error) {
	return newDeviceKey(a.t, a.ak, qualifyingData)
}

func (a *tpmAK) Marshal() ([]byte, error) { return a.ak.Marshal() }
func (a *tpmAK) Close() error             { return a.ak.Close(a.t.TPM) }

func newDeviceKey(tpm *TPM, ak *attest.AK, qualifyingData []byte) (*attest.Key, error) {
	return tpm.NewKey(ak, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: qualifyingData})
}
