package cluster

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// A signed range is a statement by the audit key that the chain of a trust
// domain held entries FirstSeq..LastSeq, the entry before FirstSeq hashing
// to FirstPrev and entry LastSeq hashing to LastHash, at Time. It is made
// without a Raft write, in three kinds:
//
//   - export: the last line of every export, over exactly the entries it
//     holds (and the --since filter that chose them), so a cut at either
//     end shows;
//   - head: the live head (`audit head`), over the whole chain, which an
//     auditor keeps and later compares an export with (--expect-head);
//   - checkpoint: written to the node's checkpoint sink each time the node
//     commits a checkpoint, over the whole chain up to that checkpoint.
//
// Guarantees: whoever lacks the audit key cannot make one, so an export
// that drops entries at its start or end, or ends before a head the auditor
// kept, is reported. Non-guarantees: the holder of the CA key can sign a
// rewritten chain and matching ranges; only heads kept outside the appliance
// (a sink, an auditor's files) expose that.
type AuditRange struct {
	Kind        string    `json:"kind"` // export | head | checkpoint
	TrustDomain string    `json:"trust_domain"`
	Since       time.Time `json:"since,omitzero"` // export: the time filter (zero: none)
	FirstSeq    uint64    `json:"first_seq"`
	FirstPrev   string    `json:"first_prev"`
	LastSeq     uint64    `json:"last_seq"`
	LastHash    string    `json:"last_hash"`
	Time        time.Time `json:"time"`
	KeyID       string    `json:"key_id"`
	Signature   string    `json:"signature"` // base64 Ed25519 over Message
}

// Range kinds.
const (
	RangeExport     = "export"
	RangeHead       = "head"
	RangeCheckpoint = "checkpoint"
)

// SyslogTag is the tag of checkpoint sink messages sent to syslog.
const SyslogTag = "gatehouse-audit"

// ErrAuditRange: a signed range does not verify.
var ErrAuditRange = errors.New("audit range signature does not verify")

// Message is what a range signs: every field but the signature, length
// prefixed under a domain tag.
func (r *AuditRange) Message() []byte {
	var b bytes.Buffer
	b.WriteString("gatehouse-audit-range/v1\n")
	since := ""
	if !r.Since.IsZero() {
		since = r.Since.UTC().Format(time.RFC3339Nano)
	}
	for _, f := range []string{r.Kind, r.TrustDomain, since, strconv.FormatUint(r.FirstSeq, 10), r.FirstPrev,
		strconv.FormatUint(r.LastSeq, 10), r.LastHash, r.Time.UTC().Format(time.RFC3339Nano), r.KeyID} {
		writeLenPrefixed(&b, []byte(f))
	}
	return b.Bytes()
}

// SignRange signs a range over entries (oldest first, consecutive) with key.
// An empty slice gives a range with zero sequence numbers.
func SignRange(key ed25519.PrivateKey, kind, trustDomain string, since, at time.Time, entries []AuditEntry) AuditRange {
	r := AuditRange{Kind: kind, TrustDomain: trustDomain, Since: since.UTC(), Time: at.UTC()}
	if since.IsZero() {
		r.Since = time.Time{}
	}
	if len(entries) > 0 {
		first, last := entries[0], entries[len(entries)-1]
		r.FirstSeq, r.FirstPrev, r.LastSeq, r.LastHash = first.Seq, first.Prev, last.Seq, last.Hash
	}
	r.KeyID = KeyID(key.Public().(ed25519.PublicKey))
	r.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, r.Message()))
	return r
}

// SignHead signs a range over the chain from its first entry to head.
func SignHead(key ed25519.PrivateKey, kind, trustDomain string, at time.Time, head AuditEntry) AuditRange {
	r := SignRange(key, kind, trustDomain, time.Time{}, at, []AuditEntry{head})
	if r.FirstSeq != 1 {
		r.FirstSeq, r.FirstPrev = 1, genesisHash
		r.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, r.Message()))
	}
	return r
}

// Verify checks the range's signature under key.
func (r *AuditRange) Verify(key ed25519.PublicKey) error {
	if key == nil {
		return fmt.Errorf("%w: no key to verify against", ErrAuditRange)
	}
	if r.KeyID != KeyID(key) {
		return fmt.Errorf("%w: signed by key %s, not the given key %s", ErrAuditRange, r.KeyID, KeyID(key))
	}
	sig, err := base64.StdEncoding.DecodeString(r.Signature)
	if err != nil || !ed25519.Verify(key, r.Message(), sig) {
		return ErrAuditRange
	}
	return nil
}

// ReadAuditHeads reads signed heads kept by an auditor: one JSON object
// (`audit head -o json`), JSON lines (a file sink), or syslog lines, whose
// heads are the JSON after the gatehouse-audit tag (other lines are
// skipped).
func ReadAuditHeads(b []byte) ([]AuditRange, error) {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] != '{' {
		var js bytes.Buffer
		for _, line := range bytes.Split(t, []byte("\n")) {
			if i := bytes.Index(line, []byte(SyslogTag)); i >= 0 {
				if j := bytes.IndexByte(line[i:], '{'); j >= 0 {
					js.Write(line[i+j:])
					js.WriteByte('\n')
				}
			}
		}
		b = js.Bytes()
	}
	var out []AuditRange
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	for {
		var r AuditRange
		err := dec.Decode(&r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("signed head %d: %w", len(out)+1, err)
		}
		if r.LastSeq == 0 || r.Signature == "" {
			return nil, fmt.Errorf("signed head %d: not a signed audit head", len(out)+1)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, errors.New("no signed head")
	}
	return out, nil
}
