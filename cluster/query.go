package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Secondary indexes for the admin API's filtered, paged lists.
//
// They are derived data: every apply that writes a device or an attestation
// record updates them in the same bolt transaction (putDevice,
// putAttestation, compactRefused), so every replica derives the same ones.
// They are left out of stateHash, because they are a deterministic function
// of the buckets it covers: two replicas with equal primary data have equal
// indexes, and the hash stays comparable with builds that had none.
//
// A data directory or a snapshot from a build without them (or one that
// applied entries with such a build, which moves the applied index without
// moving the indexes' mark) is rebuilt from the primary buckets when opened
// or restored (ensureIndexes).
//
// Keys are a length-prefixed value followed by the sort key the lists page
// by: the device ID for devices (ascending), and the record's time and ID
// (be64 each) for attestations (newest first). The length prefix makes a
// value's keys a prefix no other value shares, so a filter's index holds
// exactly the matching keys; the query still re-checks every record it
// returns.
var (
	bIxDevState   = []byte("ix_device_state")
	bIxDevGroup   = []byte("ix_device_group")
	bIxDevLabel   = []byte("ix_device_label") // value: KEY=VALUE
	bIxDevFlag    = []byte("ix_device_flag")
	bIxDevModel   = []byte("ix_device_model") // the claimed model (Claims.Model)
	bIxAttTime    = []byte("ix_attestation_time")
	bIxAttOutcome = []byte("ix_attestation_outcome")
	bIxAttCode    = []byte("ix_attestation_code")
	bIxAttGroup   = []byte("ix_attestation_group")
	bIxAttDevice  = []byte("ix_attestation_device")
	bIxAudTime    = []byte("ix_audit_time")
	bIxAudType    = []byte("ix_audit_type")
	bIxAudActor   = []byte("ix_audit_actor")  // the actor and its name (auditActorKeys)
	bIxAudDevice  = []byte("ix_audit_device") // Subject of device entries (auditDeviceTypes)
	bIxCounts     = []byte("ix_counts")       // counters, not keys: see fleet.go

	indexBuckets = [][]byte{bIxDevState, bIxDevGroup, bIxDevLabel, bIxDevFlag, bIxDevModel, bIxAttTime, bIxAttOutcome, bIxAttCode, bIxAttGroup, bIxAttDevice,
		bIxAudTime, bIxAudType, bIxAudActor, bIxAudDevice, bIxCounts}

	// keyIndexMark (in meta) is indexVersion and the applied index the
	// indexes are current at; ApplyBatch moves it with the applied index.
	keyIndexMark = []byte("query_indexes")
)

// indexVersion changes when the index layout does: a data directory with
// another version is rebuilt when opened. 2: the audit indexes, or the
// fleet counters (ix_counts); 3: both.
const indexVersion = 3

// Paging bounds of the list queries.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// ErrBadCursor: a paging cursor this registry did not hand out.
var ErrBadCursor = errors.New("malformed cursor")

// ErrBadFilter: a list filter with an unknown or malformed value.
var ErrBadFilter = errors.New("malformed filter")

// MaxIndexedValue bounds the filter values the indexes hold. Some are
// attacker-controlled (the claimed model): a longer one is left out of its
// index, because bolt refuses keys over 32 KiB and a refused write would
// stop the replica; filtering by one is refused (ErrBadFilter).
const MaxIndexedValue = 512

// lp is a value's length-prefixed key part.
func lp(v string) []byte {
	b := make([]byte, 2, 2+len(v))
	binary.BigEndian.PutUint16(b, uint16(len(v)))
	return append(b, v...)
}

// ixAdd appends the entry of value v (with sort key sk) unless v is too
// long to index.
func ixAdd(es []ixEntry, bucket []byte, v string, sk []byte) []ixEntry {
	if len(v) > MaxIndexedValue {
		return es
	}
	return append(es, ixEntry{bucket, append(lp(v), sk...)})
}

func timeKey(t time.Time) []byte {
	n := t.UnixNano()
	if t.Before(time.Unix(0, 0)) {
		n = 0
	}
	return be64(uint64(n))
}

// attSortKey orders records newest first when walked backwards.
func attSortKey(a AttestationRecord) []byte { return append(timeKey(a.Time), be64(a.ID)...) }

type ixEntry struct {
	bucket []byte
	key    []byte
}

