package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Individual enrollments are EKs an operator vouches for one by one
// (imported from a manufacturer's list, say): an EK listed here passes the
// EK check without a chaining certificate, enrolls into the named group
// whatever the group's match says, and starts with the given labels.

var bIndividual = []byte("individual_enrollments") // EK public SHA-256 (hex) → IndividualEnrollment

// IndividualEnrollment is one pre-registered EK.
type IndividualEnrollment struct {
	EKPublicSHA256      string            `json:"ek_public_sha256"`
	EKCertificateSHA256 string            `json:"ek_certificate_sha256,omitempty"`
	Group               string            `json:"group"`
	Labels              map[string]string `json:"labels,omitempty"`
	Source              string            `json:"source,omitempty"` // file and row it came from
	ImportedBy          string            `json:"imported_by"`
	ImportedAt          time.Time         `json:"imported_at"`
}

type importEnrollments struct {
	Actor   string                 `json:"actor"`
	Entries []IndividualEnrollment `json:"entries"`
}

// apply upserts every entry: importing a file twice is harmless.
func (c *importEnrollments) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bIndividual)
	hashes := make([]string, 0, len(c.Entries))
	for _, e := range c.Entries {
		e.ImportedBy, e.ImportedAt = c.Actor, at
		if err := putJSON(b, []byte(e.EKPublicSHA256), e); err != nil {
			return applyResult{Err: err}
		}
		hashes = append(hashes, e.EKPublicSHA256)
	}
	if err := appendAudit(tx, at, AuditEnrollmentImport, c.Actor, "", map[string]any{"count": len(hashes), "ek_public_sha256": hashes}); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: uint64(len(hashes))}
}

// ImportEnrollments commits a batch of individual enrollments (validated by
// the caller) in one entry.
func (n *Node) ImportEnrollments(ctx context.Context, actor string, entries []IndividualEnrollment) error {
	_, err := n.apply(ctx, "enrollment.import", 1, &importEnrollments{Actor: actor, Entries: entries})
	return err
}

type deleteEnrollment struct {
	Actor          string `json:"actor"`
	EKPublicSHA256 string `json:"ek_public_sha256"`
	Reason         string `json:"reason,omitempty"`
}

// apply removes one individual enrollment. An EK not listed is ErrNotFound,
// so a typo never reads as a deletion.
func (c *deleteEnrollment) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bIndividual)
	key := []byte(c.EKPublicSHA256)
	if b.Get(key) == nil {
		return applyResult{Err: fmt.Errorf("individual enrollment %s: %w", c.EKPublicSHA256, ErrNotFound)}
	}
	if err := b.Delete(key); err != nil {
		return applyResult{Err: err}
	}
	if err := appendAudit(tx, at, AuditEnrollmentDelete, c.Actor, "", map[string]string{"ek_public_sha256": c.EKPublicSHA256, "reason": c.Reason}); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: 1}
}

// DeleteEnrollment removes the individual enrollment of an EK (audited).
// A device already enrolled through it keeps its record and certificates:
// only future enrollments of that EK lose the operator's vouching.
func (n *Node) DeleteEnrollment(ctx context.Context, actor, ekPublicSHA256, reason string) error {
	_, err := n.apply(ctx, "enrollment.delete", 1, &deleteEnrollment{Actor: actor, EKPublicSHA256: ekPublicSHA256, Reason: reason})
	return err
}

// IndividualEnrollment returns the individual enrollment of an EK, or
// ErrNotFound.
func (n *Node) IndividualEnrollment(ekPublicSHA256 string) (IndividualEnrollment, error) {
	var e IndividualEnrollment
	err := n.fsm.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bIndividual).Get([]byte(ekPublicSHA256))
		if v == nil {
			return fmt.Errorf("individual enrollment %s: %w", ekPublicSHA256, ErrNotFound)
		}
		return json.Unmarshal(v, &e)
	})
	return e, err
}

// IndividualEnrollments lists every individual enrollment.
func (n *Node) IndividualEnrollments() ([]IndividualEnrollment, error) {
	out := []IndividualEnrollment{}
	err := n.fsm.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bIndividual).ForEach(func(_, v []byte) error {
			var e IndividualEnrollment
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}
