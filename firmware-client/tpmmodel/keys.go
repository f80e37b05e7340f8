package tpmmodel

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// object is a key held by a Device: what a TPM keeps in a loaded object
// and its wrapped blob.
type object struct {
	id         uint64
	public     []byte // TPMT_PUBLIC
	name, qn   []byte // nameAlg || digest
	priv       crypto.Signer
	restricted bool
	// AKs only: TPM2_Create's creation data and TPM2_CertifyCreation's
	// attestation and signature. Device keys: TPM2_Certify's.
	createData, createAttestation, createSignature []byte
}

// newObject creates a key of template's area under the SRK.
func (d *Device) newObject(a area, rsaKey, restricted bool) (*object, error) {
	o := &object{restricted: restricted}
	if rsaKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		o.public, o.priv = a.rsa(k.N), k
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		o.public, o.priv = a.ecc(&k.PublicKey), k
	}
	o.name = nameOf(o.public)
	o.qn = qualifiedName(d.srkQN, o.name)
	return o, nil
}

// attest builds and signs a TPMS_ATTEST as TPM2_CertifyCreation, Quote and
// Certify do: magic, type, the signer's qualified name, extraData, the
// clock, the firmware version and the attested info; signed with the
// signer's scheme (ECDSA or RSASSA, SHA-256), returned as TPMT_SIGNATURE.
func (d *Device) attest(signer *object, typ tpm2.TPMST, extraData []byte, info []byte) (att, sig []byte, err error) {
	if len(extraData) > maxData {
		return nil, nil, fmt.Errorf("%w: qualifying data of %d bytes (TPM_RC_SIZE)", ErrUnsupported, len(extraData))
	}
	att = marshalAttest(typ, signer.qn, extraData, d.clockInfo(), FirmwareVersion, info)
	sig, err = signTPM(signer.priv, att)
	return att, sig, err
}

// maxData is TPM2B_DATA's capacity, sizeof(TPMT_HA): a hash algorithm ID
// and a SHA-512 digest. swtpm refuses a 67-byte nonce (TPM_RC_SIZE).
const maxData = 2 + 64

// signTPM signs SHA-256(msg) and encodes a TPMT_SIGNATURE.
func signTPM(priv crypto.Signer, msg []byte) ([]byte, error) {
	digest := sha256.Sum256(msg)
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			return nil, err
		}
		return ecdsaSignature(tpm2.TPMAlgSHA256, r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))), nil
	case *rsa.PrivateKey:
		s, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			return nil, err
		}
		return rsassaSignature(tpm2.TPMAlgSHA256, s), nil
	}
	return nil, fmt.Errorf("%w: key type %T", ErrUnsupported, priv)
}

// CreateAK creates an AK (TPM2_Create under the SRK with no PCR selection
// and no outside info) and certifies its creation with itself
// (TPM2_CertifyCreation with no qualifying data), as go-attestation's NewAK
// does.
func (d *Device) CreateAK(alg attest.Algorithm) (fwclient.AK, error) {
	var a area
	switch alg {
	case attest.ECDSA:
		a = eccAKArea
	case attest.RSA:
		a = rsaAKArea
	default:
		return nil, fmt.Errorf("%w: AK algorithm %q", ErrUnsupported, alg)
	}
	o, err := d.newObject(a, alg == attest.RSA, true)
	if err != nil {
		return nil, err
	}
	o.createData = creationData(emptyPCRDigest[:], d.srkName, d.srkQN)
	creationHash := sha256.Sum256(o.createData)
	o.createAttestation, o.createSignature, err = d.attest(o, tpm2.TPMSTAttestCreation, nil, twoNames(o.name, creationHash[:]))
	if err != nil {
		return nil, err
	}
	return &AK{d: d, o: o}, nil
}

// emptyPCRDigest is the creation data's pcrDigest for an empty PCR
// selection: the hash of no PCR values.
var emptyPCRDigest = sha256.Sum256(nil)

