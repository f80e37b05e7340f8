package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// applyPolicy stores a new policy version. The FSM numbers versions, so
// every replica agrees on them; the document was validated before commit.
type applyPolicy struct {
	Actor    string          `json:"actor"`
	Document json.RawMessage `json:"document"`
}

func (c *applyPolicy) apply(tx *bolt.Tx, index uint64, at time.Time) applyResult {
	b := tx.Bucket(bPolicies)
	version := 1
	if k, _ := b.Cursor().Last(); k != nil {
		version = int(binary.BigEndian.Uint64(k)) + 1
	}
	sum := sha256.Sum256(c.Document)
	rec := PolicyRecord{Version: version, Time: at, Actor: c.Actor, SHA256: hex.EncodeToString(sum[:]), Document: c.Document}
	if err := putJSON(b, be64(uint64(version)), rec); err != nil {
		return applyResult{Err: err}
	}
	if err := appendAudit(tx, at, AuditPolicyApplied, c.Actor, fmt.Sprintf("policy/v%d", version), map[string]any{"version": version, "sha256": rec.SHA256}); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: uint64(version)}
}

// ApplyPolicy commits a policy document as the next version and returns
// that version. Validate the document first: the registry stores it as is.
func (n *Node) ApplyPolicy(ctx context.Context, actor string, document json.RawMessage) (int, error) {
	v, err := n.apply(ctx, "policy.apply", 1, &applyPolicy{Actor: actor, Document: document})
	return int(v), err
}

// Policy returns one policy version; version 0 means the newest. With no
// policy applied it fails with ErrNotFound.
func (n *Node) Policy(version int) (PolicyRecord, error) {
	var rec PolicyRecord
	err := n.fsm.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bPolicies)
		var v []byte
		if version == 0 {
			_, v = b.Cursor().Last()
		} else {
			v = b.Get(be64(uint64(version)))
		}
		if v == nil {
			return fmt.Errorf("policy version %d: %w", version, ErrNotFound)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}

// PolicyHistory returns every policy version, newest first.
func (n *Node) PolicyHistory() ([]PolicyRecord, error) {
	out := []PolicyRecord{}
	err := n.fsm.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bPolicies).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var rec PolicyRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// PolicyVersion returns the newest applied policy version, 0 for none.
func (n *Node) PolicyVersion() (int, error) {
	v := 0
	err := n.fsm.view(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bPolicies).Cursor().Last(); k != nil {
			v = int(binary.BigEndian.Uint64(k))
		}
		return nil
	})
	return v, err
}

// EventLog returns the gzip-compressed event log stored with an attestation
// record, or ErrNotFound.
func (n *Node) EventLog(attestationID uint64) ([]byte, error) {
	return n.evidence(bEvidence, attestationID, "event log")
}

// RawEvidence returns the gzip JSON RawEvidence stored with an attestation
// record, or ErrNotFound.
func (n *Node) RawEvidence(attestationID uint64) ([]byte, error) {
	return n.evidence(bRawEvidence, attestationID, "raw evidence")
}

func (n *Node) evidence(bucket []byte, attestationID uint64, what string) ([]byte, error) {
	var out []byte
	err := n.fsm.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get(be64(attestationID))
		if v == nil {
			return fmt.Errorf("%s of attestation %d: %w", what, attestationID, ErrNotFound)
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}
