package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// command is the envelope of every Raft log entry this package writes.
// Time is the leader's clock when the command was made: the FSM uses it for
// anything time-based, so every replica computes the same state.
type command struct {
	Type    string          `json:"type"`
	Version int             `json:"version"`
	Time    time.Time       `json:"time"`
	Payload json.RawMessage `json:"payload"`
}

type cmdKey struct {
	typ     string
	version int
}

// op is a decoded command, ready to apply inside a bolt transaction.
type op interface {
	apply(tx *bolt.Tx, index uint64, at time.Time) applyResult
}

// applyResult is what Raft's ApplyFuture.Response returns.
type applyResult struct {
	Result uint64 // what the command made: an attestation ID, a policy version
	Err    error
}

// commandTypes is the registry of every command this build can apply. A new
// command gets a new type or version here; old ones stay forever, because
// the log may hold them.
var commandTypes = map[cmdKey]func(json.RawMessage) (op, error){
	{"enrollment.accept", 1}:  decodeAs[acceptEnrollment],
	{"enrollment.accept", 2}:  decodeAs[acceptEnrollmentV2],
	{"enrollment.accept", 3}:  decodeAs[acceptEnrollmentV3], // v3: the certificate's validity on the record
	{"attestation.reject", 1}: decodeAs[rejectAttestation],
	{"member.set", 1}:         decodeAs[setMember],
	{"jointoken.create", 1}:   decodeAs[createJoinToken],
	{"jointoken.consume", 1}:  decodeAs[consumeJoinToken],
	{"policy.apply", 1}:       decodeAs[applyPolicy],
	{"device.transition", 1}:  decodeAs[transitionDevice],
	{"device.labels", 1}:      decodeAs[labelDevice],
	{"device.config", 1}:      decodeAs[configureDevice],
	{"device.stale", 1}:       decodeAs[markStale],
	{"renewal.accept", 1}:     decodeAs[acceptRenewal],
	{"renewal.accept", 2}:     decodeAs[acceptRenewalV2], // v2: the group decision, and session expiry at apply
	{"renewal.accept", 3}:     decodeAs[acceptRenewalV3], // v3: the certificate's validity on the record
	{"audit.append", 1}:       decodeAs[appendAuditCmd],
	{"audit.checkpoint", 1}:   decodeAs[checkpointAudit],
	{"stepca.update", 1}:      decodeAs[stepCAUpdate],
	{"enrollment.import", 1}:  decodeAs[importEnrollments],
	{"enrollment.delete", 1}:  decodeAs[deleteEnrollment],
	{"retention.compact", 1}:  decodeAs[compactRetention],
	{"ekroots.add", 1}:        decodeAs[addEKRoots],
	{"ekroots.remove", 1}:     decodeAs[removeEKRoot],
	{"settings.set", 1}:       decodeAs[setSettings],
	{"cluster.feature", 1}:    decodeAs[raiseFeature], // feature.go
}

// ValidityCommands are the accept commands that record the issued
// certificate's validity, as Commands lists them: proposed (by
// CommitEnrollment and CommitRenewal, for a record that carries it) only
// when every member applies them.
var ValidityCommands = []string{"enrollment.accept/3", "renewal.accept/3"}

// Commands lists the command types and versions this build applies, as
// "type/version", sorted. A replica stops on a command it does not know
// (ErrUnknownCommand), so a node tells its peers this list (the
// appliance's GET /cluster/v1/info), and a new command is proposed only
// once every member lists it: during a rolling upgrade, not before the
// last old member is upgraded.
func Commands() []string {
	out := make([]string, 0, len(commandTypes)+len(binaryCommandTypes))
	for k := range commandTypes {
		out = append(out, k.typ+"/"+strconv.Itoa(k.version))
	}
	for k := range binaryCommandTypes {
		out = append(out, k.typ+"/"+strconv.Itoa(k.version))
	}
	slices.Sort(out)
	return out
}

func decodeAs[T any, PT interface {
	*T
	op
}](raw json.RawMessage) (op, error) {
	v := PT(new(T))
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, err
	}
	return v, nil
}

