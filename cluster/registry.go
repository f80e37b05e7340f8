package cluster

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// Sentinel errors.
var (
	// ErrNotFound: no such device or attestation record.
	ErrNotFound = errors.New("not found")
	// ErrSessionUsed: an enrollment session completes at most once; a
	// command naming a used session changes nothing.
	ErrSessionUsed = errors.New("enrollment session already used")
	// ErrSessionExpired: the session's expiry had passed by the leader's
	// clock when the command applied; nothing is written.
	ErrSessionExpired = errors.New("session expired")
	// ErrUnknownCommand: a command type or version this build cannot apply.
	// A replica that met one halts (Node.Halted) rather than diverge.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrSnapshotFormat: a snapshot whose format this build cannot read (a
	// newer build's, or a malformed header). Restore refuses it before
	// touching the current state.
	ErrSnapshotFormat = errors.New("unsupported snapshot format")
	// ErrDeviceInactive: a disabled, quarantined, revoked or deleted device
	// cannot enroll again until an operator changes its state.
	ErrDeviceInactive = errors.New("device is not active")
	// ErrCertificateValidity: an enrollment.accept or renewal.accept v3
	// whose record's certificate validity is missing, reversed, or not the
	// device's (nothing written).
	ErrCertificateValidity = errors.New("invalid certificate validity")
	// ErrNotLeader: this node cannot commit now; retry (against the leader).
	ErrNotLeader = errors.New("not the Raft leader")
	// ErrNotSent: a command that never entered a leader's log (the leader
	// could not be dialled, or refused it before appending), so sending it
	// again cannot apply it twice. It comes wrapped with ErrNotLeader.
	ErrNotSent = errors.New("command not sent to a leader")
)

// Attestation outcomes.
const (
	OutcomeAccepted = "accepted"
	OutcomeRejected = "rejected"
	OutcomePending  = "pending" // genuine and admitted by policy, awaiting an operator
)

// Claims are what a device says about itself: recorded, never trusted.
type Claims struct {
	Serial          string `json:"serial,omitempty"`
	Model           string `json:"model,omitempty"`
	FirmwareVersion string `json:"firmware_version,omitempty"`
}

// EKInfo describes a device's endorsement key.
type EKInfo struct {
	PublicSHA256      string `json:"public_sha256"` // hex SHA-256 of the PKIX DER
	CertificateSHA256 string `json:"certificate_sha256,omitempty"`
	Issuer            string `json:"issuer,omitempty"`
	Serial            string `json:"serial,omitempty"`
	Manufacturer      string `json:"manufacturer,omitempty"`
	Model             string `json:"model,omitempty"`
	Version           string `json:"version,omitempty"`
}

// Device is a registry entry.
type Device struct {
	ID                string `json:"id"`
	Status            string `json:"status"`
	EK                EKInfo `json:"ek"`
	AKPublicSHA256    string `json:"ak_public_sha256"`
	Claims            Claims `json:"claims"`
	CertificateSerial string `json:"certificate_serial"`
	// CertificateNotAfter is when the newest certificate expires.
	CertificateNotAfter time.Time         `json:"certificate_not_after"`
	EnrolledAt          time.Time         `json:"enrolled_at"`
	LastEnrolledAt      time.Time         `json:"last_enrolled_at"`
	Enrollments         int               `json:"enrollments"`
	LastAttestationID   uint64            `json:"last_attestation_id"`
	Labels              map[string]string `json:"labels,omitempty"`
	// Group and Mode are the enrollment group that admitted the device.
	Group         string `json:"group,omitempty"`
	Mode          string `json:"mode,omitempty"`
	PolicyVersion int    `json:"policy_version"`
	// History lists every state change after enrollment, oldest first.
	History []StateChange `json:"history,omitempty"`
	// Serials lists the newest MaxSerials certificate serials (hex) issued
	// to the device, oldest first: the certificates it may present. Every
	// serial ever issued is also in its accepted attestation records,
	// which is where revocation finds them all.
	Serials []string `json:"serials,omitempty"`
	// LastAttestedAt is the newest accepted enrollment or renewal; a device
	// that does not re-attest within its group's interval is marked Stale.
	LastAttestedAt time.Time `json:"last_attested_at"`
	Stale          bool      `json:"stale,omitempty"`
	// Flags are the newest MaxFlags anomalies raised on the device, oldest
	// first; the audit log keeps every one.
	Flags []Flag `json:"flags,omitempty"`
	// Config is the per-device configuration override (a JSON object),
	// merged over the group's; ConfigVersion counts its changes.
	Config        json.RawMessage `json:"config,omitempty"`
	ConfigVersion int             `json:"config_version,omitempty"`
}

// A device record stays small however often a device enrolls: it keeps
// the newest serials and flags only.
const (
	MaxSerials = 16
	MaxFlags   = 32
)

func keepLast[T any](s []T, n int) []T {
	if len(s) <= n {
		return s
	}
	return append([]T(nil), s[len(s)-n:]...)
}

// Device flags.
const (
	FlagReprovisioned    = "reprovisioned"     // same EK, new AK: the TPM was cleared or the device re-imaged
	FlagPossibleClone    = "possible_clone"    // a new AK while the old identity's certificate is still valid
	FlagRepeatedFailures = "repeated_failures" // FailureThreshold refusals for one EK within FailureWindow
	FlagStale            = "stale"             // no re-attestation within the group's interval
)

// Flag is one anomaly raised on a device.
type Flag struct {
	Name          string    `json:"name"`
	Time          time.Time `json:"time"`
	AttestationID uint64    `json:"attestation_id,omitempty"`
	Detail        string    `json:"detail"`
}

