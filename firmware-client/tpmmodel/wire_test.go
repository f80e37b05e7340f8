package tpmmodel

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// The model's encoders produce exactly go-tpm's Marshal of the same
// values: go-tpm is the reference for every layout the model writes.
func TestWireMatchesGoTPM(t *testing.T) {
	b := func(n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n) }
	name, qn, digest, nonce := append([]byte{0, 0x0b}, b(32, 1)...), append([]byte{0, 0x0b}, b(32, 2)...), b(32, 3), b(20, 4)
	clock := tpm2.TPMSClockInfo{Clock: 0x0102030405060708, ResetCount: 9, RestartCount: 10, Safe: true}

	check := func(what string, got []byte, want tpm2.Marshallable) {
		t.Helper()
		if w := tpm2.Marshal(want); !bytes.Equal(got, w) {
			t.Errorf("%s:\nmodel  %x\ngo-tpm %x", what, got, w)
		}
	}
	for _, tc := range []struct {
		what  string
		typ   tpm2.TPMST
		extra []byte
		info  []byte
		union tpm2.TPMUAttest
	}{
		{"creation", tpm2.TPMSTAttestCreation, nil, twoNames(name, digest),
			tpm2.NewTPMUAttest(tpm2.TPMSTAttestCreation, &tpm2.TPMSCreationInfo{ObjectName: tpm2.TPM2BName{Buffer: name}, CreationHash: tpm2.TPM2BDigest{Buffer: digest}})},
		{"quote", tpm2.TPMSTAttestQuote, nonce, quoteInfo(tpm2.TPMAlgSHA256, []byte{0xff, 0xff, 0xff}, digest),
			tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
				PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0xff, 0xff, 0xff}}}},
				PCRDigest: tpm2.TPM2BDigest{Buffer: digest}})},
		{"certify", tpm2.TPMSTAttestCertify, nonce, twoNames(name, qn),
			tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{Name: tpm2.TPM2BName{Buffer: name}, QualifiedName: tpm2.TPM2BName{Buffer: qn}})},
	} {
		check("TPMS_ATTEST "+tc.what, marshalAttest(tc.typ, qn, tc.extra, clock, FirmwareVersion, tc.info), &tpm2.TPMSAttest{
			Magic: tpm2.TPMGeneratedValue, Type: tc.typ, QualifiedSigner: tpm2.TPM2BName{Buffer: qn}, ExtraData: tpm2.TPM2BData{Buffer: tc.extra},
			ClockInfo: clock, FirmwareVersion: FirmwareVersion, Attested: tc.union,
		})
	}
	check("TPMS_CREATION_DATA", creationData(digest, name, qn), &tpm2.TPMSCreationData{
		PCRSelect: tpm2.TPMLPCRSelection{}, PCRDigest: tpm2.TPM2BDigest{Buffer: digest}, Locality: tpm2.TPMALocality{TPMLocZero: true},
		ParentNameAlg: tpm2.TPMAlgSHA256, ParentName: tpm2.TPM2BName{Buffer: name}, ParentQualifiedName: tpm2.TPM2BName{Buffer: qn},
	})
	check("TPMT_SIGNATURE ECDSA", ecdsaSignature(tpm2.TPMAlgSHA256, b(32, 5), b(32, 6)), &tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: b(32, 5)}, SignatureS: tpm2.TPM2BECCParameter{Buffer: b(32, 6)}}),
	})
	check("TPMT_SIGNATURE RSASSA", rsassaSignature(tpm2.TPMAlgSHA256, b(256, 7)), &tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgRSASSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: b(256, 7)}}),
	})

	// Public areas: the go-tpm prefix completed with a key is go-tpm's
	// Marshal of the template with that key as unique.
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what     string
		template tpm2.TPMTPublic
		a        area
	}{
		{"ECC EK", ECCEKTemplate(), eccEKArea}, {"ECDSA AK", AKTemplateECC(), eccAKArea}, {"device key", DeviceKeyTemplate(), deviceArea},
		{"RSA EK", RSAEKTemplate(), rsaEKArea}, {"RSA AK", AKTemplateRSA(), rsaAKArea}, {"SRK", RSASRKTemplate(), srkArea},
	} {
		tmpl := tc.template
		var got []byte
		if tmpl.Type == tpm2.TPMAlgECC {
			got = tc.a.ecc(&ek.PublicKey)
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: ek.X.FillBytes(make([]byte, 32))}, Y: tpm2.TPM2BECCParameter{Buffer: ek.Y.FillBytes(make([]byte, 32))}})
		} else {
			got = tc.a.rsa(rk.N)
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: rk.N.FillBytes(make([]byte, 256))})
		}
		check("TPMT_PUBLIC "+tc.what, got, &tmpl)
		n, err := tpm2.ObjectName(&tmpl)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(nameOf(got), n.Buffer) {
			t.Errorf("%s name: model %x, go-tpm %x", tc.what, nameOf(got), n.Buffer)
		}
	}
}
