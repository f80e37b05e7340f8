package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	bolt "go.etcd.io/bbolt"
)

func mustVerifyIndexes(t *testing.T, n *Node, after string) {
	t.Helper()
	if err := n.VerifyIndexes(); err != nil {
		t.Fatalf("after %s: %v", after, err)
	}
}

// Every command that writes a device or a record keeps the indexes equal to
// what the primary data implies, and a restored snapshot has them too.
func TestQueryIndexesFollowEveryWrite(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		mustVerifyIndexes(t, n, what)
	}
	grouped := func(dev, outcome, group string) AttestationRecord {
		a := record(dev, outcome)
		a.Policy = &attest.Decision{PolicyVersion: 1, Group: group, Mode: "auto", Passed: true}
		return a
	}
	for i := 0; i < 4; i++ {
		dev := fmt.Sprintf("d%d", i)
		_, err := n.CommitEnrollment(ctx, "e"+dev, exp, Device{ID: dev, Status: DeviceActive, Group: "g1", Claims: Claims{Model: "m1"}}, grouped(dev, OutcomeAccepted, "g1"))
		step("enroll "+dev, err)
	}
	_, err := n.CommitEnrollment(ctx, "ep", exp, Device{ID: "dp", Status: DevicePending, Group: "g2"}, grouped("dp", OutcomePending, "g2"), Flag{Name: FlagReprovisioned})
	step("enroll pending with a flag", err)
	_, err = n.TransitionDevice(ctx, "dp", OpApprove, "op", "ok")
	step("approve", err)
	_, err = n.LabelDevice(ctx, "d0", "op", map[string]string{"site": "a", "env": "prod"}, nil)
	step("label", err)
	_, err = n.LabelDevice(ctx, "d0", "op", map[string]string{"site": "b"}, []string{"env"})
	step("relabel", err)
	r := grouped("d1", OutcomeAccepted, "g3")
	_, err = n.CommitRenewal(ctx, "r1", exp, r, time.Now().Add(time.Hour))
	step("renewal moving the group", err)
	rej := record("d2", OutcomeRejected)
	rej.Code = "pcr_mismatch"
	_, err = n.CommitFailedRenewal(ctx, "fr", exp, rej)
	step("failed renewal quarantines", err)
	for i := 0; i < FailureThreshold; i++ {
		rej := record("d3", OutcomeRejected)
		rej.Code = "ek_untrusted"
		_, err = n.CommitRejection(ctx, fmt.Sprintf("x%d", i), exp, rej)
		step("rejection", err)
	}
	anon := record("", OutcomeRejected)
	anon.Code = "ek_untrusted"
	_, err = n.CommitRejection(ctx, "anon", exp, anon)
	step("rejection without a device", err)
	step("stale", n.MarkStale(ctx, map[string]time.Time{"d1": time.Now().Add(time.Hour)}))
	_, err = n.ConfigureDevice(ctx, "d1", "op", []byte(`{"a":1}`))
	step("config", err)
	_, err = n.TransitionDevice(ctx, "d0", OpDelete, "op", "gone")
	step("delete", err)
	_, _, err = n.Compact(ctx, "op", time.Nanosecond, time.Nanosecond)
	step("retention compaction", err)

	// The filters see the writes.
	if got := deviceIDs(t, n, DeviceQuery{Flags: []string{FlagRepeatedFailures}}); !slices.Equal(got, []string{"d3"}) {
		t.Fatalf("repeated_failures: %v", got)
	}
	if got := deviceIDs(t, n, DeviceQuery{Group: "g3"}); !slices.Equal(got, []string{"d1"}) {
		t.Fatalf("group after renewal: %v", got)
	}
	if got := deviceIDs(t, n, DeviceQuery{Labels: []string{"site=b"}}); !slices.Equal(got, []string{"d0"}) {
		t.Fatalf("label: %v", got)
	}
	if got := deviceIDs(t, n, DeviceQuery{Labels: []string{"env=prod"}}); len(got) != 0 {
		t.Fatalf("a removed label still matches: %v", got)
	}
	if got := deviceIDs(t, n, DeviceQuery{State: DeviceQuarantined}); !slices.Equal(got, []string{"d2"}) {
		t.Fatalf("quarantined: %v", got)
	}
	if recs, _, _ := n.QueryAttestations(AttestationFilter{Outcome: OutcomeRejected}); len(recs) != 0 {
		t.Fatalf("compaction left %d rejected records in the index", len(recs))
	}

	// A snapshot restores with its indexes; one from a build without them
	// (no index buckets, no mark) gets them rebuilt.
	snap := snapshotBytes(t, n.fsm)
	for _, older := range []bool{false, true} {
		b := snap
		if older {
			b = stripIndexes(t, snap)
		}
		other, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			t.Fatal(err)
		}
		if err := other.verifyIndexes(); err != nil {
			t.Fatalf("restored (older build %v): %v", older, err)
		}
		want, _ := n.StateHash()
		if got, _ := other.stateHash(); got != want {
			t.Fatalf("restored (older build %v): state hash %s, want %s", older, got, want)
		}
		other.close()
	}
}