// PCRValue is one PCR as quoted.
type PCRValue struct {
	Index  int    `json:"index"`
	Digest string `json:"digest"` // hex
}

// Evidence summarizes what a device presented.
type Evidence struct {
	EK                 *EKInfo    `json:"ek,omitempty"`
	AKPublicSHA256     string     `json:"ak_public_sha256,omitempty"`
	AKAlgorithm        string     `json:"ak_algorithm,omitempty"`
	Claims             Claims     `json:"claims"`
	Nonce              string     `json:"nonce,omitempty"`
	PCRBank            string     `json:"pcr_bank,omitempty"`
	PCRs               []PCRValue `json:"pcrs,omitempty"`
	EventLogSHA256     string     `json:"event_log_sha256,omitempty"`
	EventLogEvents     int        `json:"event_log_events,omitempty"`
	DeviceKeySHA256    string     `json:"device_key_sha256,omitempty"`
	DeviceKeyAlgorithm string     `json:"device_key_algorithm,omitempty"`
	// Labels and EnrolledGroup are what the policy saw besides the
	// device's own evidence: registry labels, and the group of an
	// individual enrollment.
	Labels        map[string]string `json:"labels,omitempty"`
	EnrolledGroup string            `json:"enrolled_group,omitempty"`
}

// Check is one verification step's outcome.
type Check struct {
	Name   string `json:"name"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail,omitempty"`
}

// AttestationRecord is what was proven in one enrollment attempt, and why it
// passed or failed.
type AttestationRecord struct {
	// ID is the Raft log index of the command that stored the record: the
	// same on every replica, and increasing in commit order.
	ID        uint64    `json:"id"`
	Time      time.Time `json:"time"`
	Node      string    `json:"node"`
	DeviceID  string    `json:"device_id,omitempty"`
	SessionID string    `json:"session_id,omitempty"`
	Stage     string    `json:"stage"`   // "challenge" | "complete"
	Outcome   string    `json:"outcome"` // OutcomeAccepted | OutcomeRejected
	Code      string    `json:"code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Checks    []Check   `json:"checks,omitempty"`
	Evidence  Evidence  `json:"evidence"`
	// CertificateSerial (hex) is reserved before commit; the certificate is
	// issued only after this record commits.
	CertificateSerial string `json:"certificate_serial,omitempty"`
	// CertificateNotBefore and CertificateNotAfter are that certificate's
	// validity, decided before commit and signed exactly
	// (ca.DeviceValidity). Only enrollment.accept and renewal.accept v3
	// record them; zero (unknown) in records older commands stored.
	CertificateNotBefore time.Time `json:"certificate_not_before,omitzero"`
	CertificateNotAfter  time.Time `json:"certificate_not_after,omitzero"`
	// Policy is the policy's decision: its version, the deciding group and
	// every rule's outcome. Nil when verification failed before policy.
	Policy *attest.Decision `json:"policy,omitempty"`
	// EventLogGzip carries the raw event log into the commit; the registry
	// stores it apart (see Node.EventLog) and sets HasEventLog.
	EventLogGzip []byte `json:"event_log_gzip,omitempty"`
	HasEventLog  bool   `json:"has_event_log,omitempty"`
	// RawEvidenceGzip carries the gzip JSON of a RawEvidence into the
	// commit; it is stored apart (see Node.RawEvidence) and sets
	// HasRawEvidence.
	RawEvidenceGzip []byte `json:"raw_evidence_gzip,omitempty"`
	HasRawEvidence  bool   `json:"has_raw_evidence,omitempty"`
}

// RawEvidence is every byte a decision rests on, kept so that it can be
// re-checked offline (`gatehouse attestations verify`). The event log is
// kept apart (Node.EventLog).
type RawEvidence struct {
	EKCertificate  []byte   `json:"ek_certificate,omitempty"` // as read from NV
	EKPublic       []byte   `json:"ek_public,omitempty"`      // PKIX DER
	EKPublicArea   []byte   `json:"ek_public_area,omitempty"` // TPM2B_PUBLIC
	AK             RawKey   `json:"ak"`
	Nonce          []byte   `json:"nonce,omitempty"`
	Quote          []byte   `json:"quote,omitempty"`
	QuoteSignature []byte   `json:"quote_signature,omitempty"`
	PCRs           []RawPCR `json:"pcrs,omitempty"`
	DeviceKey      RawKey   `json:"device_key"`
	CSR            []byte   `json:"csr,omitempty"`
}

// RawKey is a TPM key's public area and its creation or certify statement.
type RawKey struct {
	Public            []byte `json:"public,omitempty"`
	CreateData        []byte `json:"create_data,omitempty"`
	CreateAttestation []byte `json:"create_attestation,omitempty"`
	CreateSignature   []byte `json:"create_signature,omitempty"`
}

// RawPCR is one PCR as the device sent it.
type RawPCR struct {
	Index  int    `json:"index"`
	Bank   string `json:"bank"`
	Digest []byte `json:"digest"`
}

// PolicyRecord is one applied version of the enrollment policy.
type PolicyRecord struct {
	Version  int             `json:"version"`
	Time     time.Time       `json:"time"`
	Actor    string          `json:"actor"`
	SHA256   string          `json:"sha256"`
	Document json.RawMessage `json:"document"`
}

// AttestationQuery selects attestation records, newest first.
type AttestationQuery struct {
	DeviceID string // empty: all devices
	Limit    int    // <= 0: no limit
}
