package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Retention: refused attestation records and raw evidence (the gzip
// RawEvidence and event log kept beside a record) do not stay forever. The
// leader proposes a retention.compact command periodically; the FSM computes
// the cutoffs from the command's time (the leader's clock), so every replica
// removes the same entries. What was removed is itself an audit entry; the
// audit chain is never compacted, so entries about removed records remain
// and still verify.

// Audit entry types of admission control and retention.
const (
	AuditRetentionCompacted = "retention.compacted"
	// AuditAdmissionRefused is a node's periodic summary of requests it
	// refused before the client proved TPM possession (appended by the
	// appliance, at most one per node per interval).
	AuditAdmissionRefused = "admission.refused"
)

// MaxCompactPerCommand bounds the deletions of one command, so that an apply
// stays short however much has accumulated; the leader repeats while the
// previous command hit the bound.
const MaxCompactPerCommand = 5000

// keyRefusedCursor (in meta) is the first attestation ID the refused-record
// scan has not passed yet: accepted records before it are not scanned again.
var keyRefusedCursor = []byte("retention_refused_cursor")

type compactRetention struct {
	Actor string `json:"actor"`
	// RetainRefused and RetainRawEvidence are ages; zero keeps forever.
	RetainRefused     time.Duration `json:"retain_refused"`
	RetainRawEvidence time.Duration `json:"retain_raw_evidence"`
	Limit             int           `json:"limit"`
}

// CompactionReport is the Detail of a retention.compacted audit entry.
type CompactionReport struct {
	RefusedBefore      time.Time `json:"refused_before,omitzero"`
	RawEvidenceBefore  time.Time `json:"raw_evidence_before,omitzero"`
	RefusedRecords     int       `json:"refused_records_removed"`
	RefusedFirstID     uint64    `json:"refused_first_id,omitempty"`
	RefusedLastID      uint64    `json:"refused_last_id,omitempty"`
	RawEvidence        int       `json:"raw_evidence_removed"`
	EventLogs          int       `json:"event_logs_removed"`
	EvidenceFirstID    uint64    `json:"evidence_first_id,omitempty"`
	EvidenceLastID     uint64    `json:"evidence_last_id,omitempty"`
	LimitReached       bool      `json:"limit_reached,omitempty"`
	removedTotal       int
	evidenceRecordSeen map[uint64]bool
}

func (c *compactRetention) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	limit := c.Limit
	if limit <= 0 || limit > MaxCompactPerCommand {
		limit = MaxCompactPerCommand
	}
	r := CompactionReport{evidenceRecordSeen: map[uint64]bool{}}
	if c.RetainRefused > 0 {
		r.RefusedBefore = at.Add(-c.RetainRefused)
		if err := compactRefused(tx, &r, limit); err != nil {
			return applyResult{Err: err}
		}
	}
	if c.RetainRawEvidence > 0 {
		r.RawEvidenceBefore = at.Add(-c.RetainRawEvidence)
		for _, b := range [][]byte{bRawEvidence, bEvidence} {
			if err := compactEvidence(tx, b, &r, limit); err != nil {
				return applyResult{Err: err}
			}
		}
	}
	if r.removedTotal == 0 {
		return applyResult{}
	}
	if err := appendAudit(tx, at, AuditRetentionCompacted, c.Actor, "", r); err != nil {
		return applyResult{Err: err}
	}
	res := uint64(r.removedTotal)
	if r.LimitReached {
		res |= 1 << 63
	}
	return applyResult{Result: res}
}

