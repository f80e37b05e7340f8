package cluster

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Fleet counters: the aggregate the console's fleet page and
// GET /admin/v1/fleet show, read without walking the registry.
//
// They live in the ix_counts index bucket and are maintained like the
// query indexes (query.go): every device or record write adds its counter
// entries and every overwrite or retention compaction takes the old ones
// away, in the same transaction (putEntries, deleteEntries), so every
// replica derives the same counts; they are rebuilt with the indexes when
// a data directory or snapshot is opened (ensureIndexes), and
// VerifyIndexes recounts them from the primary buckets.
//
// Keys (the value is the count, be64; a count that reaches zero is deleted):
//
//	'S' lp(state)                          devices in a state
//	'G' lp(group)                          devices in a group ("" for none)
//	'H' be64(hour) lp(outcome) lp(code)    records by the hour of their Time
//
// A record's hour is that of its stamped Time (the leader's clock when it
// committed), in hours since the Unix epoch. A group or code longer than
// MaxIndexedValue is not counted (bolt bounds its keys); groups are set by
// operators and codes by the server, so neither is device-controlled.
const (
	countState = 'S'
	countGroup = 'G'
	countHour  = 'H'
)

// MaxFleetHours bounds the hourly window of FleetCounts (a week).
const MaxFleetHours = 168

func countKey(kind byte, parts ...string) []byte {
	k := []byte{kind}
	for _, p := range parts {
		k = append(k, lp(p)...)
	}
	return k
}

func hourOf(t time.Time) uint64 { return uint64(max(t.Unix(), 0)) / 3600 }

func deviceCounterEntries(d Device) []ixEntry {
	out := []ixEntry{}
	if len(d.Status) <= MaxIndexedValue {
		out = append(out, ixEntry{bIxCounts, countKey(countState, d.Status)})
	}
	if len(d.Group) <= MaxIndexedValue {
		out = append(out, ixEntry{bIxCounts, countKey(countGroup, d.Group)})
	}
	return out
}

func attestationCounterEntries(a AttestationRecord) []ixEntry {
	if len(a.Outcome) > MaxIndexedValue || len(a.Code) > MaxIndexedValue {
		return nil
	}
	k := append([]byte{countHour}, be64(hourOf(a.Time))...)
	k = append(append(k, lp(a.Outcome)...), lp(a.Code)...)
	return []ixEntry{{bIxCounts, k}}
}

// addCount moves the counter at key by delta. A decrement below zero means
// the counters disagree with the data they count: an error, never a wrap.
func addCount(tx *bolt.Tx, key []byte, delta int64) error {
	b := tx.Bucket(bIxCounts)
	var n uint64
	if v := b.Get(key); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	if delta < 0 && n < uint64(-delta) {
		return fmt.Errorf("%w: counter %x would go below zero", ErrIndexMismatch, key)
	}
	n = uint64(int64(n) + delta)
	if n == 0 {
		return b.Delete(key)
	}
	return b.Put(key, be64(n))
}

func verifyCounts(tx *bolt.Tx, want map[string]uint64) error {
	got := 0
	err := tx.Bucket(bIxCounts).ForEach(func(k, v []byte) error {
		if len(v) != 8 || binary.BigEndian.Uint64(v) != want[string(k)] {
			return fmt.Errorf("%w: counter %x holds %x, the registry implies %d", ErrIndexMismatch, k, v, want[string(k)])
		}
		got++
		return nil
	})
	if err != nil {
		return err
	}
	if got != len(want) {
		return fmt.Errorf("%w: %d counters, the registry implies %d", ErrIndexMismatch, got, len(want))
	}
	return nil
}

// FleetHour counts the attestation records of one hour by outcome, and the
// refusals by code ("" for a refusal without one).
type FleetHour struct {
	Start    time.Time      `json:"start"`
	Accepted int            `json:"accepted"`
	Pending  int            `json:"pending"`
	Rejected int            `json:"rejected"`
	Refusals map[string]int `json:"refusals"`
}

// FleetCounts is what GET /admin/v1/fleet returns.
type FleetCounts struct {
	Devices int            `json:"devices"`
	ByState map[string]int `json:"by_state"`
	// ByGroup counts devices by group; "" holds those in none.
	ByGroup map[string]int `json:"by_group"`
	// Pending is the approval queue's length (devices in DevicePending).
	Pending int `json:"pending"`
	// Hours are the last hours up to the one holding now, oldest first.
	Hours []FleetHour `json:"hours"`
}

// FleetCounts returns the devices by state and group and the attestation
// records per hour of the hours (1..MaxFleetHours) up to and including the
// one now falls in. It reads the counters only: its cost follows the
// number of states, groups and (hour, outcome, code) triples, not the
// registry's size.
func (n *Node) FleetCounts(hours int, now time.Time) (FleetCounts, error) {
	if hours < 1 || hours > MaxFleetHours {
		return FleetCounts{}, fmt.Errorf("%w: hours must be 1 to %d", ErrBadFilter, MaxFleetHours)
	}
	out := FleetCounts{ByState: map[string]int{}, ByGroup: map[string]int{}, Hours: make([]FleetHour, hours)}
	last := hourOf(now)
	first := last + 1 - uint64(min(uint64(hours), last+1))
	for i := range out.Hours {
		out.Hours[i] = FleetHour{Start: time.Unix(int64(first+uint64(i))*3600, 0).UTC(), Refusals: map[string]int{}}
	}
	err := n.fsm.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bIxCounts).Cursor()
		for _, kind := range []byte{countState, countGroup} {
			for k, v := c.Seek([]byte{kind}); k != nil && k[0] == kind; k, v = c.Next() {
				name, _, err := cutLP(k[1:])
				if err != nil {
					return err
				}
				cnt := int(binary.BigEndian.Uint64(v))
				if kind == countState {
					out.ByState[name] = cnt
					out.Devices += cnt
				} else {
					out.ByGroup[name] = cnt
				}
			}
		}
		out.Pending = out.ByState[DevicePending]
		start := append([]byte{countHour}, be64(first)...)
		for k, v := c.Seek(start); k != nil && k[0] == countHour && len(k) >= 9; k, v = c.Next() {
			h := binary.BigEndian.Uint64(k[1:9])
			if h > last {
				break
			}
			outcome, rest, err := cutLP(k[9:])
			if err != nil {
				return err
			}
			code, _, err := cutLP(rest)
			if err != nil {
				return err
			}
			fh, cnt := &out.Hours[h-first], int(binary.BigEndian.Uint64(v))
			switch outcome {
			case OutcomeAccepted:
				fh.Accepted += cnt
			case OutcomePending:
				fh.Pending += cnt
			case OutcomeRejected:
				fh.Rejected += cnt
				fh.Refusals[code] += cnt
			}
		}
		return nil
	})
	return out, err
}

// cutLP splits a length-prefixed value (lp) off the front of b.
func cutLP(b []byte) (string, []byte, error) {
	if len(b) < 2 || len(b)-2 < int(binary.BigEndian.Uint16(b)) {
		return "", nil, fmt.Errorf("%w: malformed counter key %x", ErrIndexMismatch, b)
	}
	n := 2 + int(binary.BigEndian.Uint16(b))
	return string(b[2:n]), b[n:], nil
}