// AK is an attestation key of a Device. It implements fwclient.AK.
type AK struct {
	d *Device
	o *object
}

var _ fwclient.AK = (*AK)(nil)

// AttestationParameters are the AK's public area, creation data, creation
// attestation and its signature.
func (a *AK) AttestationParameters() attest.AttestationParameters {
	return attest.AttestationParameters{Public: a.o.public, CreateData: a.o.createData, CreateAttestation: a.o.createAttestation, CreateSignature: a.o.createSignature}
}

// Public is the AK's public key.
func (a *AK) Public() crypto.PublicKey { return a.o.priv.Public() }

// Name is the AK's name (nameAlg || digest).
func (a *AK) Name() []byte { return append([]byte(nil), a.o.name...) }

// Marshal returns the AK's blob (valid for this Device, in this process).
func (a *AK) Marshal() ([]byte, error) { return a.d.store(a.o), nil }

// Close flushes nothing: a blob stays loadable, as a TPM's does.
func (a *AK) Close() error { return nil }

// ActivateCredential is TPM2_ActivateCredential with the device's EK as
// protector and this AK as the activated object (TPM 2.0 Part 1 §24): it
// recovers the seed (RSA-OAEP SHA-256 with label "IDENTITY", or ECDH and
// KDFe), checks the HMAC (KDFa "INTEGRITY") over the encrypted identity
// and the AK's name, and decrypts it with AES-128-CFB (KDFa "STORAGE",
// the AK's name as context). c is as the appliance sends it: TPM2B-encoded
// credential blob and secret.
func (a *AK) ActivateCredential(ek *fwclient.Endorsement, c attest.EncryptedCredential) ([]byte, error) {
	if ek == nil || !gatehouse.PublicKeysEqual(a.d.ek.Public, ek.Public) {
		return nil, fmt.Errorf("%w: not this device's EK", ErrActivation)
	}
	idObject, err := tpm2bContents(c.Credential)
	if err != nil {
		return nil, fmt.Errorf("%w: credential blob: %v", ErrActivation, err)
	}
	encSecret, err := tpm2bContents(c.Secret)
	if err != nil {
		return nil, fmt.Errorf("%w: encrypted secret: %v", ErrActivation, err)
	}
	seed, err := a.d.seed(encSecret)
	if err != nil {
		return nil, err
	}
	integrity, err := tpm2bContents(idObject)
	if err != nil {
		return nil, fmt.Errorf("%w: integrity HMAC: %v", ErrActivation, err)
	}
	encIdentity := idObject[2+len(integrity):]
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(encIdentity)
	mac.Write(a.o.name)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, fmt.Errorf("%w: integrity check failed (TPM_RC_INTEGRITY)", ErrActivation)
	}
	block, err := aes.NewCipher(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", a.o.name, nil, 128))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(encIdentity))
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(plain, encIdentity)
	cred, err := tpm2bContents(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: credential: %v", ErrActivation, err)
	}
	return cred, nil
}

// seed recovers a credential's seed with the EK's private key.
func (d *Device) seed(encSecret []byte) ([]byte, error) {
	if d.ekRSA != nil {
		seed, err := rsa.DecryptOAEP(sha256.New(), nil, d.ekRSA, encSecret, []byte("IDENTITY\x00"))
		if err != nil {
			return nil, fmt.Errorf("%w: decrypt seed: %v", ErrActivation, err)
		}
		return seed, nil
	}
	pt, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](encSecret)
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral point: %v", ErrActivation, err)
	}
	if len(pt.X.Buffer) > 32 || len(pt.Y.Buffer) > 32 {
		return nil, fmt.Errorf("%w: ephemeral point is not P-256", ErrActivation)
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[33-len(pt.X.Buffer):33], pt.X.Buffer)
	copy(raw[65-len(pt.Y.Buffer):], pt.Y.Buffer)
	eph, err := ecdh.P256().NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral point: %v", ErrActivation, err)
	}
	z, err := d.ekECDH.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("%w: ECDH: %v", ErrActivation, err)
	}
	ekX := d.ekECDH.PublicKey().Bytes()[1:33]
	return tpm2.KDFe(crypto.SHA256, z, "IDENTITY", raw[1:33], ekX, 256), nil
}