// deviceIndexEntries are the index keys of d. A device ID longer than
// MaxIndexedValue leaves the device out of every index but the primary.
func deviceIndexEntries(d Device) []ixEntry {
	cs := deviceCounterEntries(d)
	id := []byte(d.ID)
	if len(id) > MaxIndexedValue {
		return cs
	}
	out := ixAdd(cs, bIxDevState, d.Status, id)
	if d.Group != "" {
		out = ixAdd(out, bIxDevGroup, d.Group, id)
	}
	if d.Claims.Model != "" {
		out = ixAdd(out, bIxDevModel, d.Claims.Model, id)
	}
	for lk, lv := range d.Labels {
		out = ixAdd(out, bIxDevLabel, lk+"="+lv, id)
	}
	for _, f := range d.Flags {
		out = ixAdd(out, bIxDevFlag, f.Name, id) // a repeated flag puts the same key again
	}
	return out
}

func attestationIndexEntries(a AttestationRecord) []ixEntry {
	sk := attSortKey(a)
	out := append(attestationCounterEntries(a), ixEntry{bIxAttTime, sk})
	out = ixAdd(out, bIxAttOutcome, a.Outcome, sk)
	if a.Code != "" {
		out = ixAdd(out, bIxAttCode, a.Code, sk)
	}
	if a.Policy != nil && a.Policy.Group != "" {
		out = ixAdd(out, bIxAttGroup, a.Policy.Group, sk)
	}
	if a.DeviceID != "" {
		out = ixAdd(out, bIxAttDevice, a.DeviceID, sk)
	}
	return out
}

// checkIndexable refuses filter values no index holds.
func checkIndexable(vs ...string) error {
	for _, v := range vs {
		if len(v) > MaxIndexedValue {
			return fmt.Errorf("%w: a value longer than %d bytes", ErrBadFilter, MaxIndexedValue)
		}
	}
	return nil
}

// appendFill is how full bolt fills the pages of a bucket whose keys grow:
// records and audit entries (keyed by ID and seq), and the indexes of few
// values whose sort key is a time. New keys land at the end, so a page
// split at bolt's default (half) would leave every page half empty for
// good: the registry, its snapshots and what a joining node copies would
// be nearly twice as large.
const appendFill = 0.95

// appendIndexes are the index buckets filled to appendFill.
var appendIndexes = [][]byte{bIxAttTime, bIxAttOutcome, bIxAttCode, bIxAttGroup, bIxAudTime, bIxAudType}

// appendBucket is bucket name of tx, its pages filled to appendFill.
func appendBucket(tx *bolt.Tx, name []byte) *bolt.Bucket {
	b := tx.Bucket(name)
	b.FillPercent = appendFill
	return b
}

func putEntries(tx *bolt.Tx, es []ixEntry) error {
	for _, e := range es {
		if bytes.Equal(e.bucket, bIxCounts) {
			if err := addCount(tx, e.key, 1); err != nil {
				return err
			}
			continue
		}
		b := tx.Bucket(e.bucket)
		if slices.ContainsFunc(appendIndexes, func(a []byte) bool { return bytes.Equal(a, e.bucket) }) {
			b = appendBucket(tx, e.bucket)
		}
		if err := b.Put(e.key, nil); err != nil {
			return err
		}
	}
	return nil
}

func deleteEntries(tx *bolt.Tx, es []ixEntry) error {
	for _, e := range es {
		if bytes.Equal(e.bucket, bIxCounts) {
			if err := addCount(tx, e.key, -1); err != nil {
				return err
			}
			continue
		}
		if err := tx.Bucket(e.bucket).Delete(e.key); err != nil {
			return err
		}
	}
	return nil
}

// putDevice stores a device and moves its index entries: every write of a
// device record goes through it.
func putDevice(tx *bolt.Tx, d Device) error {
	b := tx.Bucket(bDevices)
	if v := b.Get([]byte(d.ID)); v != nil {
		var old Device
		if err := json.Unmarshal(v, &old); err != nil {
			return err
		}
		if err := deleteEntries(tx, deviceIndexEntries(old)); err != nil {
			return err
		}
	}
	if err := putJSON(b, []byte(d.ID), d); err != nil {
		return err
	}
	return putEntries(tx, deviceIndexEntries(d))
}