// decodeCommand parses an entry, JSON or in the binary envelope. An unknown
// type or version, or a malformed entry, is an error wrapping
// ErrUnknownCommand, a cluster.feature above this build's FeatureVersion one
// wrapping ErrFeatureVersion; the FSM halts on either (fsm.halt). The
// command is returned with the error when its envelope decoded, so the halt
// can name it.
func decodeCommand(b []byte) (*command, op, error) {
	if IsEnvelope(b) {
		return decodeEnvelope(b)
	}
	var c command
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("%w: undecodable entry: %v", ErrUnknownCommand, err)
	}
	dec, ok := commandTypes[cmdKey{c.Type, c.Version}]
	if !ok {
		return &c, nil, fmt.Errorf("%w: type %q version %d", ErrUnknownCommand, c.Type, c.Version)
	}
	o, err := dec(c.Payload)
	if err != nil {
		return &c, nil, fmt.Errorf("%w: %s v%d payload: %v", ErrUnknownCommand, c.Type, c.Version, err)
	}
	if err := checkFeature(o); err != nil {
		return &c, nil, err
	}
	return &c, o, nil
}

func encodeCommand(typ string, version int, at time.Time, payload any) ([]byte, error) {
	p, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	return json.Marshal(command{Type: typ, Version: version, Time: at, Payload: p})
}

// acceptEnrollment records an enrollment the policy admitted: the
// attestation record and the device, in one transaction, and consumes the
// session. Device.Status is active (a certificate follows) or pending (the
// group wants an operator's approval first); Flags are anomalies the
// enroller found, raised on the device.
type acceptEnrollment struct {
	SessionID      string            `json:"session_id"`
	SessionExpires time.Time         `json:"session_expires"`
	Device         Device            `json:"device"`
	Attestation    AttestationRecord `json:"attestation"`
	Flags          []Flag            `json:"flags,omitempty"`
}

func (c *acceptEnrollment) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	c.Attestation = withoutValidity(c.Attestation)
	return c.commit(tx, index, at)
}

func (c *acceptEnrollment) commit(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	if sessionUsed(tx, c.SessionID) {
		return applyResult{Err: ErrSessionUsed}
	}
	a := c.Attestation
	a.ID = index
	d := c.Device
	if old, err := getDevice(tx, d.ID); err == nil {
		// Checked again here: an operator may have changed the device's
		// state after the enroller looked.
		if !(old.Status == DeviceActive || old.Status == DevicePending && d.Status == DevicePending) {
			return applyResult{Err: fmt.Errorf("%w: device %s is %s", ErrDeviceInactive, d.ID, old.Status)}
		}
		// Start from the stored device: the enrollment sets only what it
		// decided; everything the registry keeps (history, labels, flags,
		// configuration, serials) stays.
		next := old
		next.Status, next.EK, next.AKPublicSHA256, next.Claims = d.Status, d.EK, d.AKPublicSHA256, d.Claims
		next.Group, next.Mode, next.PolicyVersion = d.Group, d.Mode, d.PolicyVersion
		if d.CertificateSerial != "" { // pending: the old certificate, if any, is still the newest
			next.CertificateSerial, next.CertificateNotAfter = d.CertificateSerial, d.CertificateNotAfter
		}
		if old.Status == DeviceActive && d.Status == DevicePending {
			next.History = append(next.History, StateChange{Time: at, Op: "reprovision", From: old.Status, To: d.Status, Actor: "gatehouse", Reason: "same EK with a new AK; the group requires approval"})
		}
		d = next
	} else {
		d.EnrolledAt = a.Time
	}
	d.Enrollments++
	d.LastEnrolledAt, d.LastAttestationID = a.Time, index
	if a.Outcome == OutcomeAccepted {
		d.LastAttestedAt, d.Stale = a.Time, false
		d.Serials = keepLast(append(d.Serials, a.CertificateSerial), MaxSerials)
	}
	if err := raiseFlags(tx, &d, c.Flags, index, at); err != nil {
		return applyResult{Err: err}
	}
	if err := putDevice(tx, d); err != nil {
		return applyResult{Err: err}
	}
	if err := putAttestation(tx, a); err != nil {
		return applyResult{Err: err}
	}
	typ := AuditEnrollmentAccepted
	if d.Status == DevicePending {
		typ = AuditEnrollmentPending
	}
	if err := appendAudit(tx, at, typ, "device:"+d.ID, d.ID, attestationSummary(a)); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: index, Err: markSessionUsed(tx, c.SessionID, c.SessionExpires)}
}

// acceptEnrollmentV2 is acceptEnrollment that also refuses a session
// expired by the command's time (the leader's clock), writing nothing.
type acceptEnrollmentV2 struct{ acceptEnrollment }

func (c *acceptEnrollmentV2) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	if err := sessionLive(c.SessionExpires, at); err != nil {
		return applyResult{Err: err}
	}
	return c.acceptEnrollment.apply(tx, index, at)
}

