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
// Every structure is built with go-tpm's tpm2 types and Marshal, so their
// layout is the TPM's. TestModelMatchesSWTPM compares them with swtpm's,
// field by field, and names what legitimately differs.
//
// Blobs (AK and key Marshal) are references to keys held by the Device
// that made them: they are valid only in this process, for that Device.
package tpmmodel