func indexMark(applied uint64) []byte { return append(be64(indexVersion), be64(applied)...) }

// ensureIndexes rebuilds the indexes unless their mark says they are
// current at the applied index (force: rebuild anyway).
func ensureIndexes(tx *bolt.Tx, force bool) error {
	meta := tx.Bucket(bMeta)
	var applied uint64
	if v := meta.Get(keyAppliedIndex); len(v) == 8 {
		applied = binary.BigEndian.Uint64(v)
	}
	if !force && bytes.Equal(meta.Get(keyIndexMark), indexMark(applied)) {
		for _, b := range indexBuckets {
			if tx.Bucket(b) == nil {
				force = true
			}
		}
		if !force {
			return nil
		}
	}
	if err := rebuildIndexes(tx); err != nil {
		return fmt.Errorf("rebuild query indexes: %w", err)
	}
	return meta.Put(keyIndexMark, indexMark(applied))
}

func rebuildIndexes(tx *bolt.Tx) error {
	for _, b := range indexBuckets {
		if tx.Bucket(b) != nil {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	return forEachPrimary(tx, func(es []ixEntry) error { return putEntries(tx, es) })
}

// forEachPrimary hands fn the index entries every device, record and
// audit entry implies.
func forEachPrimary(tx *bolt.Tx, fn func([]ixEntry) error) error {
	err := tx.Bucket(bDevices).ForEach(func(_, v []byte) error {
		var d Device
		if err := json.Unmarshal(v, &d); err != nil {
			return err
		}
		return fn(deviceIndexEntries(d))
	})
	if err != nil {
		return err
	}
	err = tx.Bucket(bAttestations).ForEach(func(_, v []byte) error {
		var a AttestationRecord
		if err := json.Unmarshal(v, &a); err != nil {
			return err
		}
		return fn(attestationIndexEntries(a))
	})
	if err != nil {
		return err
	}
	return tx.Bucket(bAudit).ForEach(func(_, v []byte) error {
		var e AuditEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return err
		}
		return fn(auditIndexEntries(e))
	})
}

// ErrIndexMismatch: a query index differs from what the primary data implies.
var ErrIndexMismatch = errors.New("query index does not match the registry")

// VerifyIndexes recomputes the query indexes from the devices and
// attestation records and compares them with the stored ones, key by key.
func (n *Node) VerifyIndexes() error { return n.fsm.verifyIndexes() }

// verifyIndexes compares each index bucket with the keys the primary
// buckets imply through a digest of its key set (count and sums of the
// keys' SHA-256), so it needs memory for the counters only, not for every
// key (tens of millions at a million devices); a bucket whose digest
// differs is compared again key by key, to name the key.
func (f *fsm) verifyIndexes() error {
	return f.view(func(tx *bolt.Tx) error {
		want := map[string]*keySetDigest{}
		for _, b := range indexBuckets {
			want[string(b)] = &keySetDigest{}
		}
		wantCounts := map[string]uint64{}
		if err := forEachPrimary(tx, func(es []ixEntry) error {
			for i, e := range es {
				if bytes.Equal(e.bucket, bIxCounts) {
					wantCounts[string(e.key)]++
				} else if !slices.ContainsFunc(es[:i], e.equal) {
					// Keys hold their primary's sort key, so only one
					// primary's entries can repeat a key (a repeated flag).
					want[string(e.bucket)].add(e.key)
				}
			}
			return nil
		}); err != nil {
			return err
		}
		if err := verifyCounts(tx, wantCounts); err != nil {
			return err
		}
		for _, b := range indexBuckets {
			if bytes.Equal(b, bIxCounts) {
				continue
			}
			bk := tx.Bucket(b)
			if bk == nil {
				return fmt.Errorf("%w: bucket %s missing", ErrIndexMismatch, b)
			}
			var got keySetDigest
			if err := bk.ForEach(func(k, _ []byte) error {
				got.add(k)
				return nil
			}); err != nil {
				return err
			}
			if got != *want[string(b)] {
				return verifyIndexKeys(tx, b)
			}
		}
		return nil
	})
}

// keySetDigest digests a set of keys independently of their order.
type keySetDigest struct{ n, sum1, sum2 uint64 }

func (d *keySetDigest) add(k []byte) {
	h := sha256.Sum256(k)
	d.n++
	d.sum1 += binary.BigEndian.Uint64(h[:8])
	d.sum2 += binary.BigEndian.Uint64(h[8:16])
}

func (e ixEntry) equal(o ixEntry) bool {
	return bytes.Equal(e.bucket, o.bucket) && bytes.Equal(e.key, o.key)
}

// verifyIndexKeys compares index bucket b with the keys the primary
// buckets imply, key by key, and names the first difference.
func verifyIndexKeys(tx *bolt.Tx, b []byte) error {
	want := map[string]bool{}
	if err := forEachPrimary(tx, func(es []ixEntry) error {
		for _, e := range es {
			if bytes.Equal(e.bucket, b) {
				want[string(e.key)] = true
			}
		}
		return nil
	}); err != nil {
		return err
	}
	got := 0
	if err := tx.Bucket(b).ForEach(func(k, _ []byte) error {
		if !want[string(k)] {
			return fmt.Errorf("%w: %s has a stray key %x", ErrIndexMismatch, b, k)
		}
		got++
		return nil
	}); err != nil {
		return err
	}
	if got != len(want) {
		return fmt.Errorf("%w: %s holds %d keys, the registry implies %d", ErrIndexMismatch, b, got, len(want))
	}
	return fmt.Errorf("%w: %s differs from what the registry implies", ErrIndexMismatch, b) // unreachable: equal sets have equal digests
}

// ixCursor walks the keys of one index value (prefix) by their sort key.
type ixCursor struct {
	c      *bolt.Cursor
	prefix []byte
	cur    []byte // the key the cursor is on; nil: not placed
}

func newIxCursor(tx *bolt.Tx, bucket, prefix []byte) *ixCursor {
	return &ixCursor{c: tx.Bucket(bucket).Cursor(), prefix: prefix}
}

func (x *ixCursor) suffix(k []byte) []byte {
	if k == nil || !bytes.HasPrefix(k, x.prefix) {
		return nil
	}
	return k[len(x.prefix):]
}

// gallop is how many steps a cursor takes towards a nearby target before it
// seeks from the root: intersections of interleaved indexes mostly move a
// key or two.
const gallop = 8

// seekGE returns the least sort key >= s (nil s: the first), or nil.
func (x *ixCursor) seekGE(s []byte) []byte {
	target := append(slices.Clip(x.prefix), s...)
	if k := x.cur; k != nil && bytes.Compare(k, target) <= 0 {
		for i := 0; i < gallop && k != nil; i++ {
			if bytes.Compare(k, target) >= 0 {
				x.cur = k
				return x.suffix(k)
			}
			k, _ = x.c.Next()
		}
		if k == nil {
			x.cur = nil
			return nil
		}
	}
	x.cur, _ = x.c.Seek(target)
	return x.suffix(x.cur)
}

// seekLE returns the greatest sort key <= s (nil s: the last), or nil.
func (x *ixCursor) seekLE(s []byte) []byte {
	target := append(slices.Clip(x.prefix), s...)
	if s == nil {
		// Past every key with the prefix: prefix followed by 0xff… beyond any sort key.
		target = append(target, bytes.Repeat([]byte{0xff}, 17)...)
	}
	if k := x.cur; k != nil && bytes.Compare(k, target) >= 0 {
		for i := 0; i < gallop && k != nil; i++ {
			if bytes.Compare(k, target) <= 0 {
				x.cur = k
				return x.suffix(k)
			}
			k, _ = x.c.Prev()
		}
		if k == nil {
			x.cur = nil
			return nil
		}
	}
	k, _ := x.c.Seek(target)
	if k == nil {
		k, _ = x.c.Last()
	} else if !bytes.Equal(k, target) {
		k, _ = x.c.Prev()
	}
	x.cur = k
	return x.suffix(k)
}

// leapfrog emits, in order, the sort keys every cursor holds, starting at
// start (inclusive; nil: the first), until emit says stop. Each cursor seeks
// straight to the next candidate, so the work follows the smallest index,
// not the registry.
func leapfrog(cs []*ixCursor, desc bool, start []byte, emit func(sk []byte) (more bool, err error)) error {
	seek := func(x *ixCursor, s []byte) []byte {
		if desc {
			return x.seekLE(s)
		}
		return x.seekGE(s)
	}
	cand := start
	for {
		cand = seek(cs[0], cand)
		if cand == nil {
			return nil
		}
		cand = slices.Clone(cand)
		agree := 1
		for i := 1; agree < len(cs); i = (i + 1) % len(cs) {
			s := seek(cs[i], cand)
			if s == nil {
				return nil
			}
			if bytes.Equal(s, cand) {
				agree++
				continue
			}
			cand, agree = slices.Clone(s), 1
		}
		more, err := emit(cand)
		if err != nil || !more {
			return err
		}
		if desc {
			if cand = predecessor(cand); cand == nil {
				return nil
			}
		} else {
			cand = append(cand, 0) // the least key greater than cand
		}
	}
}

// predecessor is the greatest fixed-length key less than k, or nil.
func predecessor(k []byte) []byte {
	p := slices.Clone(k)
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] > 0 {
			p[i]--
			return p
		}
		p[i] = 0xff
	}
	return nil
}