// acceptEnrollmentV3 is acceptEnrollmentV2 whose record keeps the issued
// certificate's validity (none for a pending device), which must be the
// device's CertificateNotAfter.
type acceptEnrollmentV3 struct{ acceptEnrollment }

func (c *acceptEnrollmentV3) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	if err := sessionLive(c.SessionExpires, at); err != nil {
		return applyResult{Err: err}
	}
	if err := checkValidity(c.Attestation, c.Device.CertificateNotAfter); err != nil {
		return applyResult{Err: err}
	}
	return c.commit(tx, index, at)
}

// withoutValidity drops a record's certificate validity, which commands
// before v3 do not carry: an older replica decodes them without it, and
// every replica must store the same record.
func withoutValidity(a AttestationRecord) AttestationRecord {
	a.CertificateNotBefore, a.CertificateNotAfter = time.Time{}, time.Time{}
	return a
}

// checkValidity accepts a v3 record: a certificate's validity (notBefore
// before notAfter, notAfter the one the device records) with its serial,
// none without one.
func checkValidity(a AttestationRecord, deviceNotAfter time.Time) error {
	switch {
	case a.CertificateSerial == "":
		if !a.CertificateNotBefore.IsZero() || !a.CertificateNotAfter.IsZero() {
			return fmt.Errorf("%w: a validity without a certificate serial", ErrCertificateValidity)
		}
	case a.CertificateNotBefore.IsZero() || !a.CertificateNotAfter.After(a.CertificateNotBefore):
		return fmt.Errorf("%w: %v..%v", ErrCertificateValidity, a.CertificateNotBefore, a.CertificateNotAfter)
	case !a.CertificateNotAfter.Equal(deviceNotAfter):
		return fmt.Errorf("%w: notAfter %v, the device records %v", ErrCertificateValidity, a.CertificateNotAfter, deviceNotAfter)
	}
	return nil
}

// auditAttestation is what the audit log says about an attestation record;
// the record itself (by ID) holds the evidence.
type auditAttestation struct {
	AttestationID uint64 `json:"attestation_id"`
	Stage         string `json:"stage"`
	Outcome       string `json:"outcome"`
	Code          string `json:"code,omitempty"`
	Reason        string `json:"reason,omitempty"`
	EKSHA256      string `json:"ek_sha256,omitempty"`
	Serial        string `json:"certificate_serial,omitempty"`
	PolicyVersion int    `json:"policy_version,omitempty"`
	Group         string `json:"group,omitempty"`
	Node          string `json:"node"`
}

func attestationSummary(a AttestationRecord) auditAttestation {
	s := auditAttestation{AttestationID: a.ID, Stage: a.Stage, Outcome: a.Outcome, Code: a.Code, Reason: a.Reason, Serial: a.CertificateSerial, Node: a.Node}
	if a.Evidence.EK != nil {
		s.EKSHA256 = a.Evidence.EK.PublicSHA256
	}
	if a.Policy != nil {
		s.PolicyVersion, s.Group = a.Policy.PolicyVersion, a.Policy.Group
	}
	return s
}

// rejectAttestation records a refused attempt. It never touches devices.
type rejectAttestation struct {
	SessionID      string            `json:"session_id,omitempty"`
	SessionExpires time.Time         `json:"session_expires"`
	Attestation    AttestationRecord `json:"attestation"`
	// Quarantine moves the device to quarantined in the same transaction
	// (a failed renewal).
	Quarantine bool `json:"quarantine,omitempty"`
	// Flags are raised on the device, if it is registered.
	Flags []Flag `json:"flags,omitempty"`
}

func (c *rejectAttestation) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	a := withoutValidity(c.Attestation) // no certificate
	a.ID = index
	if c.Quarantine && a.DeviceID != "" {
		if err := quarantine(tx, a.DeviceID, at, fmt.Sprintf("%s failed (attestation %d): %s", a.Stage, index, a.Code)); err != nil {
			return applyResult{Err: err}
		}
	}
	if len(c.Flags) > 0 && a.DeviceID != "" {
		if d, err := getDevice(tx, a.DeviceID); err == nil {
			if err := raiseFlags(tx, &d, c.Flags, index, at); err != nil {
				return applyResult{Err: err}
			}
			if err := putDevice(tx, d); err != nil {
				return applyResult{Err: err}
			}
		}
	}
	if err := putAttestation(tx, a); err != nil {
		return applyResult{Err: err}
	}
	actor := "unauthenticated"
	if a.DeviceID != "" {
		actor = "device:" + a.DeviceID
	}
	if err := appendAudit(tx, at, AuditEnrollmentRejected, actor, a.DeviceID, attestationSummary(a)); err != nil {
		return applyResult{Err: err}
	}
	if err := countFailure(tx, a, at); err != nil {
		return applyResult{Err: err}
	}
	if c.SessionID != "" && !sessionUsed(tx, c.SessionID) {
		if err := markSessionUsed(tx, c.SessionID, c.SessionExpires); err != nil {
			return applyResult{Err: err}
		}
	}
	return applyResult{Result: index}
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, buf)
}

