package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// auditKeys walks every page of q and returns the seqs in page order.
func auditSeqs(t *testing.T, n *Node, q AuditQuery) []uint64 {
	t.Helper()
	var out []uint64
	for {
		page, next, err := n.QueryAudit(q)
		if err != nil {
			t.Fatal(err)
		}
		if next != "" && len(page) != pageLimit(q.Limit) {
			t.Fatalf("a short page (%d) with a next cursor", len(page))
		}
		for _, e := range page {
			out = append(out, e.Seq)
		}
		if q.Cursor = next; next == "" {
			return out
		}
	}
}

// The audit filters, alone and combined, select exactly what a scan of the
// whole chain would, newest first, page by page.
func TestAuditQueryMatchesAScan(t *testing.T) {
	dir := t.TempDir()
	fleet := SyntheticFleet{Devices: 300, Attestations: 900, Audit: 6000, End: t0, Span: 30 * 24 * time.Hour}
	if err := LoadSynthetic(dir, fleet); err != nil {
		t.Fatal(err)
	}
	n := openNode(t, dir)
	mustVerifyIndexes(t, n, "load")
	loaded, err := n.AuditEntries(time.Time{}, 0)
	if err != nil || len(loaded) <= fleet.Audit {
		t.Fatalf("%d entries after the load, %v", len(loaded), err)
	}
	// Entries whose leader's clock was behind (seq after the load's newest,
	// time weeks before it): listed by time, not by seq.
	for _, d := range []time.Duration{-20 * 24 * time.Hour, -25 * 24 * time.Hour} {
		if err := n.fsm.db.Update(func(tx *bolt.Tx) error {
			return appendAudit(tx, t0.Add(d), AuditDeviceState, "admin:olga(operator)", SyntheticDevice(3).ID, nil)
		}); err != nil {
			t.Fatal(err)
		}
	}
	mustVerifyIndexes(t, n, "appends with an earlier time")
	all, err := n.AuditEntries(time.Time{}, 0)
	if err != nil || len(all) != len(loaded)+2 {
		t.Fatalf("%d entries, %v", len(all), err)
	}
	for i, e := range all { // the loader writes a real chain
		if e.Seq != uint64(i+1) || e.Hash != e.ComputeHash() || i > 0 && e.Prev != all[i-1].Hash {
			t.Fatalf("entry %d does not chain", e.Seq)
		}
	}
	newest := slices.Clone(all)
	slices.SortFunc(newest, func(a, b AuditEntry) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return int(b.Seq) - int(a.Seq)
	})
	dev := SyntheticDevice(7).ID
	mid, late := t0.Add(-10*24*time.Hour), t0.Add(-2*24*time.Hour)
	for _, q := range []AuditQuery{
		{},
		{Type: AuditEnrollmentRejected},
		{Type: AuditAdminDenied},
		{Actor: "operator-3"},
		{Actor: "admin:operator-3(operator)"},
		{Actor: "unauthenticated"},
		{Actor: dev},
		{Actor: "olga"},
		{Device: dev},
		{Since: mid},
		{Until: mid},
		{Since: mid, Until: late},
		{Type: AuditDeviceState, Actor: "operator-1", Since: mid},
		{Type: AuditRenewalAccepted, Device: dev, Until: late},
		{Type: AuditAdminDenied, Device: dev}, // admin.denied names a path, not a device
		{Type: "no.such.type"},
	} {
		var want []uint64
		for _, e := range newest {
			if q.match(e) {
				want = append(want, e.Seq)
			}
		}
		if len(want) == 0 && q.Type != "no.such.type" && !(q.Type == AuditAdminDenied && q.Device != "") {
			t.Fatalf("%+v selects nothing: a vacuous case", q)
		}
		for _, limit := range []int{0, 41} {
			q.Limit = limit
			if got := auditSeqs(t, n, q); !slices.Equal(got, want) {
				t.Fatalf("%+v (limit %d): %d entries, want %d", q, limit, len(got), len(want))
			}
		}
	}
}

