package cluster

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"
)

// The binary envelope carries the hot commands (enrollment.accept and
// renewal.accept v4) so that no replica JSON-parses and base64-decodes the
// evidence blobs on apply: the blobs travel as raw bytes beside a JSON
// payload that holds everything else. Layout:
//
//	[0:4]   envelopeMagic; a JSON command starts with '{', so the first byte tells the two apart
//	[4:12]  the command's time, Unix nanoseconds, big-endian (fixed, so the leader restamps it in place)
//	uvarint length, type
//	uvarint version
//	uvarint length, payload: the command as JSON, its record's blobs empty
//	uvarint length, the record's RawEvidenceGzip
//	uvarint length, the record's EventLogGzip
//
// Nothing may follow. Every (type, version) has one framing: a v4 accept
// in JSON, or a JSON-only command in this envelope, is unknown.
var envelopeMagic = [4]byte{0x00, 'G', 'H', 'B'}

const envelopeTimeEnd = len(envelopeMagic) + 8

// EnvelopeCommands are the commands in the binary envelope, as Commands
// lists them: proposed (by CommitEnrollment and CommitRenewal, with
// WithEnvelope) only when every member applies them.
var EnvelopeCommands = []string{"enrollment.accept/4", "renewal.accept/4"}

// carriesRecord is a command whose attestation record's blobs travel
// outside its JSON in the binary envelope.
type carriesRecord interface {
	op
	record() *AttestationRecord
}

func (c *acceptEnrollment) record() *AttestationRecord { return &c.Attestation }
func (c *acceptRenewal) record() *AttestationRecord    { return &c.Attestation }

// binaryCommandTypes are the commands framed in the binary envelope; v4 of
// each accept applies exactly as v3.
var binaryCommandTypes = map[cmdKey]func(json.RawMessage) (carriesRecord, error){
	{"enrollment.accept", 4}: decodeRecordAs[acceptEnrollmentV3],
	{"renewal.accept", 4}:    decodeRecordAs[acceptRenewalV3],
}

func decodeRecordAs[T any, PT interface {
	*T
	carriesRecord
}](raw json.RawMessage) (carriesRecord, error) {
	v := PT(new(T))
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, err
	}
	return v, nil
}

// EnvelopeMediaType is the media type of a command in the binary envelope
// on the wire (a follower forwarding it to the leader).
const EnvelopeMediaType = "application/vnd.gatehouse.raft-command"

// IsEnvelope reports whether b is framed in the binary envelope.
func IsEnvelope(b []byte) bool { return bytes.HasPrefix(b, envelopeMagic[:]) }

// errEnvelope is how a malformed envelope is refused: like any entry this
// build cannot decode (ErrUnknownCommand), with what is wrong.
func errEnvelope(format string, args ...any) error {
	return fmt.Errorf("%w: malformed binary envelope: %s", ErrUnknownCommand, fmt.Sprintf(format, args...))
}

// encodeEnvelope frames c. The record's blobs leave the JSON payload
// (c's record is changed: its blobs are cleared).
func encodeEnvelope(typ string, version int, at time.Time, c carriesRecord) ([]byte, error) {
	if _, ok := binaryCommandTypes[cmdKey{typ, version}]; !ok {
		return nil, fmt.Errorf("cluster: %s v%d is not a binary command", typ, version)
	}
	if at.Before(time.Unix(0, math.MinInt64)) || at.After(time.Unix(0, math.MaxInt64)) {
		return nil, fmt.Errorf("cluster: command time %v out of range", at)
	}
	rec := c.record()
	raw, evlog := rec.RawEvidenceGzip, rec.EventLogGzip
	rec.RawEvidenceGzip, rec.EventLogGzip = nil, nil
	p, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	b := make([]byte, envelopeTimeEnd, envelopeTimeEnd+len(typ)+len(p)+len(raw)+len(evlog)+5*binary.MaxVarintLen64)
	copy(b, envelopeMagic[:])
	binary.BigEndian.PutUint64(b[len(envelopeMagic):], uint64(at.UnixNano()))
	b = appendBytes(b, []byte(typ))
	b = binary.AppendUvarint(b, uint64(version))
	b = appendBytes(b, p)
	b = appendBytes(b, raw)
	return appendBytes(b, evlog), nil
}