func putAttestation(tx *bolt.Tx, a AttestationRecord) error {
	if len(a.RawEvidenceGzip) > 0 {
		if err := appendBucket(tx, bRawEvidence).Put(be64(a.ID), a.RawEvidenceGzip); err != nil {
			return err
		}
		a.RawEvidenceGzip = nil
		a.HasRawEvidence = true
	}
	if len(a.EventLogGzip) > 0 {
		if err := appendBucket(tx, bEvidence).Put(be64(a.ID), a.EventLogGzip); err != nil {
			return err
		}
		a.EventLogGzip = nil
		a.HasEventLog = true
	}
	if err := putJSON(appendBucket(tx, bAttestations), be64(a.ID), a); err != nil {
		return err
	}
	if err := putEntries(tx, attestationIndexEntries(a)); err != nil {
		return err
	}
	if a.DeviceID == "" {
		return nil
	}
	return tx.Bucket(bAttestationsByDevice).Put(deviceIndexKey(a.DeviceID, a.ID), nil)
}

func deviceIndexKey(deviceID string, id uint64) []byte {
	return append(append([]byte(deviceID), 0), be64(id)...)
}

// sessionLive judges a session's expiry by the command's time, which is the
// leader's clock (see Node.ApplyForwarded): a follower whose clock runs
// behind cannot stretch a session. A zero expiry is not judged.
func sessionLive(expires, at time.Time) error {
	if !expires.IsZero() && !at.Before(expires) {
		return fmt.Errorf("%w at %s (leader's clock %s)", ErrSessionExpired, expires.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	return nil
}

func sessionUsed(tx *bolt.Tx, id string) bool {
	return id != "" && tx.Bucket(bSessions).Get([]byte(id)) != nil
}

func markSessionUsed(tx *bolt.Tx, id string, expires time.Time) error {
	if id == "" {
		return nil
	}
	exp := be64(uint64(expires.UnixNano()))
	if err := tx.Bucket(bSessions).Put([]byte(id), exp); err != nil {
		return err
	}
	return tx.Bucket(bSessionsByExpiry).Put(append(exp, id...), nil)
}

// sessionRetention keeps a used session past its expiry, so a token that a
// skewed clock still accepts is still refused as used.
const sessionRetention = 10 * time.Minute

// pruneSessions forgets sessions that expired well before at. An expired
// token is refused anyway, so nothing is lost.
func pruneSessions(tx *bolt.Tx, at time.Time) error {
	cutoff := uint64(at.Add(-sessionRetention).UnixNano())
	byExp, sessions := tx.Bucket(bSessionsByExpiry), tx.Bucket(bSessions)
	c := byExp.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k[:8]) < cutoff; k, _ = c.First() {
		if err := sessions.Delete(k[8:]); err != nil {
			return err
		}
		if err := byExp.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func be64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// acceptRenewal records a renewal: fresh evidence for an active device and
// the serial of the certificate about to be issued. Version 2 also moves the
// device to the group, mode and policy version that admitted the renewal;
// version 1 entries carry none and leave them as they were.
type acceptRenewal struct {
	SessionID      string            `json:"session_id"`
	SessionExpires time.Time         `json:"session_expires"`
	Attestation    AttestationRecord `json:"attestation"`
	NotAfter       time.Time         `json:"not_after"`
	Group          string            `json:"group,omitempty"`
	Mode           string            `json:"mode,omitempty"`
	PolicyVersion  int               `json:"policy_version,omitempty"`
}

func (c *acceptRenewal) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	c.Attestation = withoutValidity(c.Attestation)
	return c.commit(tx, index, at)
}

func (c *acceptRenewal) commit(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	if sessionUsed(tx, c.SessionID) {
		return applyResult{Err: ErrSessionUsed}
	}
	a := c.Attestation
	a.ID = index
	d, err := getDevice(tx, a.DeviceID)
	if err != nil {
		return applyResult{Err: err}
	}
	if d.Status != DeviceActive {
		return applyResult{Err: fmt.Errorf("%w: device %s is %s", ErrDeviceInactive, d.ID, d.Status)}
	}
	if c.Group != "" {
		d.Group, d.Mode, d.PolicyVersion = c.Group, c.Mode, c.PolicyVersion
	}
	d.CertificateSerial, d.CertificateNotAfter = a.CertificateSerial, c.NotAfter
	d.Serials = keepLast(append(d.Serials, a.CertificateSerial), MaxSerials)
	d.LastAttestedAt, d.LastAttestationID, d.Stale = a.Time, index, false
	if err := putDevice(tx, d); err != nil {
		return applyResult{Err: err}
	}
	if err := putAttestation(tx, a); err != nil {
		return applyResult{Err: err}
	}
	if err := appendAudit(tx, at, AuditRenewalAccepted, "device:"+d.ID, d.ID, attestationSummary(a)); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: index, Err: markSessionUsed(tx, c.SessionID, c.SessionExpires)}
}

// acceptRenewalV2 is acceptRenewal that also refuses a session expired by
// the command's time (the leader's clock), writing nothing.
type acceptRenewalV2 struct{ acceptRenewal }

func (c *acceptRenewalV2) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	if err := sessionLive(c.SessionExpires, at); err != nil {
		return applyResult{Err: err}
	}
	return c.acceptRenewal.apply(tx, index, at)
}

