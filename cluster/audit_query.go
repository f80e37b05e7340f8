package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Audit entries are indexed like attestation records (query.go): by their
// time and sequence number, newest first, and by type, actor and device,
// in the transaction that appends them (appendAudit). The chain is never
// compacted (retention.go), so the indexes only grow.
//
// Order: entries are listed by Time, then Seq, newest first, not by Seq.
// Time is the leader's clock when the entry's command was proposed, so Seq
// order is Time order except after a leader change to a node whose clock
// is behind; ordering by Time makes since/until exact ranges of the index
// (no entry in the range is missed however the clocks went) at the price
// of such entries appearing out of Seq order. An export (AuditEntries) is
// the way to read the chain in Seq order.

// auditDeviceTypes are the entry types whose Subject is a device ID.
var auditDeviceTypes = []string{AuditEnrollmentAccepted, AuditEnrollmentPending, AuditEnrollmentRejected,
	AuditRenewalAccepted, AuditDeviceState, AuditDeviceLabels, AuditDeviceConfig, AuditDeviceFlag}

// auditDevice is the device an entry is about, or "".
func auditDevice(e AuditEntry) string {
	if slices.Contains(auditDeviceTypes, e.Type) {
		return e.Subject
	}
	return ""
}

// auditActorKeys are the values an actor filter matches an entry's actor
// by: the actor itself and, for the appliance's principal forms
// admin:NAME(ROLE), device:ID and node:ID, the name alone, so that
// "olga" finds what admin:olga(operator) did.
func auditActorKeys(actor string) []string {
	keys := []string{actor}
	kind, rest, ok := strings.Cut(actor, ":")
	if !ok || kind != "admin" && kind != "device" && kind != "node" {
		return keys
	}
	if kind == "admin" {
		if i := strings.LastIndexByte(rest, '('); i > 0 && strings.HasSuffix(rest, ")") {
			rest = rest[:i]
		}
	}
	if rest != "" && rest != actor {
		keys = append(keys, rest)
	}
	return keys
}

func auditSortKey(e AuditEntry) []byte { return append(timeKey(e.Time), be64(e.Seq)...) }

func auditIndexEntries(e AuditEntry) []ixEntry {
	sk := auditSortKey(e)
	out := ixAdd([]ixEntry{{bIxAudTime, sk}}, bIxAudType, e.Type, sk)
	for _, a := range auditActorKeys(e.Actor) {
		out = ixAdd(out, bIxAudActor, a, sk)
	}
	if d := auditDevice(e); d != "" {
		out = ixAdd(out, bIxAudDevice, d, sk)
	}
	return out
}

// AuditQuery selects audit entries, newest (by Time, then Seq) first; the
// filters combine with AND.
type AuditQuery struct {
	Type   string
	Actor  string // the whole actor, or its name (admin:NAME(ROLE), device:ID, node:ID)
	Device string // the device of enrollment, renewal and device.* entries
	// Since and Until bound Time, inclusive; zero: unbounded.
	Since, Until time.Time
	Cursor       string
	Limit        int
}

// Check reports a value no index holds or an empty time range as
// ErrBadFilter.
func (q AuditQuery) Check() error {
	if err := checkIndexable(q.Type, q.Actor, q.Device); err != nil {
		return err
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && q.Until.Before(q.Since) {
		return fmt.Errorf("%w: until is before since", ErrBadFilter)
	}
	return nil
}

func (q AuditQuery) match(e AuditEntry) bool {
	return (q.Type == "" || e.Type == q.Type) && (q.Actor == "" || slices.Contains(auditActorKeys(e.Actor), q.Actor)) &&
		(q.Device == "" || auditDevice(e) == q.Device) &&
		(q.Since.IsZero() || !e.Time.Before(q.Since)) && (q.Until.IsZero() || !e.Time.After(q.Until))
}

// QueryAudit returns one page of the audit entries q selects, newest
// first, and the cursor of the next page ("" on the last). It walks the
// indexes of the filters given, never the whole chain; entries appended
// while a client pages land before its cursor (or, with a leader's clock
// behind, after it) and never shift the pages still to come. The entries
// are the chain's own: a page does not verify by itself (export it for
// that).
func (n *Node) QueryAudit(q AuditQuery) ([]AuditEntry, string, error) {
	if err := q.Check(); err != nil {
		return nil, "", err
	}
	start, floor, done, err := timeWindow(cursorAudit, q.Since, q.Until, q.Cursor)
	if err != nil || done {
		return []AuditEntry{}, "", err
	}
	limit := pageLimit(q.Limit)
	out, next := []AuditEntry{}, ""
	err = n.fsm.view(func(tx *bolt.Tx) error {
		var cs []*ixCursor
		add := func(b []byte, v string) { cs = append(cs, newIxCursor(tx, b, lp(v))) }
		if q.Type != "" {
			add(bIxAudType, q.Type)
		}
		if q.Actor != "" {
			add(bIxAudActor, q.Actor)
		}
		if q.Device != "" {
			add(bIxAudDevice, q.Device)
		}
		if len(cs) == 0 {
			cs = append(cs, newIxCursor(tx, bIxAudTime, nil))
		}
		entries := tx.Bucket(bAudit)
		return leapfrog(cs, true, start, func(sk []byte) (bool, error) {
			if floor != nil && bytes.Compare(sk, floor) < 0 {
				return false, nil
			}
			v := entries.Get(sk[8:])
			if v == nil {
				return false, fmt.Errorf("%w: audit entry %x indexed but not stored", ErrIndexMismatch, sk[8:])
			}
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return false, err
			}
			if !q.match(e) {
				return true, nil
			}
			if len(out) == limit {
				next = encodeCursor(cursorAudit, auditSortKey(out[len(out)-1]))
				return false, nil
			}
			out = append(out, e)
			return true, nil
		})
	})
	return out, next, err
}

// AuditTypes lists the entry types the registry appends (the appliance may
// append others through AppendAudit, e.g. admin.certificate_issued).
func AuditTypes() []string {
	ts := []string{AuditEnrollmentAccepted, AuditEnrollmentPending, AuditEnrollmentRejected, AuditRenewalAccepted,
		AuditDeviceState, AuditDeviceLabels, AuditDeviceConfig, AuditDeviceFlag, AuditPolicyApplied, AuditMemberSet,
		AuditJoinTokenCreated, AuditJoinTokenUsed, AuditCheckpoint, AuditEnrollmentImport, AuditEnrollmentDelete,
		AuditAdminDenied, AuditTLSRefused, AuditMemberRemoved, AuditLeaderTransfer, AuditRegistryRestore,
		AuditEKRootAdded, AuditEKRootRemoved, AuditEKRootsSeeded, AuditRetentionCompacted, AuditAdmissionRefused, AuditSettings}
	slices.Sort(ts)
	return ts
}
