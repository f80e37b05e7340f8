package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The audit log is a hash chain kept in the FSM: commands append entries as
// they apply, inside the same bolt transaction, so the chain is a pure
// function of the Raft log and byte-identical on every replica. Entry n
// commits to entry n-1 through Prev; a checkpoint entry carries an Ed25519
// signature over (seq, hash) of the entry before it.
//
// Guarantees: any change to, removal of, or reordering of entries up to the
// newest checkpoint is detected by VerifyAudit, which names the position.
// Non-guarantees: entries after the newest checkpoint are covered by the
// chain only; an export is covered at both ends by the signed range that
// ends it (auditrange.go). Whoever holds the CA key can re-sign a rewritten
// chain: only signed heads kept outside the appliance (a checkpoint sink,
// an auditor's `audit head`) expose that.

var bAudit = []byte("audit") // be64(seq) → AuditEntry (JSON)

// Audit entry types.
const (
	AuditEnrollmentAccepted = "enrollment.accepted"
	AuditEnrollmentPending  = "enrollment.pending"
	AuditEnrollmentRejected = "enrollment.rejected"
	AuditRenewalAccepted    = "renewal.accepted"
	AuditDeviceState        = "device.state"
	AuditDeviceLabels       = "device.labels"
	AuditDeviceConfig       = "device.config"
	AuditDeviceFlag         = "device.flag"
	AuditPolicyApplied      = "policy.applied"
	AuditMemberSet          = "member.set"
	AuditJoinTokenCreated   = "jointoken.created"
	AuditJoinTokenUsed      = "jointoken.used"
	AuditCheckpoint         = "audit.checkpoint"
	AuditEnrollmentImport   = "enrollment.imported"
	AuditEnrollmentDelete   = "enrollment.deleted"
	// Types appended by the appliance through AppendAudit.
	AuditAdminDenied     = "admin.denied"
	AuditTLSRefused      = "tls.refused" // a client certificate that does not verify
	AuditMemberRemoved   = "member.removed"
	AuditLeaderTransfer  = "member.leadership_transferred"
	AuditRegistryRestore = "registry.restored"
)

// ErrAuditCheckpoint: a checkpoint names an entry the chain does not hold
// with that hash.
var ErrAuditCheckpoint = errors.New("audit checkpoint does not match the chain")

// AuditEntry is one link of the chain. Detail is compact JSON kept as a
// string so that every export format reproduces its exact bytes.
type AuditEntry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Actor   string    `json:"actor"`
	Subject string    `json:"subject,omitempty"`
	Detail  string    `json:"detail,omitempty"`
	Prev    string    `json:"prev"` // hex hash of entry Seq-1; 64 zeros for the first
	Hash    string    `json:"hash"`
}

// genesisHash is Prev of the first entry.
var genesisHash = hex.EncodeToString(make([]byte, sha256.Size))