// acceptRenewalV3 is acceptRenewalV2 whose record keeps the new
// certificate's validity, which must end at NotAfter.
type acceptRenewalV3 struct{ acceptRenewal }

func (c *acceptRenewalV3) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	if err := sessionLive(c.SessionExpires, at); err != nil {
		return applyResult{Err: err}
	}
	if err := checkValidity(c.Attestation, c.NotAfter); err != nil {
		return applyResult{Err: err}
	}
	if c.Attestation.CertificateSerial == "" {
		return applyResult{Err: fmt.Errorf("%w: a renewal without a certificate serial", ErrCertificateValidity)}
	}
	return c.commit(tx, index, at)
}

// CommitRenewal records an accepted renewal and returns the attestation ID.
// The device moves to the group, mode and policy version of the record's
// policy decision, so its configuration follows the policy that renewed it.
// It fails with ErrDeviceInactive for a device that is not active (revoked
// included), and with ErrSessionExpired if the session expired by the
// leader's clock, writing nothing. A record carrying the certificate's
// validity (notAfter its end) commits as renewal.accept v3, which every
// member must apply (the caller checks, see Commands), or v4 (the same in
// the binary envelope) when WithEnvelope says every member applies it; one
// without as v2.
func (n *Node) CommitRenewal(ctx context.Context, sessionID string, sessionExpires time.Time, a AttestationRecord, notAfter time.Time) (uint64, error) {
	c := acceptRenewal{SessionID: sessionID, SessionExpires: sessionExpires, Attestation: a, NotAfter: notAfter}
	if a.Policy != nil {
		c.Group, c.Mode, c.PolicyVersion = a.Policy.Group, a.Policy.Mode, a.Policy.PolicyVersion
	}
	if !a.CertificateNotBefore.IsZero() || !a.CertificateNotAfter.IsZero() {
		if n.envelope != nil && n.envelope(ctx) {
			return n.applyEnvelope(ctx, "renewal.accept", 4, &acceptRenewalV3{c})
		}
		return n.apply(ctx, "renewal.accept", 3, &acceptRenewalV3{c})
	}
	return n.apply(ctx, "renewal.accept", 2, &acceptRenewalV2{c})
}

// CommitFailedRenewal records a refused renewal and quarantines the device
// in the same transaction.
func (n *Node) CommitFailedRenewal(ctx context.Context, sessionID string, sessionExpires time.Time, a AttestationRecord) (uint64, error) {
	return n.apply(ctx, "attestation.reject", 1, &rejectAttestation{SessionID: sessionID, SessionExpires: sessionExpires, Attestation: a, Quarantine: true})
}

// raiseFlags appends flags to d (the caller stores d) and audits each.
func raiseFlags(tx *bolt.Tx, d *Device, flags []Flag, index uint64, at time.Time) error {
	for _, f := range flags {
		f.AttestationID, f.Time = index, at
		d.Flags = keepLast(append(d.Flags, f), MaxFlags)
		if err := appendAudit(tx, at, AuditDeviceFlag, "gatehouse", d.ID, f); err != nil {
			return err
		}
	}
	return nil
}
