// Package api defines Gatehouse's device-facing wire protocol (HTTPS, JSON,
// versioned under /v1). Both the appliance and firmware-client import it; it
// has no dependencies beyond the standard library so the device binary stays
// small.
//
// Enrollment is two round trips:
//
//  1. POST /v1/enroll/challenge: the device sends its EK (certificate and/or
//     public key), the parameters of a fresh attestation key (AK) and
//     untrusted claims. The appliance checks the EK chain and the AK, and
//     answers with a credential-activation challenge bound to that EK and AK,
//     a fresh nonce, and a sealed session token.
//  2. POST /v1/enroll/complete: the device returns the activated secret, a
//     quote over its PCRs with the nonce, optionally its event log, the
//     TPM2_Certify parameters of a new device key (qualifying data from
//     CertifyQualifyingData) and a CSR signed by that key. The appliance
//     verifies everything, commits the records through Raft and only then
//     issues the certificate.
//
// Byte fields are standard base64 in JSON, as encoding/json does for []byte.
package api

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"
)

// Paths of the device API.
const (
	PathChallenge = "/v1/enroll/challenge"
	PathComplete  = "/v1/enroll/complete"
	PathWhoAmI    = "/v1/whoami"
	// Over mTLS with the device certificate:
	PathRenewChallenge = "/v1/renew/challenge"
	PathRenew          = "/v1/renew"
	PathConfig         = "/v1/config"
	// PathCRL serves the DER CRL (application/pkix-crl) to anyone.
	PathCRL = "/crl"
	// The attestation CA for ACME device-attest-01 (the step CLI's
	// --attestation-ca-url is https://HOST:PORT/attestation), anonymous.
	PathAttestationAttest = "/attestation/attest"
	PathAttestationSecret = "/attestation/secret"
)

// Request body limits. A real UEFI event log is tens of kilobytes; 1 MiB
// leaves room for large ones while bounding memory per request.
const (
	MaxChallengeBody = 64 << 10
	MaxCompleteBody  = 1 << 20
)

// ContentTypeProblem is the media type of RFC 9457 error bodies.
const ContentTypeProblem = "application/problem+json"

// Claims are what the device says about itself. They are untrusted: recorded
// with the attestation, never used to decide.
type Claims struct {
	Serial          string `json:"serial,omitempty"`
	Model           string `json:"model,omitempty"`
	FirmwareVersion string `json:"firmware_version,omitempty"`
}

// KeyParameters carries a TPM key's public area and the TPM's signed
// statement about it. For an AK the statement is the creation attestation
// (self-signed, TPMS_ATTEST tag ATTEST_CREATION); for a device key it is a
// TPM2_Certify by the AK (tag ATTEST_CERTIFY).
type KeyParameters struct {
	Public            []byte `json:"public"`             // TPMT_PUBLIC
	CreateData        []byte `json:"create_data"`        // TPMS_CREATION_DATA
	CreateAttestation []byte `json:"create_attestation"` // TPMS_ATTEST
	CreateSignature   []byte `json:"create_signature"`   // TPMT_SIGNATURE
}

// ChallengeRequest opens an enrollment session.
type ChallengeRequest struct {
	// EKCertificate is the EK certificate as read from NV (DER, NV padding
	// allowed). EKPublic is the EK public key (PKIX DER). At least one is
	// required; when both are sent they must match.
	EKCertificate []byte `json:"ek_certificate,omitempty"`
	EKPublic      []byte `json:"ek_public,omitempty"`
	// EKPublicArea is the EK's TPM2B_PUBLIC as the TPM reports it. Send it
	// for any EK but the default RSA-2048 one: its name algorithm and
	// symmetric scheme decide how the credential must be wrapped (the
	// P-384 EK swtpm and some TPMs provision uses SHA-384 and AES-256).
	EKPublicArea []byte        `json:"ek_public_area,omitempty"`
	AK           KeyParameters `json:"ak"`
	Claims       Claims        `json:"claims"`
}

// Credential is a TPM2_MakeCredential output for the device to activate.
type Credential struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// ChallengeResponse is the appliance's challenge.
type ChallengeResponse struct {
	SessionToken string     `json:"session_token"`
	Nonce        []byte     `json:"nonce"`
	Credential   Credential `json:"credential"`
	ExpiresAt    time.Time  `json:"expires_at"`
}

