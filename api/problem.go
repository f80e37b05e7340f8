package api

import (
	"fmt"
	"net/http"
	"time"
)

// Problem is an RFC 9457 problem details body. Code is stable and
// machine-readable; Detail is for humans and may change.
type Problem struct {
	Type          string `json:"type"`
	Title         string `json:"title"`
	Status        int    `json:"status"`
	Detail        string `json:"detail,omitempty"`
	Code          string `json:"code"`
	AttestationID uint64 `json:"attestation_id,omitempty"`
	// RetryAfter is the answer's Retry-After header, as a client read it
	// (429 and 503 carry one); not part of the body.
	RetryAfter time.Duration `json:"-"`
}

// Error makes a Problem usable as a Go error on the client side.
func (p *Problem) Error() string {
	return fmt.Sprintf("%s (%d %s): %s", p.Code, p.Status, http.StatusText(p.Status), p.Detail)
}

// StatusCode returns the HTTP status, like step-ca's errors.
func (p *Problem) StatusCode() int { return p.Status }

// ProblemType returns the type URI for a code.
func ProblemType(code string) string { return "urn:gatehouse:problem:" + code }

// Stable problem codes.
const (
	// 400: the request is not well formed.
	CodeMalformed = "malformed_request"
	// 413: the body is larger than the endpoint allows.
	CodeTooLarge = "body_too_large"
	// 415: a JSON endpoint got a body not declared application/json.
	CodeUnsupportedMediaType = "unsupported_media_type"

	// 403: verification failed.
	CodeEKInvalid          = "ek_invalid"            // EK certificate or public key unusable
	CodeEKUntrusted        = "ek_untrusted"          // EK chain does not reach a manufacturer root
	CodeAKInvalid          = "ak_invalid"            // AK is not a restricted TPM-resident signing key
	CodeTokenInvalid       = "session_token_invalid" // tampered or not ours
	CodeTokenExpired       = "session_token_expired"
	CodeActivationFailed   = "activation_failed" // wrong activated secret: AK and EK are not in one TPM
	CodeQuoteNonceMismatch = "quote_nonce_mismatch"
	CodePCRMismatch        = "pcr_mismatch" // PCR values do not match the quoted digest
	CodeQuoteInvalid       = "quote_invalid"
	CodeEventLogInvalid    = "event_log_invalid"
	CodeCertifyInvalid     = "device_key_not_certified"
	CodeCertifyBinding     = "device_key_binding_mismatch" // certify qualifying data not from this session
	CodeCSRInvalid         = "csr_invalid"
	CodeCSRKeyMismatch     = "csr_key_mismatch"
	CodePolicyDenied       = "policy_denied"      // genuine evidence the enrollment policy refuses
	CodeDeviceInactive     = "device_inactive"    // the device is disabled, quarantined, revoked or deleted
	CodeIllegalTransition  = "illegal_transition" // a device operation its state does not allow
	CodeUnauthenticated    = "unauthenticated"
	CodeCertificateRevoked = "certificate_revoked"        // 401: the client certificate is revoked
	CodeForbidden          = "forbidden"                  // 403: the admin role does not allow this
	CodeReprovisionRefused = "reprovision_refused"        // same EK with a new AK, and the group rejects that
	CodeClaimInvalid       = "claim_invalid"              // a claimed value cannot be placed in a certificate name (e.g. a serial "*" in a DNS name)
	CodeRenewalIdentity    = "renewal_identity_mismatch"  // the renewal's AK is not the one enrolled for the certificate's device
	CodeApprovalPending    = "approval_pending"           // 202 on complete: see Pending
	CodeACMENotAllowed     = "acme_not_allowed"           // the device's group does not admit ACME device-attest (attestation CA)
	CodeSecretUnknown      = "attestation_secret_unknown" // attestation CA: the secret matches no pending activation on this node
	CodeJoinTokenInvalid   = "join_token_invalid"
	CodeJoinTokenExpired   = "join_token_expired"
	CodeJoinTokenUsed      = "join_token_used"
	CodeUnknownCommand     = "unknown_command" // a forwarded Raft command this leader cannot apply

	// 403: a PCR value outside the quote's bank and selection.
	CodePCRNotQuoted = "pcr_not_quoted"
	// CodeBackupInvalid: a restore refused because the archive is not an
	// intact backup signed by this cluster's CA (400), or is another
	// cluster's (409).
	CodeBackupInvalid = "backup_invalid"
	// CodePolicyInvalid: 400, a policy document policy apply or test refuses.
	CodePolicyInvalid = "policy_invalid"
	// CodeEKRootInvalid: 400, a manufacturer CA `ekroots add` refuses (not
	// a CA certificate, unparseable, over the set's bounds).
	CodeEKRootInvalid = "ek_root_invalid"
	// CodeEKRootLast: 409, removing the last manufacturer CA.
	CodeEKRootLast = "ek_root_last"
	// CodeSettingsInvalid: 400, cluster settings `settings set` refuses.
	CodeSettingsInvalid = "settings_invalid"
	// CodeSettingsConflict: 409, the settings changed since they were read.
	CodeSettingsConflict = "settings_conflict"
	// CodeBuildTooOld: 409, a joining node's build does not apply the
	// cluster's committed feature version (install the build the cluster runs).
	CodeBuildTooOld = "build_too_old"
	// CodeFeatureVersion: 409, a cluster feature version this build does
	// not apply (a forwarded raise beyond the leader's build).
	CodeFeatureVersion = "feature_version_unsupported"
	// CodeFeatureDisabled: 409, a command that needs a newer cluster
	// feature version than the committed one (a rolling upgrade not done).
	CodeFeatureDisabled = "feature_not_enabled"
	// CodeHalted: 503, the node's registry halted at an entry its build
	// does not understand (upgrade the node).
	CodeHalted = "registry_halted"

	// 404
	CodeNotFound = "not_found"

	// 409: replay or conflict.
	CodeSessionReplayed = "session_replayed"

	// 5xx
	CodeInternal    = "internal_error"
	CodeUnavailable = "unavailable" // no leader, retry
	// CodeStorageFull (503): the answering node's disk is full (or the
	// leader's, for a forwarded write): nothing was written; retry, on
	// another node or later.
	CodeStorageFull = "storage_full"

	// 429: too many requests from this client without a client
	// certificate; the Retry-After header says when to retry.
	CodeRateLimited = "rate_limited"
	// 503: the node has as many enrollments in progress as it takes;
	// Retry-After gives this client its own time to come back.
	CodeOverloaded = "overloaded"
)
