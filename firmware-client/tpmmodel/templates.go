package tpmmodel

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// ekPolicy is the TCG default EK authPolicy, TPM2_PolicySecret(TPM_RH_ENDORSEMENT).
var ekPolicy = []byte{
	0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
	0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
}

var (
	aes128CFB = tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
	}
	noSymmetric = tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}
	noKDF       = tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull}
	ekAttrs     = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, AdminWithPolicy: true, Restricted: true, Decrypt: true}
)

// ECCEKTemplate is the TCG default ECC P-256 EK template (EK Credential
// Profile, template L-2), with an empty unique field.
func ECCEKTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: ekAttrs,
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: ekPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: aes128CFB,
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       noKDF,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}}),
	}
}

// RSAEKTemplate is the TCG default RSA-2048 EK template (template L-1),
// with an empty unique field.
func RSAEKTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: ekAttrs,
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: ekPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: aes128CFB,
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
}

// RSASRKTemplate is the RSA-2048 storage key go-attestation uses as the AK
// parent (its defaultRSASRKTemplate, which swtpm_setup --create-spk also
// creates), with an empty unique field.
func RSASRKTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, NoDA: true, Restricted: true, Decrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: aes128CFB,
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
}

// signerAttrs are go-attestation's FlagSignerDefault: a key that signs,
// created and held in the TPM. AKs add restricted and noDA.
var signerAttrs = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true}

// AKTemplateECC is go-attestation's ECDSA AK template: a restricted
// ECDSA-SHA256 P-256 signing key.
func AKTemplateECC() tpm2.TPMTPublic {
	a := signerAttrs
	a.Restricted, a.NoDA = true, true
	return eccSigner(a)
}

// AKTemplateRSA is go-attestation's RSA AK template: a restricted
// RSASSA-SHA256 RSA-2048 signing key.
func AKTemplateRSA() tpm2.TPMTPublic {
	a := signerAttrs
	a.Restricted, a.NoDA = true, true
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: a,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: noSymmetric,
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256})},
			KeyBits:   2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
	}
}

// DeviceKeyTemplate is go-attestation's ECDSA P-256 application key
// template (KeyConfig{Algorithm: ECDSA, Size: 256}): an unrestricted
// ECDSA-SHA256 signing key.
func DeviceKeyTemplate() tpm2.TPMTPublic { return eccSigner(signerAttrs) }

func eccSigner(a tpm2.TPMAObject) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: a,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: noSymmetric,
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID:   tpm2.TPMECCNistP256,
			KDF:       noKDF,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// area is a template's TPMT_PUBLIC as go-tpm marshals it, up to its
// unique field; a key's public area is that prefix followed by the key as
// the unique field. It is marshalled once per template: go-tpm's
// reflective Marshal of every area cost a third of a model enrollment's CPU.
type area struct{ prefix []byte }

func newArea(t tpm2.TPMTPublic) area {
	tail := 2 // an empty TPM2B_PUBLIC_KEY_RSA
	if t.Type == tpm2.TPMAlgECC {
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
		tail = 4 // an empty TPMS_ECC_POINT: two empty TPM2B
	} else {
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{})
	}
	b := tpm2.Marshal(&t)
	return area{prefix: b[:len(b)-tail]}
}

// ecc is the area of a P-256 key: unique is a TPMS_ECC_POINT, its
// coordinates padded to 32 bytes as a TPM writes them.
func (a area) ecc(k *ecdsa.PublicKey) []byte {
	n := len(a.prefix)
	b := make([]byte, n+2+32+2+32)
	copy(b, a.prefix)
	binary.BigEndian.PutUint16(b[n:], 32)
	k.X.FillBytes(b[n+2 : n+34])
	binary.BigEndian.PutUint16(b[n+34:], 32)
	k.Y.FillBytes(b[n+36:])
	return b
}

// rsa is the area of an RSA-2048 key: unique is the 256-byte modulus.
func (a area) rsa(n *big.Int) []byte {
	b := make([]byte, len(a.prefix)+2+256)
	copy(b, a.prefix)
	binary.BigEndian.PutUint16(b[len(a.prefix):], 256)
	n.FillBytes(b[len(a.prefix)+2:])
	return b
}

var (
	eccEKArea  = newArea(ECCEKTemplate())
	rsaEKArea  = newArea(RSAEKTemplate())
	srkArea    = newArea(RSASRKTemplate())
	eccAKArea  = newArea(AKTemplateECC())
	rsaAKArea  = newArea(AKTemplateRSA())
	deviceArea = newArea(DeviceKeyTemplate())
)

// nameOf is an object's name: nameAlg (SHA-256) || H(TPMT_PUBLIC).
func nameOf(public []byte) []byte {
	h := sha256.Sum256(public)
	return append([]byte{0x00, 0x0b}, h[:]...) // TPM_ALG_SHA256
}

// qualifiedName is QN(child) = nameAlg || H(QN(parent) || Name(child))
// (TPM 2.0 Part 1, "Qualified Name"); a hierarchy's QN is its handle.
func qualifiedName(parentQN, name []byte) []byte {
	h := sha256.New()
	h.Write(parentQN)
	h.Write(name)
	return h.Sum([]byte{0x00, 0x0b}) // TPM_ALG_SHA256
}