// A cursor is the last sort key of a page behind a byte naming its list,
// base64url: opaque to clients, and stable under inserts, because the next
// page seeks past that key whatever was added before or after it.
const (
	cursorDevices      = 'd'
	cursorAttestations = 'a'
	cursorAudit        = 'u'
)

func encodeCursor(kind byte, sk []byte) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{kind}, sk...))
}

func decodeCursor(kind byte, s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2 || b[0] != kind || (kind == cursorAttestations || kind == cursorAudit) && len(b) != 17 {
		return nil, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	return b[1:], nil
}

func pageLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultPageLimit
	case n > MaxPageLimit:
		return MaxPageLimit
	}
	return n
}

// DeviceQuery selects devices by ID, ascending; the filters combine with AND.
type DeviceQuery struct {
	State  string
	Group  string
	Model  string   // the claimed model
	Labels []string // KEY=VALUE each
	Flags  []string // flag names raised on the device (see Device.Flags)
	// Cursor continues a previous page (its next cursor); Limit bounds the
	// page (DefaultPageLimit when <= 0, at most MaxPageLimit).
	Cursor string
	Limit  int
}

// Check reports a filter value the registry cannot hold as ErrBadFilter
// (or ErrUnknownState).
func (q DeviceQuery) Check() error {
	if err := checkIndexable(append([]string{q.State, q.Group, q.Model}, q.Labels...)...); err != nil {
		return err
	}
	if q.State != "" {
		if err := CheckDeviceState(q.State); err != nil {
			return err
		}
	}
	for _, l := range q.Labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("%w: label %q is not KEY=VALUE", ErrBadFilter, l)
		}
		if err := ValidateLabels(map[string]string{k: v}); err != nil {
			return fmt.Errorf("%w: %v", ErrBadFilter, err)
		}
	}
	for _, f := range q.Flags {
		if !slices.Contains(DeviceFlags(), f) {
			return fmt.Errorf("%w: unknown flag %q (want one of %s)", ErrBadFilter, f, strings.Join(DeviceFlags(), ", "))
		}
	}
	return nil
}

