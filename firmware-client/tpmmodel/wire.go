package tpmmodel

import (
	"encoding/binary"

	"github.com/google/go-tpm/tpm2"
)

// Encoders for the structures the model marshals on every operation
// (TPMS_ATTEST and its infos, TPMT_SIGNATURE, TPMS_CREATION_DATA). go-tpm's
// reflective Marshal of them was over a quarter of a model enrollment's
// CPU, which a load generator pays on the cores it measures. go-tpm stays
// the reference: TestWireMatchesGoTPM checks that each encoder's bytes are
// go-tpm's Marshal of the same values, and TestModelMatchesSWTPM parses
// the results with go-tpm and compares them with swtpm's.

func appendTPM2B(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// marshalAttest is TPMS_ATTEST: magic, type, qualifiedSigner, extraData,
// clockInfo, firmwareVersion, then the attested info (already encoded).
func marshalAttest(typ tpm2.TPMST, qualifiedSigner, extraData []byte, clock tpm2.TPMSClockInfo, firmware uint64, info []byte) []byte {
	b := make([]byte, 0, 4+2+2+len(qualifiedSigner)+2+len(extraData)+17+8+len(info))
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMGeneratedValue))
	b = binary.BigEndian.AppendUint16(b, uint16(typ))
	b = appendTPM2B(b, qualifiedSigner)
	b = appendTPM2B(b, extraData)
	b = binary.BigEndian.AppendUint64(b, clock.Clock)
	b = binary.BigEndian.AppendUint32(b, clock.ResetCount)
	b = binary.BigEndian.AppendUint32(b, clock.RestartCount)
	safe := byte(0)
	if clock.Safe {
		safe = 1
	}
	b = append(b, safe)
	b = binary.BigEndian.AppendUint64(b, firmware)
	return append(b, info...)
}

// twoNames is TPMS_CREATION_INFO (objectName, creationHash) and
// TPMS_CERTIFY_INFO (name, qualifiedName): two TPM2Bs.
func twoNames(a, b []byte) []byte {
	return appendTPM2B(appendTPM2B(make([]byte, 0, 4+len(a)+len(b)), a), b)
}

// quoteInfo is TPMS_QUOTE_INFO with one PCR selection.
func quoteInfo(hash tpm2.TPMAlgID, bitmap, digest []byte) []byte {
	b := make([]byte, 0, 4+2+1+len(bitmap)+2+len(digest))
	b = binary.BigEndian.AppendUint32(b, 1) // TPML_PCR_SELECTION.count
	b = binary.BigEndian.AppendUint16(b, uint16(hash))
	b = append(b, byte(len(bitmap)))
	b = append(b, bitmap...)
	return appendTPM2B(b, digest)
}

// ecdsaSignature is a TPMT_SIGNATURE of ECDSA with hash.
func ecdsaSignature(hash tpm2.TPMAlgID, r, s []byte) []byte {
	b := make([]byte, 0, 4+4+len(r)+len(s))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgECDSA))
	b = binary.BigEndian.AppendUint16(b, uint16(hash))
	return appendTPM2B(appendTPM2B(b, r), s)
}

// rsassaSignature is a TPMT_SIGNATURE of RSASSA with hash.
func rsassaSignature(hash tpm2.TPMAlgID, sig []byte) []byte {
	b := make([]byte, 0, 6+len(sig))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgRSASSA))
	b = binary.BigEndian.AppendUint16(b, uint16(hash))
	return appendTPM2B(b, sig)
}

// creationData is TPMS_CREATION_DATA with an empty PCR selection, locality
// zero and no outside info: what TPM2_Create returns for go-attestation's
// AKs.
func creationData(pcrDigest, parentName, parentQN []byte) []byte {
	b := make([]byte, 0, 4+2+len(pcrDigest)+1+2+2+len(parentName)+2+len(parentQN)+2)
	b = binary.BigEndian.AppendUint32(b, 0) // TPML_PCR_SELECTION.count
	b = appendTPM2B(b, pcrDigest)
	b = append(b, 1) // TPMA_LOCALITY: TPM_LOC_ZERO
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgSHA256))
	b = appendTPM2B(b, parentName)
	b = appendTPM2B(b, parentQN)
	return appendTPM2B(b, nil)
}
