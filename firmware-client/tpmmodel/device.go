package tpmmodel

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// Errors of the model, each a TPM failure it stands for.
var (
	// ErrUnknownBlob: a blob this Device did not make (TPM_RC_INTEGRITY on Load).
	ErrUnknownBlob = errors.New("tpmmodel: blob was not made by this device")
	// ErrActivation: the credential is not for this EK and AK (TPM_RC_INTEGRITY
	// or TPM_RC_VALUE on ActivateCredential).
	ErrActivation = errors.New("tpmmodel: credential activation failed")
	// ErrUnsupported: an operation or parameter the model does not model.
	ErrUnsupported = errors.New("tpmmodel: not modelled")
)

// Values the model reports where a TPM reports its own state. They are not
// evidence anywhere (the verifier checks neither), and TestModelMatchesSWTPM
// names them as legitimate differences.
const (
	// FirmwareVersion is TPMS_ATTEST.firmwareVersion.
	FirmwareVersion uint64 = 0x20191023_00000001
	numPCRs                = 24
)

// Platform is a booted platform: the SHA-256 PCR values a TPM holds after
// the firmware measured an event log, and the log. Computing it once and
// sharing it among many devices is what makes a device cheap. It is
// read-only after NewPlatform.
type Platform struct {
	log  []byte
	pcrs [numPCRs][]byte
}

// NewPlatform replays eventLog's SHA-256 events from reset values (zero, and
// all ones for PCRs 17-22, as a PC Client TPM starts), including a
// StartupLocality's effect on PCR 0, as the verifier replays it. A nil log
// is a platform that measured nothing and has no log to send.
func NewPlatform(eventLog []byte) (*Platform, error) {
	p := &Platform{log: eventLog}
	for i := range p.pcrs {
		p.pcrs[i] = make([]byte, sha256.Size)
		if i >= 17 && i <= 22 {
			for j := range p.pcrs[i] {
				p.pcrs[i][j] = 0xff
			}
		}
	}
	if eventLog == nil {
		return p, nil
	}
	l, err := gatehouse.ParseEventLog(eventLog)
	if err != nil {
		return nil, err
	}
	replayed := l.Replay("sha256")
	if replayed == nil {
		return nil, fmt.Errorf("%w: the event log has no SHA-256 bank", ErrUnsupported)
	}
	for i, v := range replayed {
		if i < 0 || i >= numPCRs {
			return nil, fmt.Errorf("tpmmodel: the log measures PCR %d", i)
		}
		p.pcrs[i] = bytes.Clone(v)
	}
	return p, nil
}

// PCR returns one SHA-256 PCR value.
func (p *Platform) PCR(i int) []byte { return bytes.Clone(p.pcrs[i]) }

// Device is one simulated TPM: an EK with its certificate, and the AKs and
// device keys created in it. It implements fwclient.Device. Like a TPM, it
// is used by one goroutine at a time (the lock only keeps misuse from
// corrupting it).
type Device struct {
	platform *Platform
	kind     string // fwclient.EKRSA2048 or fwclient.EKECCP256
	ek       fwclient.Endorsement
	ekArea   []byte // TPMT_PUBLIC
	ekRSA    *rsa.PrivateKey
	ekECDH   *ecdh.PrivateKey
	srkName  []byte // TPM2B_NAME contents: nameAlg || digest
	srkQN    []byte
	born     time.Time

	mu      sync.Mutex
	objects map[uint64]*object
	next    uint64
}

var _ fwclient.Device = (*Device)(nil)

// NewDevice makes a fresh device of this manufacturer on platform p with
// an EK of kind fwclient.EKECCP256 or fwclient.EKRSA2048. Generating an
// RSA-2048 EK costs tens to hundreds of milliseconds; ECC costs tens of
// microseconds.
func (m *Manufacturer) NewDevice(p *Platform, kind string) (*Device, error) {
	d := &Device{platform: p, kind: kind, born: time.Now(), objects: map[uint64]*object{}}
	var certPub crypto.PublicKey
	switch kind {
	case fwclient.EKECCP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		if d.ekECDH, err = k.ECDH(); err != nil {
			return nil, err
		}
		d.ekArea = eccEKArea.ecc(&k.PublicKey)
		certPub = &k.PublicKey
	case fwclient.EKRSA2048:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		d.ekRSA = k
		d.ekArea = rsaEKArea.rsa(k.N)
		certPub = &k.PublicKey
	default:
		return nil, fmt.Errorf("%w: EK %q (want %s or %s)", ErrUnsupported, kind, fwclient.EKECCP256, fwclient.EKRSA2048)
	}
	cert, err := m.certificate(certPub, kind == fwclient.EKECCP256)
	if err != nil {
		return nil, fmt.Errorf("tpmmodel: EK certificate: %w", err)
	}
	d.ek = fwclient.Endorsement{Certificate: cert, Public: certPub}
	if kind == fwclient.EKECCP256 {
		// As the client sends a non-default EK: with its public area, which
		// the appliance needs to wrap a credential to an ECC EK.
		d.ek.Area = append(binary.BigEndian.AppendUint16(nil, uint16(len(d.ekArea))), d.ekArea...) // TPM2B_PUBLIC
	}
	// The SRK: the TCG RSA SRK template with a random modulus. Nothing is
	// wrapped to it; its name makes the AK's creation data and qualified
	// names what a TPM's are.
	mod := make([]byte, 256)
	if _, err := rand.Read(mod); err != nil {
		return nil, err
	}
	mod[0] |= 0x80
	d.srkName = nameOf(srkArea.rsa(new(big.Int).SetBytes(mod)))
	d.srkQN = qualifiedName(binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHOwner)), d.srkName)
	return d, nil
}