// DeviceFlags lists the flags the registry raises.
func DeviceFlags() []string {
	return []string{FlagPossibleClone, FlagRepeatedFailures, FlagReprovisioned, FlagStale}
}

func (q DeviceQuery) match(d Device) bool {
	if q.State != "" && d.Status != q.State || q.Group != "" && d.Group != q.Group || q.Model != "" && d.Claims.Model != q.Model {
		return false
	}
	for _, l := range q.Labels {
		k, v, _ := strings.Cut(l, "=")
		if lv, ok := d.Labels[k]; !ok || lv != v {
			return false
		}
	}
	for _, f := range q.Flags {
		if !slices.ContainsFunc(d.Flags, func(x Flag) bool { return x.Name == f }) {
			return false
		}
	}
	return true
}

// QueryDevices returns one page of the devices q selects, by ID, and the
// cursor of the next page ("" on the last). It walks the indexes of the
// filters given, never the whole registry.
func (n *Node) QueryDevices(q DeviceQuery) ([]Device, string, error) {
	if err := q.Check(); err != nil {
		return nil, "", err
	}
	var start []byte
	if q.Cursor != "" {
		c, err := decodeCursor(cursorDevices, q.Cursor)
		if err != nil {
			return nil, "", err
		}
		start = append(c, 0)
	}
	limit := pageLimit(q.Limit)
	out, next := []Device{}, ""
	err := n.fsm.view(func(tx *bolt.Tx) error {
		var cs []*ixCursor
		add := func(b []byte, v string) { cs = append(cs, newIxCursor(tx, b, lp(v))) }
		if q.State != "" {
			add(bIxDevState, q.State)
		}
		if q.Group != "" {
			add(bIxDevGroup, q.Group)
		}
		if q.Model != "" {
			add(bIxDevModel, q.Model)
		}
		for _, l := range q.Labels {
			add(bIxDevLabel, l)
		}
		for _, f := range q.Flags {
			add(bIxDevFlag, f)
		}
		if len(cs) == 0 {
			cs = append(cs, newIxCursor(tx, bDevices, nil))
		}
		devs := tx.Bucket(bDevices)
		return leapfrog(cs, false, start, func(id []byte) (bool, error) {
			v := devs.Get(id)
			if v == nil {
				return false, fmt.Errorf("%w: device %q indexed but not stored", ErrIndexMismatch, id)
			}
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return false, err
			}
			if !q.match(d) {
				return true, nil
			}
			if len(out) == limit {
				next = encodeCursor(cursorDevices, []byte(out[len(out)-1].ID))
				return false, nil
			}
			out = append(out, d)
			return true, nil
		})
	})
	return out, next, err
}

