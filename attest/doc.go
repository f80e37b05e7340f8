// Package attest verifies TPM 2.0 evidence for Gatehouse enrollment. It is
// pure: no network, no storage, no clock other than what callers pass in.
//
// # What a successful verification guarantees
//
//   - EK: the endorsement key's certificate chains, by signature, to one of the
//     configured manufacturer roots (VerifyEK). The key it certifies is the EK
//     the credential challenge is encrypted to.
//   - AK: the attestation key is a restricted signing key that the TPM says it
//     created itself (fixedTPM, fixedParent, sensitiveDataOrigin), and its
//     creation statement is self-signed (VerifyAK).
//   - Activation: the device decrypted a TPM2_MakeCredential challenge bound
//     to both the EK and the AK's name, which only the TPM holding that EK can
//     do for that AK; so the AK lives in the same TPM as the EK. The secret is
//     compared in constant time.
//   - Quote: the PCR values were signed by that AK over the session nonce, so
//     they are fresh and came from that TPM.
//   - Event log (when sent): replaying it reproduces the quoted PCRs.
//   - Device key: TPM2_Certify by the AK shows the key is in the same TPM,
//     non-exportable (fixedTPM, fixedParent), TPM-generated
//     (sensitiveDataOrigin) and not restricted; its qualifying data binds the
//     certification to this session. The CSR is signed by that very key.
//
// # What it does not guarantee
//
//   - It does not judge whether the boot state is acceptable: that is policy.
//   - Claims (serial, model, firmware version) are never verified.
//   - Revocation of EK certificates is not checked (manufacturers rarely
//     publish CRLs for EKs).
//   - A TPM whose EK private key has been extracted, or a manufacturer CA that
//     signs for non-TPMs, defeats every check here: trust is rooted in them.
package attest