// Paging while entries are appended sees every entry that existed before
// the walk exactly once, newest first.
func TestAuditQueryPagingUnderConcurrentAppends(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	for i := 0; i < 150; i++ {
		if err := n.AppendAudit(ctx, "test.before", fmt.Sprintf("node:n%d", i%3), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	before, err := n.AuditEntries(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	appended := 0
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := n.AppendAudit(ctx, "test.during", "node:n1", "", nil); err != nil {
				t.Error(err)
				return
			}
			appended++
		}
	}()
	seen := map[uint64]int{}
	var last AuditEntry
	for _, q := range []AuditQuery{{Limit: 7}, {Actor: "n1", Limit: 5}} {
		last = AuditEntry{}
		clear(seen)
		for {
			page, next, err := n.QueryAudit(q)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				if last.Seq != 0 && (e.Time.After(last.Time) || e.Time.Equal(last.Time) && e.Seq >= last.Seq) {
					t.Fatalf("entry %d after %d: not newest first", e.Seq, last.Seq)
				}
				last = e
				seen[e.Seq]++
			}
			time.Sleep(2 * time.Millisecond)
			if q.Cursor = next; next == "" {
				break
			}
		}
		for _, e := range before {
			if want := q.match(e); seen[e.Seq] != map[bool]int{true: 1}[want] {
				t.Fatalf("%+v: entry %d seen %d times (match %v)", q, e.Seq, seen[e.Seq], want)
			}
		}
	}
	close(stop)
	wg.Wait()
	if appended == 0 {
		t.Log("no append landed during the walk")
	}
	mustVerifyIndexes(t, n, "concurrent appends")
}

// A data directory whose audit indexes are missing or behind (an older
// build, or one that appended entries without them) is reindexed when
// opened, and the queries see every entry again.
func TestAuditIndexesRebuiltOnOpen(t *testing.T) {
	dir := t.TempDir()
	fleet := SyntheticFleet{Devices: 50, Attestations: 100, Audit: 500, End: t0, Span: time.Hour}
	if err := LoadSynthetic(dir, fleet); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "fsm.db")
	loaded := 0 // the commands' own entries and the fleet's Audit ones
	for _, damage := range []func(tx *bolt.Tx) error{
		func(tx *bolt.Tx) error {
			loaded = tx.Bucket(bAudit).Stats().KeyN
			return nil
		},
		func(tx *bolt.Tx) error { // a build before the audit indexes: version 1 mark, no buckets
			for _, b := range [][]byte{bIxAudTime, bIxAudType, bIxAudActor, bIxAudDevice} {
				if err := tx.DeleteBucket(b); err != nil {
					return err
				}
			}
			return tx.Bucket(bMeta).Put(keyIndexMark, append(be64(1), be64(0)...))
		},
		func(tx *bolt.Tx) error { // an older build appended an entry without indexing it
			return appendAuditUnindexed(tx, t0, "test.unindexed", "node:old")
		},
	} {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(damage); err != nil {
			t.Fatal(err)
		}
		db.Close()
		f, err := openFSM(path, func(error) {})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.verifyIndexes(); err != nil {
			t.Fatalf("after reopening: %v", err)
		}
		f.close()
	}
	n := openNode(t, dir)
	if got := auditSeqs(t, n, AuditQuery{Limit: MaxPageLimit}); loaded <= fleet.Audit || len(got) != loaded+1 {
		t.Fatalf("%d entries listed, want %d", len(got), loaded+1)
	}
	if got := auditSeqs(t, n, AuditQuery{Actor: "old"}); len(got) != 1 {
		t.Fatalf("the unindexed entry: %v", got)
	}
}

// appendAuditUnindexed is what a build without the audit indexes wrote:
// the entry, and the applied index moved past the index mark.
func appendAuditUnindexed(tx *bolt.Tx, at time.Time, typ, actor string) error {
	b := tx.Bucket(bAudit)
	e := AuditEntry{Seq: 1, Time: at.UTC(), Type: typ, Actor: actor, Prev: genesisHash}
	if k, v := b.Cursor().Last(); k != nil {
		var last AuditEntry
		if err := json.Unmarshal(v, &last); err != nil {
			return err
		}
		e.Seq, e.Prev = last.Seq+1, last.Hash
	}
	e.Hash = e.ComputeHash()
	if err := putJSON(b, be64(e.Seq), e); err != nil {
		return err
	}
	return tx.Bucket(bMeta).Put(keyAppliedIndex, be64(9))
}

func TestAuditQueryRefusesBadInput(t *testing.T) {
	n := openNode(t, t.TempDir())
	if err := n.AppendAudit(context.Background(), "test", "node:n1", "", nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"%%%", "!", strings.Repeat("A", 3), encodeCursor(cursorAudit, make([]byte, 15)), encodeCursor(cursorAudit, make([]byte, 17)),
		encodeCursor(cursorAttestations, make([]byte, 16)), encodeCursor(cursorDevices, []byte("dev"))} {
		if _, _, err := n.QueryAudit(AuditQuery{Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v", c, err)
		}
	}
	for _, q := range []AuditQuery{{Since: t0, Until: t0.Add(-time.Second)}, {Type: strings.Repeat("x", MaxIndexedValue+1)}, {Actor: strings.Repeat("x", MaxIndexedValue+1)}} {
		if _, _, err := n.QueryAudit(q); !errors.Is(err, ErrBadFilter) {
			t.Errorf("%+v: %v", q, err)
		}
	}
}