// Outcomes lists the attestation outcomes.
func Outcomes() []string { return []string{OutcomeAccepted, OutcomePending, OutcomeRejected} }

// AttestationFilter selects attestation records, newest (by Time, then ID)
// first; the filters combine with AND.
type AttestationFilter struct {
	Outcome  string
	Code     string // the refusal code
	Group    string // the group whose policy decided (Policy.Group)
	DeviceID string
	// Since and Until bound Time, inclusive; zero: unbounded.
	Since, Until time.Time
	Cursor       string
	Limit        int
}

// Check reports an unknown outcome or an empty time range as ErrBadFilter.
func (q AttestationFilter) Check() error {
	if err := checkIndexable(q.Outcome, q.Code, q.Group, q.DeviceID); err != nil {
		return err
	}
	if q.Outcome != "" && !slices.Contains(Outcomes(), q.Outcome) {
		return fmt.Errorf("%w: unknown outcome %q (want one of %s)", ErrBadFilter, q.Outcome, strings.Join(Outcomes(), ", "))
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && q.Until.Before(q.Since) {
		return fmt.Errorf("%w: until is before since", ErrBadFilter)
	}
	return nil
}

func (q AttestationFilter) match(a AttestationRecord) bool {
	group := ""
	if a.Policy != nil {
		group = a.Policy.Group
	}
	return (q.Outcome == "" || a.Outcome == q.Outcome) && (q.Code == "" || a.Code == q.Code) &&
		(q.Group == "" || group == q.Group) && (q.DeviceID == "" || a.DeviceID == q.DeviceID) &&
		(q.Since.IsZero() || !a.Time.Before(q.Since)) && (q.Until.IsZero() || !a.Time.After(q.Until))
}

// QueryAttestations returns one page of the records q selects, newest
// first, and the cursor of the next page ("" on the last). Like
// QueryDevices it walks indexes only; the time range bounds every one.
func (n *Node) QueryAttestations(q AttestationFilter) ([]AttestationRecord, string, error) {
	if err := q.Check(); err != nil {
		return nil, "", err
	}
	start, floor, done, err := timeWindow(cursorAttestations, q.Since, q.Until, q.Cursor)
	if err != nil || done {
		return []AttestationRecord{}, "", err
	}
	limit := pageLimit(q.Limit)
	out, next := []AttestationRecord{}, ""
	err = n.fsm.view(func(tx *bolt.Tx) error {
		var cs []*ixCursor
		add := func(b []byte, v string) { cs = append(cs, newIxCursor(tx, b, lp(v))) }
		if q.Outcome != "" {
			add(bIxAttOutcome, q.Outcome)
		}
		if q.Code != "" {
			add(bIxAttCode, q.Code)
		}
		if q.Group != "" {
			add(bIxAttGroup, q.Group)
		}
		if q.DeviceID != "" {
			add(bIxAttDevice, q.DeviceID)
		}
		if len(cs) == 0 {
			cs = append(cs, newIxCursor(tx, bIxAttTime, nil))
		}
		recs := tx.Bucket(bAttestations)
		return leapfrog(cs, true, start, func(sk []byte) (bool, error) {
			if floor != nil && bytes.Compare(sk, floor) < 0 {
				return false, nil
			}
			v := recs.Get(sk[8:])
			if v == nil {
				return false, fmt.Errorf("%w: attestation %x indexed but not stored", ErrIndexMismatch, sk[8:])
			}
			var a AttestationRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return false, err
			}
			if !q.match(a) {
				return true, nil
			}
			if len(out) == limit {
				next = encodeCursor(cursorAttestations, attSortKey(out[len(out)-1]))
				return false, nil
			}
			out = append(out, a)
			return true, nil
		})
	})
	return out, next, err
}