// Quote is a TPM2_Quote and its signature.
type Quote struct {
	Quote     []byte `json:"quote"`     // TPMS_ATTEST
	Signature []byte `json:"signature"` // TPMT_SIGNATURE
}

// PCR is one PCR value as read from the TPM.
type PCR struct {
	Index  int    `json:"index"`
	Bank   string `json:"bank"` // "sha1" | "sha256" | "sha384" | "sha512"
	Digest []byte `json:"digest"`
}

// CompleteRequest finishes an enrollment session.
type CompleteRequest struct {
	SessionToken    string        `json:"session_token"`
	ActivatedSecret []byte        `json:"activated_secret"`
	Quote           Quote         `json:"quote"`
	PCRs            []PCR         `json:"pcrs"`
	EventLog        []byte        `json:"event_log,omitempty"`
	DeviceKey       KeyParameters `json:"device_key"`
	CSR             []byte        `json:"csr"` // PKCS#10 DER, signed by the device key
}

// CompleteResponse carries the device's identity.
type CompleteResponse struct {
	DeviceID      string `json:"device_id"`
	AttestationID uint64 `json:"attestation_id"`
	// Certificate is the leaf (DER); Chain holds the intermediates, leaf's
	// issuer first. The root is not included: the device already pins it.
	Certificate   []byte          `json:"certificate"`
	Chain         [][]byte        `json:"chain"`
	Configuration json.RawMessage `json:"configuration"`
}

// Pending answers complete (HTTP 202, header Retry-After) when the device's
// group wants an operator's approval. The device enrolls again after
// RetryAfterSeconds; once approved, that enrollment gets a certificate.
// It is returned as an error by clients.
type Pending struct {
	DeviceID          string `json:"device_id"`
	AttestationID     uint64 `json:"attestation_id"`
	Status            string `json:"status"` // "pending"
	RetryAfterSeconds int    `json:"retry_after_seconds"`
	Detail            string `json:"detail"`
}

func (p *Pending) Error() string {
	return fmt.Sprintf("device %s is pending approval (attestation %d): %s", p.DeviceID, p.AttestationID, p.Detail)
}

// RenewChallengeResponse opens a renewal: a fresh nonce for the quote.
type RenewChallengeResponse struct {
	SessionToken string    `json:"session_token"`
	Nonce        []byte    `json:"nonce"`
	ExpiresAt    time.Time `json:"expires_at"`
}

// RenewRequest re-attests: the enrolled AK's public area (its hash must
// match the registry's), a quote over the nonce, the PCRs, the event log,
// and a CSR signed by the current device key (the certified TPM key).
type RenewRequest struct {
	SessionToken string `json:"session_token"`
	AKPublic     []byte `json:"ak_public"` // TPMT_PUBLIC
	Quote        Quote  `json:"quote"`
	PCRs         []PCR  `json:"pcrs"`
	EventLog     []byte `json:"event_log,omitempty"`
	CSR          []byte `json:"csr"`
}

// ConfigResponse is the device's effective configuration: the group's,
// with the device's overrides merged over it.
type ConfigResponse struct {
	DeviceID      string          `json:"device_id"`
	Group         string          `json:"group"`
	PolicyVersion int             `json:"policy_version"`
	DeviceVersion int             `json:"device_version"`
	Configuration json.RawMessage `json:"configuration"`
}

// WhoAmIResponse answers GET /v1/whoami for an mTLS-authenticated device.
type WhoAmIResponse struct {
	DeviceID          string `json:"device_id"`
	Status            string `json:"status"`
	CertificateSerial string `json:"certificate_serial"`
}

// CertifyQualifyingData is the qualifying data the device passes to
// TPM2_Certify for its device key. Binding it to the session nonce proves the
// key was certified for this enrollment and not replayed from another one.
// The domain-separation prefix keeps it distinct from the quote's nonce.
func CertifyQualifyingData(nonce []byte) []byte {
	h := sha256.New()
	h.Write([]byte("gatehouse/v1/certify\x00"))
	h.Write(nonce)
	return h.Sum(nil)
}
