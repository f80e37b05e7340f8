package cluster

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
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
	{"attestation.reject", 1}: decodeAs[rejectAttestation],
	{"member.set", 1}:         decodeAs[setMember],
	{"jointoken.create", 1}:   decodeAs[createJoinToken],
	{"jointoken.consume", 1}:  decodeAs[consumeJoinToken],
	{"policy.apply", 1}:       decodeAs[applyPolicy],
	{"device.transition", 1}:  decodeAs[transitionDevice],
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

// decodeCommand parses an entry. An unknown type or version is an error
// wrapping ErrUnknownCommand; the FSM treats it as fatal.
func decodeCommand(b []byte) (*command, op, error) {
	var c command
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("%w: undecodable entry: %v", ErrUnknownCommand, err)
	}
	dec, ok := commandTypes[cmdKey{c.Type, c.Version}]
	if !ok {
		return nil, nil, fmt.Errorf("%w: type %q version %d", ErrUnknownCommand, c.Type, c.Version)
	}
	o, err := dec(c.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s v%d payload: %v", ErrUnknownCommand, c.Type, c.Version, err)
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

// acceptEnrollment records a verified enrollment: the attestation record and
// the device, in one transaction, and consumes the session.
type acceptEnrollment struct {
	SessionID      string            `json:"session_id"`
	SessionExpires time.Time         `json:"session_expires"`
	Device         Device            `json:"device"`
	Attestation    AttestationRecord `json:"attestation"`
}

func (c *acceptEnrollment) apply(tx *bolt.Tx, index uint64, _ time.Time) applyResult {
	if sessionUsed(tx, c.SessionID) {
		return applyResult{Err: ErrSessionUsed}
	}
	a := c.Attestation
	a.ID = index
	d := c.Device
	if old, err := getDevice(tx, d.ID); err == nil {
		// Checked again here: an operator may have disabled the device
		// after the enroller looked.
		if old.Status != DeviceActive {
			return applyResult{Err: fmt.Errorf("%w: device %s is %s", ErrDeviceInactive, d.ID, old.Status)}
		}
		d.EnrolledAt, d.Enrollments, d.Labels, d.History = old.EnrolledAt, old.Enrollments, old.Labels, old.History
	} else {
		d.EnrolledAt = a.Time
	}
	d.Enrollments++
	d.LastEnrolledAt, d.LastAttestationID = a.Time, index
	if err := putJSON(tx.Bucket(bDevices), []byte(d.ID), d); err != nil {
		return applyResult{Err: err}
	}
	if err := putAttestation(tx, a); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: index, Err: markSessionUsed(tx, c.SessionID, c.SessionExpires)}
}

// rejectAttestation records a refused attempt. It never touches devices.
type rejectAttestation struct {
	SessionID      string            `json:"session_id,omitempty"`
	SessionExpires time.Time         `json:"session_expires"`
	Attestation    AttestationRecord `json:"attestation"`
}

func (c *rejectAttestation) apply(tx *bolt.Tx, index uint64, _ time.Time) applyResult {
	a := c.Attestation
	a.ID = index
	if err := putAttestation(tx, a); err != nil {
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
	if len(a.EventLogGzip) > 0 {
		if err := tx.Bucket(bEvidence).Put(be64(a.ID), a.EventLogGzip); err != nil {
			return err
		}
		a.EventLogGzip = nil
		a.HasEventLog = true
	}
	if err := putJSON(tx.Bucket(bAttestations), be64(a.ID), a); err != nil {
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