// timeWindow is where a newest-first walk over (time, id) sort keys starts
// (inclusive; nil: the newest) and the least key it may emit (nil: none):
// the until bound and the cursor, whichever is lower, and since. done: the
// cursor was the oldest key, nothing follows.
func timeWindow(kind byte, since, until time.Time, cursor string) (start, floor []byte, done bool, err error) {
	if !until.IsZero() {
		start = append(timeKey(until), bytes.Repeat([]byte{0xff}, 8)...)
	}
	if cursor != "" {
		c, err := decodeCursor(kind, cursor)
		if err != nil {
			return nil, nil, false, err
		}
		if c = predecessor(c); c == nil {
			return nil, nil, true, nil
		}
		if start == nil || bytes.Compare(c, start) < 0 {
			start = c
		}
	}
	if !since.IsZero() {
		floor = append(timeKey(since), make([]byte, 8)...)
	}
	return start, floor, false, nil
}

// pageBucket decodes one page of bucket b's values in key order (desc:
// backwards) after the cursor's key, with the next page's cursor.
func pageBucket(tx *bolt.Tx, b []byte, kind byte, cursor string, limit int, desc bool, add func(v []byte) error) (string, error) {
	c := tx.Bucket(b).Cursor()
	var k []byte
	switch {
	case cursor == "" && desc:
		k, _ = c.Last()
	case cursor == "":
		k, _ = c.First()
	default:
		last, err := decodeCursor(kind, cursor)
		if err != nil {
			return "", err
		}
		k, _ = c.Seek(last)
		switch {
		case desc && k == nil:
			k, _ = c.Last()
		case desc:
			k, _ = c.Prev() // Seek landed on last or past it
		case bytes.Equal(k, last):
			k, _ = c.Next()
		}
		for desc && k != nil && bytes.Compare(k, last) >= 0 {
			k, _ = c.Prev()
		}
	}
	limit = pageLimit(limit)
	var prev []byte
	for n := 0; k != nil; n++ {
		if n == limit {
			return encodeCursor(kind, prev), nil
		}
		if err := add(c.Bucket().Get(k)); err != nil {
			return "", err
		}
		prev = slices.Clone(k)
		if desc {
			k, _ = c.Prev()
		} else {
			k, _ = c.Next()
		}
	}
	return "", nil
}

// IndividualEnrollmentsPage returns one page of the individual enrollments
// by EK hash (the cursor continues a previous page) and the next cursor.
func (n *Node) IndividualEnrollmentsPage(cursor string, limit int) ([]IndividualEnrollment, string, error) {
	out := []IndividualEnrollment{}
	var next string
	err := n.fsm.view(func(tx *bolt.Tx) (err error) {
		next, err = pageBucket(tx, bIndividual, 'e', cursor, limit, false, func(v []byte) error {
			var e IndividualEnrollment
			out = append(out, e)
			return json.Unmarshal(v, &out[len(out)-1])
		})
		return err
	})
	return out, next, err
}

// PolicyHistoryPage returns one page of the policy versions, newest first,
// and the next cursor.
func (n *Node) PolicyHistoryPage(cursor string, limit int) ([]PolicyRecord, string, error) {
	out := []PolicyRecord{}
	var next string
	err := n.fsm.view(func(tx *bolt.Tx) (err error) {
		next, err = pageBucket(tx, bPolicies, 'p', cursor, limit, true, func(v []byte) error {
			var r PolicyRecord
			out = append(out, r)
			return json.Unmarshal(v, &out[len(out)-1])
		})
		return err
	})
	return out, next, err
}