func appendBytes(b, v []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(v))), v...)
}

// decodeEnvelope parses an entry framed in the binary envelope. The op's
// blobs alias b.
func decodeEnvelope(b []byte) (*command, op, error) {
	if !IsEnvelope(b) {
		return nil, nil, errEnvelope("no magic")
	}
	if len(b) < envelopeTimeEnd {
		return nil, nil, errEnvelope("%d bytes, shorter than its header", len(b))
	}
	at := time.Unix(0, int64(binary.BigEndian.Uint64(b[len(envelopeMagic):envelopeTimeEnd]))).UTC()
	d := envelopeReader{b: b[envelopeTimeEnd:]}
	typ := d.bytes("type")
	version := d.uvarint("version")
	payload := d.bytes("payload")
	raw := d.bytes("raw evidence")
	evlog := d.bytes("event log")
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes after the event log", len(d.b))
	}
	if d.err != nil {
		return nil, nil, errEnvelope("%v", d.err)
	}
	if version > math.MaxInt32 {
		return nil, nil, errEnvelope("version %d", version)
	}
	k := cmdKey{string(typ), int(version)}
	dec, ok := binaryCommandTypes[k]
	if !ok {
		return nil, nil, fmt.Errorf("%w: binary envelope of type %q version %d", ErrUnknownCommand, k.typ, k.version)
	}
	o, err := dec(payload)
	if err != nil {
		return nil, nil, errEnvelope("%s v%d payload: %v", k.typ, k.version, err)
	}
	rec := o.record()
	if len(rec.RawEvidenceGzip) > 0 || len(rec.EventLogGzip) > 0 {
		// One place for each blob, or two replicas' readers could disagree.
		return nil, nil, errEnvelope("%s v%d payload carries a blob the envelope carries", k.typ, k.version)
	}
	if len(raw) > 0 {
		rec.RawEvidenceGzip = raw
	}
	if len(evlog) > 0 {
		rec.EventLogGzip = evlog
	}
	return &command{Type: k.typ, Version: k.version, Time: at, Payload: payload}, o, nil
}

// restampEnvelope returns a copy of the envelope b with the time at.
func restampEnvelope(b []byte, at time.Time) []byte {
	out := bytes.Clone(b)
	binary.BigEndian.PutUint64(out[len(envelopeMagic):envelopeTimeEnd], uint64(at.UnixNano()))
	return out
}

// envelopeReader reads length-prefixed fields, remembering the first error.
type envelopeReader struct {
	b   []byte
	err error
}

func (r *envelopeReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("bad %s varint", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *envelopeReader) bytes(what string) []byte {
	n := r.uvarint(what + " length")
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%s length %d exceeds the %d bytes left", what, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// commandName is an entry's "type/version" without decoding its payload
// (golden fixtures count commands by it).
func commandName(b []byte) (string, error) {
	if IsEnvelope(b) {
		c, _, err := decodeEnvelope(b)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s/%d", c.Type, c.Version), nil
	}
	var c command
	if err := json.Unmarshal(b, &c); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s/%d", c.Type, c.Version), nil
}

// LogCommand names the command at a Raft log index, as "type/version"
// (Commands' form): which framing and version the cluster committed.
// ErrNotFound if this node's log does not hold the index (compacted, or
// not written yet) or the entry is not a command.
func (n *Node) LogCommand(index uint64) (string, error) {
	var l raft.Log
	if err := n.store.GetLog(index, &l); err != nil {
		return "", fmt.Errorf("%w: log index %d: %v", ErrNotFound, index, err)
	}
	if l.Type != raft.LogCommand {
		return "", fmt.Errorf("%w: log index %d is a %s entry", ErrNotFound, index, l.Type)
	}
	return commandName(l.Data)
}