// ComputeHash is the entry's chain hash: SHA-256 over a domain tag and the
// length-prefixed fields, Hash excluded.
func (e *AuditEntry) ComputeHash() string {
	h := sha256.New()
	h.Write([]byte("gatehouse-audit/v1\n"))
	for _, f := range []string{strconv.FormatUint(e.Seq, 10), e.Time.UTC().Format(time.RFC3339Nano), e.Type, e.Actor, e.Subject, e.Detail, e.Prev} {
		writeLenPrefixed(h, []byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// CheckpointDetail is the Detail of an audit.checkpoint entry.
type CheckpointDetail struct {
	Seq       uint64 `json:"seq"`       // the entry it signs
	Hash      string `json:"hash"`      // that entry's hash
	KeyID     string `json:"key_id"`    // hex SHA-256 of the Ed25519 public key
	Signature string `json:"signature"` // base64 Ed25519 over CheckpointMessage
}

// CheckpointMessage is what a checkpoint signs.
func CheckpointMessage(seq uint64, hash string) []byte {
	return []byte("gatehouse-audit-checkpoint/v1\n" + strconv.FormatUint(seq, 10) + "\n" + hash)
}

// KeyID names an audit public key.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:])
}

// appendAudit adds an entry at the head of the chain. detail is marshalled
// to compact JSON (nil: none).
func appendAudit(tx *bolt.Tx, at time.Time, typ, actor, subject string, detail any) error {
	b := appendBucket(tx, bAudit)
	e := AuditEntry{Seq: 1, Time: at.UTC(), Type: typ, Actor: actor, Subject: subject, Prev: genesisHash}
	if k, v := b.Cursor().Last(); k != nil {
		var last AuditEntry
		if err := json.Unmarshal(v, &last); err != nil {
			return err
		}
		e.Seq, e.Prev = last.Seq+1, last.Hash
	}
	if detail != nil {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(detail); err != nil {
			return err
		}
		e.Detail = string(bytes.TrimRight(buf.Bytes(), "\n"))
	}
	e.Hash = e.ComputeHash()
	if err := putJSON(b, be64(e.Seq), e); err != nil {
		return err
	}
	return putEntries(tx, auditIndexEntries(e))
}

// appendAuditCmd appends an entry the appliance decided on (an admin
// refusal, a membership change Raft made outside the FSM).
type appendAuditCmd struct {
	Type    string          `json:"type"`
	Actor   string          `json:"actor"`
	Subject string          `json:"subject,omitempty"`
	Detail  json.RawMessage `json:"detail,omitempty"`
}

func (c *appendAuditCmd) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	var d any
	if len(c.Detail) > 0 {
		d = c.Detail
	}
	return applyResult{Err: appendAudit(tx, at, c.Type, c.Actor, c.Subject, d)}
}

// AppendAudit commits one audit entry.
func (n *Node) AppendAudit(ctx context.Context, typ, actor, subject string, detail any) error {
	var raw json.RawMessage
	if detail != nil {
		b, err := json.Marshal(detail)
		if err != nil {
			return err
		}
		raw = b
	}
	_, err := n.apply(ctx, "audit.append", 1, &appendAuditCmd{Type: typ, Actor: actor, Subject: subject, Detail: raw})
	return err
}

// checkpointAudit appends a signed checkpoint over an existing entry.
type checkpointAudit struct {
	Actor      string           `json:"actor"`
	Checkpoint CheckpointDetail `json:"checkpoint"`
}

// apply signs only the head: a checkpoint always covers the entry right
// before it. If another checkpoint got there first, that one stands.
func (c *checkpointAudit) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	k, v := tx.Bucket(bAudit).Cursor().Last()
	var head AuditEntry
	if k == nil || json.Unmarshal(v, &head) != nil {
		return applyResult{Err: fmt.Errorf("%w: the chain is empty", ErrAuditCheckpoint)}
	}
	if head.Type == AuditCheckpoint && head.Seq == c.Checkpoint.Seq+1 {
		return applyResult{Result: head.Seq}
	}
	if head.Seq != c.Checkpoint.Seq || head.Hash != c.Checkpoint.Hash {
		return applyResult{Err: fmt.Errorf("%w: it signs entry %d, the head is %d", ErrAuditCheckpoint, c.Checkpoint.Seq, head.Seq)}
	}
	if err := appendAudit(tx, at, AuditCheckpoint, c.Actor, "", c.Checkpoint); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: head.Seq + 1}
}

// AuditHead returns the newest entry (ErrNotFound for an empty chain).
func (n *Node) AuditHead() (AuditEntry, error) {
	var e AuditEntry
	err := n.fsm.view(func(tx *bolt.Tx) error {
		_, v := tx.Bucket(bAudit).Cursor().Last()
		if v == nil {
			return fmt.Errorf("audit head: %w", ErrNotFound)
		}
		return json.Unmarshal(v, &e)
	})
	return e, err
}

// Checkpoint signs the current head with key and commits the checkpoint; it
// returns the checkpoint entry's sequence number. If the head is already a
// checkpoint, nothing is written and its sequence number is returned.
// Entries committed between reading the head and the commit make it retry.
func (n *Node) Checkpoint(ctx context.Context, actor string, key ed25519.PrivateKey) (uint64, error) {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = n.Linearize(ctx); err != nil {
			return 0, err
		}
		var head AuditEntry
		if head, err = n.AuditHead(); err != nil {
			return 0, err
		}
		if head.Type == AuditCheckpoint {
			return head.Seq, nil
		}
		cp := CheckpointDetail{
			Seq:       head.Seq,
			Hash:      head.Hash,
			KeyID:     KeyID(key.Public().(ed25519.PublicKey)),
			Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, CheckpointMessage(head.Seq, head.Hash))),
		}
		var seq uint64
		if seq, err = n.apply(ctx, "audit.checkpoint", 1, &checkpointAudit{Actor: actor, Checkpoint: cp}); !errors.Is(err, ErrAuditCheckpoint) {
			return seq, err
		}
	}
	return 0, err
}

// AuditEntry returns the entry at seq (ErrNotFound if there is none).
func (n *Node) AuditEntry(seq uint64) (AuditEntry, error) {
	var e AuditEntry
	err := n.fsm.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bAudit).Get(be64(seq))
		if v == nil {
			return fmt.Errorf("audit entry %d: %w", seq, ErrNotFound)
		}
		return json.Unmarshal(v, &e)
	})
	return e, err
}

// AuditEntries returns the entries from the first with Time >= since up to
// Seq upTo (0: no bound), oldest first: one contiguous run of the chain,
// since times (the leader's clock at apply) can go back after a leader
// change, and an export with a gap would not verify.
func (n *Node) AuditEntries(since time.Time, upTo uint64) ([]AuditEntry, error) {
	var out []AuditEntry
	err := n.fsm.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if upTo > 0 && binary.BigEndian.Uint64(k) > upTo {
				break
			}
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if len(out) > 0 || !e.Time.Before(since) {
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}