// EKPublic is the EK's TPMT_PUBLIC.
func (d *Device) EKPublic() (*tpm2.TPMTPublic, error) {
	return tpm2.Unmarshal[tpm2.TPMTPublic](d.ekArea)
}

// SRKName is the modelled SRK's name (nameAlg || digest).
func (d *Device) SRKName() []byte { return bytes.Clone(d.srkName) }

// Endorsement returns the device's EK; kind "" or the device's own kind.
func (d *Device) Endorsement(kind string) (*fwclient.Endorsement, error) {
	if kind != "" && kind != d.kind {
		return nil, fmt.Errorf("%w: this device has an %s EK, not %s", ErrUnsupported, d.kind, kind)
	}
	e := d.ek
	return &e, nil
}

// PCRBanks reports the one bank the model has, SHA-256.
func (d *Device) PCRBanks() ([]attest.HashAlg, error) {
	return []attest.HashAlg{attest.HashSHA256}, nil
}

// PCRs reads all 24 SHA-256 PCRs.
func (d *Device) PCRs(alg attest.HashAlg) ([]attest.PCR, error) {
	if alg != attest.HashSHA256 {
		return nil, fmt.Errorf("%w: PCR bank %v", ErrUnsupported, alg)
	}
	out := make([]attest.PCR, numPCRs)
	for i := range out {
		out[i] = attest.PCR{Index: i, Digest: d.platform.PCR(i), DigestAlg: crypto.SHA256}
	}
	return out, nil
}

// MeasurementLog returns the platform's event log.
func (d *Device) MeasurementLog() ([]byte, error) {
	if d.platform.log == nil {
		return nil, fwclient.ErrNoEventLog
	}
	return d.platform.log, nil
}

// clockInfo is TPMS_CLOCK_INFO: milliseconds since the device was made, no
// resets or restarts, clock safe.
func (d *Device) clockInfo() tpm2.TPMSClockInfo {
	return tpm2.TPMSClockInfo{Clock: uint64(time.Since(d.born).Milliseconds()), Safe: true}
}

// store keeps an object and returns its blob.
func (d *Device) store(o *object) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if o.id == 0 {
		d.next++
		o.id = d.next
		d.objects[o.id] = o
	}
	return binary.BigEndian.AppendUint64([]byte(blobMagic), o.id)
}

const blobMagic = "tpmmodel-blob\x00"

func (d *Device) load(blob []byte) (*object, error) {
	if len(blob) != len(blobMagic)+8 || string(blob[:len(blobMagic)]) != blobMagic {
		return nil, ErrUnknownBlob
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	o, ok := d.objects[binary.BigEndian.Uint64(blob[len(blobMagic):])]
	if !ok {
		return nil, ErrUnknownBlob
	}
	return o, nil
}

// OpenAK loads an AK from its blob.
func (d *Device) OpenAK(blob []byte) (fwclient.AK, error) {
	o, err := d.load(blob)
	if err != nil {
		return nil, err
	}
	if !o.restricted {
		return nil, fmt.Errorf("%w: the blob is a device key, not an AK", ErrUnknownBlob)
	}
	return &AK{d: d, o: o}, nil
}

// OpenKey loads a device key from its blob.
func (d *Device) OpenKey(blob []byte) (fwclient.Key, error) {
	o, err := d.load(blob)
	if err != nil {
		return nil, err
	}
	if o.restricted {
		return nil, fmt.Errorf("%w: the blob is an AK, not a device key", ErrUnknownBlob)
	}
	return &Key{d: d, o: o}, nil
}