// compactRefused deletes rejected records older than r.RefusedBefore with
// their raw evidence and device index, scanning from the cursor in ID
// (commit) order and stopping at the first newer record.
func compactRefused(tx *bolt.Tx, r *CompactionReport, limit int) error {
	meta, recs := tx.Bucket(bMeta), tx.Bucket(bAttestations)
	start := uint64(0)
	if v := meta.Get(keyRefusedCursor); len(v) == 8 {
		start = binary.BigEndian.Uint64(v)
	}
	c := recs.Cursor()
	next := start
	var doomed []AttestationRecord // deleted after the scan: bolt cursors skip after Delete
	for k, v := c.Seek(be64(start)); k != nil; k, v = c.Next() {
		var a AttestationRecord
		if err := json.Unmarshal(v, &a); err != nil {
			return err
		}
		if !a.Time.Before(r.RefusedBefore) {
			break
		}
		if a.Outcome == OutcomeRejected {
			if r.removedTotal >= limit {
				r.LimitReached = true
				break
			}
			doomed = append(doomed, a)
			r.removedTotal++
		}
		next = binary.BigEndian.Uint64(k) + 1
	}
	for _, a := range doomed {
		if err := recs.Delete(be64(a.ID)); err != nil {
			return err
		}
		if err := deleteEntries(tx, attestationIndexEntries(a)); err != nil {
			return err
		}
		for _, b := range [][]byte{bRawEvidence, bEvidence} {
			if err := tx.Bucket(b).Delete(be64(a.ID)); err != nil {
				return err
			}
		}
		if a.DeviceID != "" {
			if err := tx.Bucket(bAttestationsByDevice).Delete(deviceIndexKey(a.DeviceID, a.ID)); err != nil {
				return err
			}
		}
		if r.RefusedFirstID == 0 {
			r.RefusedFirstID = a.ID
		}
		r.RefusedLastID = a.ID
		r.RefusedRecords++
	}
	if next == start {
		return nil
	}
	return meta.Put(keyRefusedCursor, be64(next))
}

// compactEvidence deletes the blobs in bucket b (raw evidence or event logs)
// of records older than r.RawEvidenceBefore, oldest first, and clears the
// record's Has* mark. The records themselves stay, with their digests.
func compactEvidence(tx *bolt.Tx, b []byte, r *CompactionReport, limit int) error {
	recs, blobs := tx.Bucket(bAttestations), tx.Bucket(b)
	var doomed [][]byte
	c := blobs.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		v := recs.Get(k)
		if v != nil {
			var a AttestationRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			if !a.Time.Before(r.RawEvidenceBefore) {
				break
			}
		}
		id := binary.BigEndian.Uint64(k)
		if !r.evidenceRecordSeen[id] {
			if r.removedTotal >= limit {
				r.LimitReached = true
				break
			}
			r.evidenceRecordSeen[id] = true
			r.removedTotal++
		}
		doomed = append(doomed, append([]byte(nil), k...))
	}
	for _, k := range doomed {
		if err := blobs.Delete(k); err != nil {
			return err
		}
		id := binary.BigEndian.Uint64(k)
		if v := recs.Get(k); v != nil {
			var a AttestationRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			if string(b) == string(bRawEvidence) {
				a.HasRawEvidence = false
			} else {
				a.HasEventLog = false
			}
			if err := putJSON(recs, k, a); err != nil {
				return err
			}
		}
		if string(b) == string(bRawEvidence) {
			r.RawEvidence++
		} else {
			r.EventLogs++
		}
		if r.EvidenceFirstID == 0 || id < r.EvidenceFirstID {
			r.EvidenceFirstID = id
		}
		if id > r.EvidenceLastID {
			r.EvidenceLastID = id
		}
	}
	return nil
}

// Compact removes refused attestation records older than retainRefused and
// raw evidence and event logs older than retainRawEvidence (zero keeps
// either forever), at most MaxCompactPerCommand per call, judged by the
// leader's clock at apply. It returns how many records or blobs went and
// whether more remain; a compaction that removed anything appended a
// retention.compacted audit entry saying what.
func (n *Node) Compact(ctx context.Context, actor string, retainRefused, retainRawEvidence time.Duration) (removed int, more bool, err error) {
	if retainRefused <= 0 && retainRawEvidence <= 0 {
		return 0, false, nil
	}
	res, err := n.apply(ctx, "retention.compact", 1, &compactRetention{Actor: actor, RetainRefused: retainRefused, RetainRawEvidence: retainRawEvidence})
	return int(res &^ (1 << 63)), res&(1<<63) != 0, err
}