func deviceIDs(t *testing.T, n *Node, q DeviceQuery) []string {
	t.Helper()
	devs, _, err := n.QueryDevices(q)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	return ids
}

func snapshotBytes(t *testing.T, f *fsm) []byte {
	t.Helper()
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	var sink memSink
	if err := s.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

// stripIndexes makes a snapshot look like an older build's.
func stripIndexes(t *testing.T, snap []byte) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "old.db")
	f, err := openFSM(path, func(error) {})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if err := f.db.Update(func(tx *bolt.Tx) error {
		for _, b := range indexBuckets {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Delete(keyIndexMark)
	}); err != nil {
		t.Fatal(err)
	}
	out := snapshotBytes(t, f)
	f.close()
	return out
}

// A data directory from a build without the indexes, or one an older build
// applied entries to after a newer one (the mark lags the applied index),
// is reindexed when opened.
func TestQueryIndexesRebuiltOnOpen(t *testing.T) {
	dir := t.TempDir()
	if err := LoadSynthetic(dir, SyntheticFleet{Devices: 300, Attestations: 900, End: t0, Span: time.Hour}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "fsm.db")
	for _, damage := range []func(tx *bolt.Tx) error{
		func(tx *bolt.Tx) error { // no indexes at all
			for _, b := range indexBuckets {
				if err := tx.DeleteBucket(b); err != nil {
					return err
				}
			}
			return tx.Bucket(bMeta).Delete(keyIndexMark)
		},
		func(tx *bolt.Tx) error { // an older build changed a device and applied an entry
			d := SyntheticDevice(0)
			d.Status = DeviceDisabled
			if err := putJSON(tx.Bucket(bDevices), []byte(d.ID), d); err != nil {
				return err
			}
			return tx.Bucket(bMeta).Put(keyAppliedIndex, be64(7))
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
}

// The filters, alone and combined, select exactly what a scan of every
// device or record would, page by page.
func TestQueryFiltersMatchAScan(t *testing.T) {
	dir := t.TempDir()
	fleet := SyntheticFleet{Devices: 3000, Attestations: 9000, End: t0, Span: 30 * 24 * time.Hour}
	if err := LoadSynthetic(dir, fleet); err != nil {
		t.Fatal(err)
	}
	n := openNode(t, dir)
	mustVerifyIndexes(t, n, "load")
	all, err := n.Devices()
	if err != nil || len(all) != fleet.Devices {
		t.Fatalf("%d devices, %v", len(all), err)
	}
	for _, q := range []DeviceQuery{
		{},
		{State: DevicePending},
		{Group: "group-03"},
		{Group: "canary"},
		{Labels: []string{"site=site-07"}},
		{Labels: []string{"env=staging", "site=site-09"}},
		{Flags: []string{FlagStale}},
		{Model: "model-4"},
		{State: DeviceActive, Group: "group-05", Labels: []string{"env=prod"}, Model: "model-5"},
		{State: DeviceRevoked, Flags: []string{FlagPossibleClone}},
		{Group: "no-such-group"},
	} {
		var want []string
		for _, d := range all {
			if q.match(d) {
				want = append(want, d.ID)
			}
		}
		for _, limit := range []int{0, 37} {
			q.Limit = limit
			var got []string
			walkDevices(t, n, q, func(d Device) { got = append(got, d.ID) })
			if !slices.Equal(got, want) {
				t.Fatalf("%+v: %d devices, want %d", q, len(got), len(want))
			}
		}
	}

	var recs []AttestationRecord
	for c := ""; ; {
		page, next, err := n.QueryAttestations(AttestationFilter{Cursor: c, Limit: MaxPageLimit})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, page...)
		if c = next; c == "" {
			break
		}
	}
	if len(recs) != fleet.Attestations {
		t.Fatalf("%d records, want %d", len(recs), fleet.Attestations)
	}
	mid, late := t0.Add(-10*24*time.Hour), t0.Add(-2*24*time.Hour)
	for _, q := range []AttestationFilter{
		{Outcome: OutcomeRejected},
		{Outcome: OutcomePending},
		{Code: "pcr_mismatch"},
		{Group: "group-02"},
		{DeviceID: SyntheticDevice(5).ID},
		{Since: mid},
		{Until: mid},
		{Since: mid, Until: late},
		{Outcome: OutcomeRejected, Code: "policy_denied", Since: mid},
		{Outcome: OutcomeAccepted, Group: "group-07", Until: late},
		{DeviceID: SyntheticDevice(8).ID, Outcome: OutcomeRejected},
		{Code: "no-such-code"},
	} {
		var want []uint64
		for _, a := range recs {
			if q.match(a) {
				want = append(want, a.ID)
			}
		}
		for _, limit := range []int{0, 53} {
			q.Limit = limit
			var got []uint64
			walkAttestations(t, n, q, func(a AttestationRecord) { got = append(got, a.ID) })
			if !slices.Equal(got, want) {
				t.Fatalf("%+v: %d records, want %d", q, len(got), len(want))
			}
		}
	}
}

func walkDevices(t *testing.T, n *Node, q DeviceQuery, fn func(Device)) {
	t.Helper()
	for {
		page, next, err := n.QueryDevices(q)
		if err != nil {
			t.Fatal(err)
		}
		if next != "" && len(page) != pageLimit(q.Limit) {
			t.Fatalf("a short page (%d) with a next cursor", len(page))
		}
		for _, d := range page {
			fn(d)
		}
		if q.Cursor = next; next == "" {
			return
		}
	}
}

func walkAttestations(t *testing.T, n *Node, q AttestationFilter, fn func(AttestationRecord)) {
	t.Helper()
	for {
		page, next, err := n.QueryAttestations(q)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page {
			fn(a)
		}
		if q.Cursor = next; next == "" {
			return
		}
	}
}

// Walking the pages while devices enroll sees every device that existed
// before the walk exactly once, in order.
func TestQueryPagingUnderConcurrentInserts(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	var before []string
	for i := 0; i < 120; i++ {
		id := fmt.Sprintf("dev-%03d", i*2)
		enroll(t, n, "s-"+id, id)
		before = append(before, id)
	}
	recsBefore, _ := n.Attestations(AttestationQuery{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("dev-%03d", i*2+1) // between existing IDs
			if _, err := n.CommitEnrollment(ctx, "c-"+id, time.Now().Add(time.Minute), Device{ID: id, Status: DeviceActive}, record(id, OutcomeAccepted)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	seen := map[string]int{}
	var order []string
	walkDevices(t, n, DeviceQuery{Limit: 7}, func(d Device) {
		seen[d.ID]++
		order = append(order, d.ID)
		time.Sleep(time.Millisecond)
	})
	seenRecs := map[uint64]int{}
	var last AttestationRecord
	walkAttestations(t, n, AttestationFilter{Limit: 9}, func(a AttestationRecord) {
		if last.ID != 0 && (a.Time.After(last.Time) || a.Time.Equal(last.Time) && a.ID >= last.ID) {
			t.Errorf("record %d after %d: not newest first", a.ID, last.ID)
		}
		last = a
		seenRecs[a.ID]++
		time.Sleep(time.Millisecond)
	})
	close(stop)
	wg.Wait()
	if !slices.IsSorted(order) {
		t.Fatal("devices out of ID order")
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s seen %d times", id, c)
		}
	}
	for _, id := range before {
		if seen[id] != 1 {
			t.Fatalf("%s missed", id)
		}
	}
	for _, a := range recsBefore {
		if seenRecs[a.ID] != 1 {
			t.Fatalf("record %d seen %d times", a.ID, seenRecs[a.ID])
		}
	}
	if len(seen) <= len(before) {
		t.Log("no insert landed during the walk")
	}
	mustVerifyIndexes(t, n, "concurrent inserts")
}

func TestQueryRefusesBadInput(t *testing.T) {
	n := openNode(t, t.TempDir())
	enroll(t, n, "s", "dev")
	for _, c := range []string{"%%%", "!", strings.Repeat("A", 3), encodeCursor(cursorAttestations, make([]byte, 16)) + "x", encodeCursor(cursorAttestations, make([]byte, 15))} {
		if _, _, err := n.QueryDevices(DeviceQuery{Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("device cursor %q: %v", c, err)
		}
		if _, _, err := n.QueryAttestations(AttestationFilter{Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("attestation cursor %q: %v", c, err)
		}
	}
	if _, _, err := n.QueryDevices(DeviceQuery{State: "sleeping"}); !errors.Is(err, ErrUnknownState) {
		t.Errorf("state: %v", err)
	}
	for _, q := range []DeviceQuery{{Labels: []string{"novalue"}}, {Labels: []string{"BAD=x"}}, {Flags: []string{"shiny"}}} {
		if _, _, err := n.QueryDevices(q); !errors.Is(err, ErrBadFilter) {
			t.Errorf("%+v: %v", q, err)
		}
	}
	for _, q := range []AttestationFilter{{Outcome: "maybe"}, {Since: t0, Until: t0.Add(-time.Second)}} {
		if _, _, err := n.QueryAttestations(q); !errors.Is(err, ErrBadFilter) {
			t.Errorf("%+v: %v", q, err)
		}
	}
}

// The small lists page by their bucket's keys: enrollments by EK hash,
// policy versions newest first.
func TestBucketPaging(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	var es []IndividualEnrollment
	for i := 0; i < 25; i++ {
		es = append(es, IndividualEnrollment{EKPublicSHA256: fmt.Sprintf("%064x", i*7%25), Group: "g"})
	}
	if err := n.ImportEnrollments(ctx, "t", es); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		if _, err := n.ApplyPolicy(ctx, "t", []byte(fmt.Sprintf(`{"groups":[],"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	var eks []string
	for c, pages := "", 0; ; pages++ {
		page, next, err := n.IndividualEnrollmentsPage(c, 4)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			eks = append(eks, e.EKPublicSHA256)
		}
		if c = next; c == "" {
			if pages != 6 {
				t.Fatalf("%d pages of enrollments, want 7", pages+1)
			}
			break
		}
	}
	if len(eks) != 25 || !slices.IsSorted(eks) || len(slices.Compact(slices.Clone(eks))) != 25 {
		t.Fatalf("enrollments: %v", eks)
	}
	var versions []int
	for c := ""; ; {
		page, next, err := n.PolicyHistoryPage(c, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range page {
			versions = append(versions, p.Version)
		}
		if c = next; c == "" {
			break
		}
	}
	if len(versions) != 12 || versions[0] != 12 || versions[11] != 1 || !slices.IsSortedFunc(versions, func(a, b int) int { return b - a }) {
		t.Fatalf("policy versions: %v", versions)
	}
	if _, _, err := n.PolicyHistoryPage(encodeCursor('e', []byte("x")), 5); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("an enrollments cursor for the policy history: %v", err)
	}
}

// A claimed model is the device's to choose: one too long for a bolt key
// must not fail the apply (which would stop the replica); it is left out of
// the model index, and filtering by such a value is refused.
func TestHugeClaimIsNotIndexed(t *testing.T) {
	fatal := make(chan error, 1)
	n := openNode(t, t.TempDir(), WithFatalHook(func(err error) { fatal <- err }))
	huge := strings.Repeat("m", 40<<10)
	rec := record("big", OutcomeAccepted)
	rec.Evidence.Claims.Model = huge
	if _, err := n.CommitEnrollment(context.Background(), "s", time.Now().Add(time.Minute), Device{ID: "big", Status: DeviceActive, Claims: Claims{Model: huge}}, rec); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-fatal:
		t.Fatalf("the replica stopped: %v", err)
	default:
	}
	mustVerifyIndexes(t, n, "a huge claim")
	if got := deviceIDs(t, n, DeviceQuery{State: DeviceActive}); !slices.Equal(got, []string{"big"}) {
		t.Fatalf("state filter: %v", got)
	}
	if _, _, err := n.QueryDevices(DeviceQuery{Model: huge}); !errors.Is(err, ErrBadFilter) {
		t.Fatalf("filter by a huge model: %v", err)
	}
}

// VerifyIndexes finds a missing, a stray and a changed index key, and
// names the bucket.
func TestVerifyIndexesFindsDamage(t *testing.T) {
	dir := t.TempDir()
	if err := LoadSynthetic(dir, SyntheticFleet{Devices: 200, Attestations: 600, Audit: 100, End: t0, Span: time.Hour}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "fsm.db")
	for _, c := range []struct {
		bucket []byte
		want   string
		damage func(b *bolt.Bucket) error
	}{
		{bIxDevLabel, "holds", func(b *bolt.Bucket) error { k, _ := b.Cursor().First(); return b.Delete(k) }},
		{bIxAttCode, "stray key", func(b *bolt.Bucket) error { return b.Put(append(lp("pcr_mismatch"), be64(1)...), nil) }},
		{bIxAudActor, "stray key", func(b *bolt.Bucket) error {
			k, _ := b.Cursor().Last()
			if err := b.Delete(k); err != nil {
				return err
			}
			return b.Put(append(lp("operator-9"), k[len(k)-16:]...), nil)
		}},
	} {
		f, err := openFSM(path, func(error) {})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.verifyIndexes(); err != nil {
			t.Fatalf("before damaging %s: %v", c.bucket, err)
		}
		if err := f.db.Update(func(tx *bolt.Tx) error { return c.damage(tx.Bucket(c.bucket)) }); err != nil {
			t.Fatal(err)
		}
		err = f.verifyIndexes()
		if !errors.Is(err, ErrIndexMismatch) || !strings.Contains(err.Error(), string(c.bucket)) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s damaged: %v", c.bucket, err)
		}
		// Repair for the next case.
		if err := f.db.Update(func(tx *bolt.Tx) error { return ensureIndexes(tx, true) }); err != nil {
			t.Fatal(err)
		}
		f.close()
	}
}
