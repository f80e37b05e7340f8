package fwclient

import (
	"crypto"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// Where a TPM keeps its EKs and their certificates (TCG EK Credential
// Profile 2.3). go-attestation reads the RSA-2048 and low-range ECC P-256
// pair; swtpm and some discrete TPMs also provision a P-384 EK in the high
// range, which only these constants reach.
const (
	NVIndexRSA2048EKCert = 0x01c00002
	NVIndexECCP384EKCert = 0x01c00016
	HandleRSA2048EK      = 0x81010001
	HandleECCP384EK      = 0x81010016
)

// EK choices for Enroll.
const (
	EKRSA2048 = "rsa-2048" // go-attestation's default EK (0x81010001)
	EKECCP384 = "ecc-p384" // the high-range P-384 EK (0x81010016)
)

// Endorsement is an EK as read from the TPM.
type Endorsement struct {
	Certificate []byte           // as stored in NV (padding allowed)
	Public      crypto.PublicKey //
	Area        []byte           // TPM2B_PUBLIC; nil for go-attestation's default RSA EK
	handle      uint32
	ek          *attest.EK // go-attestation's EK, when it found this one
}

// ReadEK reads an EK certificate from its NV index (as stored: possibly with
// trailing padding, which attest.ParseEKCertificate tolerates) and the
// public area of the persistent EK at handle, over a raw transport (see
// OpenTransport).
func ReadEK(rw io.ReadWriter, nvIndex, handle uint32) (*Endorsement, error) {
	cert, err := tpm2.NVReadEx(rw, tpmutil.Handle(nvIndex), tpm2.HandleOwner, "", 0)
	if err != nil {
		return nil, fmt.Errorf("read EK certificate at NV 0x%08x: %w", nvIndex, err)
	}
	p, _, _, err := tpm2.ReadPublic(rw, tpmutil.Handle(handle))
	if err != nil {
		return nil, fmt.Errorf("read EK public at 0x%08x: %w", handle, err)
	}
	pub, err := p.Key()
	if err != nil {
		return nil, fmt.Errorf("EK public at 0x%08x: %w", handle, err)
	}
	area, err := p.Encode()
	if err != nil {
		return nil, err
	}
	area = append(binary.BigEndian.AppendUint16(nil, uint16(len(area))), area...)
	return &Endorsement{Certificate: cert, Public: pub, Area: area, handle: handle}, nil
}

// srkHandle is where go-attestation keeps the storage key its AKs are
// created under.
const srkHandle = 0x81000001

// activateWithEK runs TPM2_ActivateCredential against an EK go-attestation
// does not know: it loads a second handle of the AK from its blob and
// authorizes both keys with the empty password (the TCG high-range EK
// templates set userWithAuth).
func (t *TPM) activateWithEK(ak *attest.AK, c attest.EncryptedCredential, ek *Endorsement) ([]byte, error) {
	blob, err := ak.Marshal()
	if err != nil {
		return nil, err
	}
	var k struct {
		Public []byte
		Blob   []byte `json:"KeyBlob"`
	}
	if err := json.Unmarshal(blob, &k); err != nil {
		return nil, fmt.Errorf("AK blob: %w", err)
	}
	if len(c.Credential) < 2 || len(c.Secret) < 2 {
		return nil, fmt.Errorf("malformed credential")
	}
	pw := tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}
	h, _, err := tpm2.LoadUsingAuth(t.raw, srkHandle, pw, k.Public, k.Blob)
	if err != nil {
		return nil, fmt.Errorf("load AK: %w", err)
	}
	defer tpm2.FlushContext(t.raw, h)
	return tpm2.ActivateCredentialUsingAuth(t.raw, []tpm2.AuthCommand{pw, pw}, h, tpmutil.Handle(ek.handle), c.Credential[2:], c.Secret[2:])
}