// tpm2bContents returns a TPM2B's contents, requiring its size to fit.
func tpm2bContents(b []byte) ([]byte, error) {
	if len(b) < 2 {
		return nil, io.ErrUnexpectedEOF
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return nil, fmt.Errorf("declares %d bytes, has %d", n, len(b)-2)
	}
	return b[2 : 2+n], nil
}

// Quote is TPM2_Quote of all 24 SHA-256 PCRs over nonce with the AK's
// scheme, as go-attestation's AK.Quote asks for it: the TPMS_QUOTE_INFO
// holds one selection (SHA-256, a 3-byte bitmap of all ones) and the
// SHA-256 of the selected values in index order.
func (a *AK) Quote(nonce []byte, bank attest.HashAlg) (*attest.Quote, error) {
	if bank != attest.HashSHA256 {
		return nil, fmt.Errorf("%w: PCR bank %v", ErrUnsupported, bank)
	}
	h := sha256.New()
	for i := range numPCRs {
		h.Write(a.d.platform.pcrs[i])
	}
	att, sig, err := a.d.attest(a.o, tpm2.TPMSTAttestQuote, nonce, quoteInfo(tpm2.TPMAlgSHA256, []byte{0xff, 0xff, 0xff}, h.Sum(nil)))
	if err != nil {
		return nil, err
	}
	return &attest.Quote{Quote: att, Signature: sig}, nil
}

// NewKey creates an ECDSA P-256 device key (go-attestation's key template)
// under the SRK and certifies it with the AK (TPM2_Certify) over
// qualifyingData.
func (a *AK) NewKey(qualifyingData []byte) (fwclient.Key, error) {
	o, err := a.d.newObject(deviceArea, false, false)
	if err != nil {
		return nil, err
	}
	o.createAttestation, o.createSignature, err = a.d.attest(a.o, tpm2.TPMSTAttestCertify, qualifyingData, twoNames(o.name, o.qn))
	if err != nil {
		return nil, err
	}
	return &Key{d: a.d, o: o}, nil
}

// Key is a device key of a Device. It implements fwclient.Key.
type Key struct {
	d *Device
	o *object
}

var _ fwclient.Key = (*Key)(nil)

// Public is the key's public key.
func (k *Key) Public() crypto.PublicKey { return k.o.priv.Public() }

// Private returns a crypto.Signer for the key (no other use of the private
// key is offered, as a TPM offers none).
func (k *Key) Private(pub crypto.PublicKey) (crypto.PrivateKey, error) {
	if !gatehouse.PublicKeysEqual(k.o.priv.Public(), pub) {
		return nil, fmt.Errorf("%w: not this key's public key", ErrUnsupported)
	}
	return signer{k.o.priv}, nil
}

// CertificationParameters are the key's public area and the AK's
// TPM2_Certify of it.
func (k *Key) CertificationParameters() attest.CertificationParameters {
	return attest.CertificationParameters{Public: k.o.public, CreateAttestation: k.o.createAttestation, CreateSignature: k.o.createSignature}
}

// Marshal returns the key's blob (valid for this Device, in this process).
func (k *Key) Marshal() ([]byte, error) { return k.d.store(k.o), nil }

// Close flushes nothing: a blob stays loadable, as a TPM's does.
func (k *Key) Close() error { return nil }

// signer exposes signing only.
type signer struct{ k crypto.Signer }

func (s signer) Public() crypto.PublicKey { return s.k.Public() }
func (s signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(r, digest, opts)
}
