// Package tpmmodel is a software model of a TPM 2.0, for TESTS AND LOAD
// GENERATION ONLY.
//
// It is not a TPM. Its keys (EK, AK, device key) are ordinary keys in this
// process's memory; anyone with the process can read or use them, and a
// device it models proves nothing about any hardware. Its only purpose is
// to let a load generator (and tests) drive the real enrollment and renewal
// protocol code of firmware-client against a real appliance with thousands
// of simulated devices, at a cost far below one swtpm process per device.
//
// What it models, and only that: what the Gatehouse enrollment and renewal
// protocols use.
//   - An EK, RSA-2048 or ECC P-256, with the TCG default EK template's public
//     area (templates L-1 and L-2 of the TCG EK Credential Profile: the
//     attributes, policy digest, AES-128-CFB symmetric and null scheme that
//     swtpm's EK has), and an EK certificate issued by a test manufacturer
//     CA (Manufacturer) in swtpm_localca's format: critical SAN with TPM
//     manufacturer, model and version, the EK EKU, TPM specification
//     attributes.
//   - AKs: restricted signing keys (ECDSA P-256 or RSA-2048) with the public
//     area go-attestation's AK template gives, the TPMS_CREATION_DATA
//     TPM2_Create returns and the TPMS_ATTEST and signature of
//     TPM2_CertifyCreation, under a modelled SRK (its public area is the TCG
//     RSA SRK template with a random modulus: the model wraps nothing to it,
//     only its name is used, in the creation data and qualified names).
//   - TPM2_ActivateCredential in software: the seed is decrypted with
//     RSA-OAEP (SHA-256, label "IDENTITY") or derived by ECDH and KDFe, then
//     KDFa gives the HMAC and AES-CFB keys (TPM 2.0 Part 1 §24).
//   - TPM2_Quote of all 24 SHA-256 PCRs, the PCRs being those a real event
//     log replays to (Platform), as if the firmware had measured it.
//   - TPM2_Create of an ECDSA P-256 device key (go-attestation's key
//     template) and TPM2_Certify of it by the AK with qualifying data.
//
// Layouts are go-tpm's: public areas are go-tpm's Marshal of the templates
// (once per template) completed with each key, and the structures written
// on every operation (TPMS_ATTEST, TPMT_SIGNATURE, TPMS_CREATION_DATA) are
// encoded directly but checked byte for byte against go-tpm's Marshal
// (TestWireMatchesGoTPM). TestModelMatchesSWTPM compares them with
// swtpm's, field by field, and names what legitimately differs.
//
// Use from a load generator (fwclient's real protocol code does the rest):
//
//	m, _ := swtpm.LoadManufacturer(dir) // the manufacturer the cluster trusts
//	key, _ := m.SigningKey()
//	mfr, _ := tpmmodel.NewManufacturer(m.Intermediate, key)
//	plat, _ := tpmmodel.NewPlatform(eventLog) // once, shared by all devices
//	dev, _ := mfr.NewDevice(plat, fwclient.EKECCP256)
//	id, _ := client.Enroll(ctx, dev, fwclient.WithAKAlgorithm(attest.ECDSA))
//	id, _ = client.Renew(ctx, dev, id, nil)
//
// A Manufacturer and a Platform are safe for concurrent use; a Device is
// used by one goroutine at a time, like a TPM. BenchmarkModelEnrollment and
// BenchmarkModelRenewal measure what the model costs its caller.
//
// Blobs (AK and key Marshal) are references to keys held by the Device
// that made them: they are valid only in this process, for that Device.
package tpmmodel
