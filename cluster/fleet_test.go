package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// recountFleet counts what FleetCounts reports by reading every device and
// record: the slow, obvious answer the counters must equal.
func recountFleet(t *testing.T, f *fsm, hours int, now time.Time) FleetCounts {
	t.Helper()
	out := FleetCounts{ByState: map[string]int{}, ByGroup: map[string]int{}, Hours: make([]FleetHour, hours)}
	first := now.UTC().Truncate(time.Hour).Add(-time.Duration(hours-1) * time.Hour)
	for i := range out.Hours {
		out.Hours[i] = FleetHour{Start: first.Add(time.Duration(i) * time.Hour), Refusals: map[string]int{}}
	}
	err := f.view(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bDevices).ForEach(func(_, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out.Devices++
			out.ByState[d.Status]++
			out.ByGroup[d.Group]++
			if d.Status == DevicePending {
				out.Pending++
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bAttestations).ForEach(func(_, v []byte) error {
			var a AttestationRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			if a.Time.Before(first) {
				return nil
			}
			i := int(a.Time.Sub(first) / time.Hour)
			if i >= hours {
				return nil
			}
			h := &out.Hours[i]
			switch a.Outcome {
			case OutcomeAccepted:
				h.Accepted++
			case OutcomePending:
				h.Pending++
			case OutcomeRejected:
				h.Rejected++
				h.Refusals[a.Code]++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustFleetEqualRecount(t *testing.T, n *Node, hours int, now time.Time, after string) FleetCounts {
	t.Helper()
	got, err := n.FleetCounts(hours, now)
	if err != nil {
		t.Fatalf("after %s: %v", after, err)
	}
	if want := recountFleet(t, n.fsm, hours, now); !reflect.DeepEqual(got, want) {
		t.Fatalf("after %s: counters\n%+v\nrecount\n%+v", after, got, want)
	}
	return got
}

// Synthetic records spread over hours: the counters equal a recount, the
// window bounds apply, and the counters are rebuilt when a data directory
// from an older build (no counters, or a lagging mark) is opened.
func TestFleetCountsSynthetic(t *testing.T) {
	dir := t.TempDir()
	end := t0.Add(30 * time.Minute)
	fleet := SyntheticFleet{Devices: 500, Attestations: 3000, End: end, Span: 200 * time.Hour}
	if err := LoadSynthetic(dir, fleet); err != nil {
		t.Fatal(err)
	}
	n := openNode(t, dir)
	for _, h := range []int{1, 24, MaxFleetHours} {
		got := mustFleetEqualRecount(t, n, h, end, fmt.Sprintf("load, %d hours", h))
		if len(got.Hours) != h || got.Devices != fleet.Devices {
			t.Fatalf("%d hours: %d buckets, %d devices", h, len(got.Hours), got.Devices)
		}
		rej := 0
		for _, x := range got.Hours {
			rej += x.Rejected
		}
		if h == MaxFleetHours && rej == 0 {
			t.Fatal("a week of synthetic records holds no refusal: the test proves nothing")
		}
	}
	for _, h := range []int{0, -1, MaxFleetHours + 1} {
		if _, err := n.FleetCounts(h, end); !errors.Is(err, ErrBadFilter) {
			t.Fatalf("hours=%d: %v", h, err)
		}
	}
	want, _ := n.FleetCounts(MaxFleetHours, end)
	n.Close()

	path := filepath.Join(dir, "fsm.db")
	for name, damage := range map[string]func(tx *bolt.Tx) error{
		"no counters, indexes of the previous layout": func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bIxCounts); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(bIxCounts); err != nil { // openBolt creates it empty too
				return err
			}
			m := tx.Bucket(bMeta).Get(keyIndexMark)
			return tx.Bucket(bMeta).Put(keyIndexMark, append(be64(1), m[8:]...))
		},
		"a wrong counter, mark lagging the applied index": func(tx *bolt.Tx) error {
			if err := tx.Bucket(bIxCounts).Put(countKey(countState, DeviceActive), be64(1)); err != nil {
				return err
			}
			return tx.Bucket(bMeta).Put(keyIndexMark, indexMark(0))
		},
	} {
		db, err := openBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(damage); err != nil {
			t.Fatal(err)
		}
		db.Close()
		f, err := openFSM(path, func(err error) { t.Errorf("fatal: %v", err) })
		if err != nil {
			t.Fatal(err)
		}
		if err := f.verifyIndexes(); err != nil {
			t.Fatalf("%s: not rebuilt on open: %v", name, err)
		}
		f.close()
		n := openNode(t, dir)
		if got := mustFleetEqualRecount(t, n, MaxFleetHours, end, name); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: rebuilt counters differ from the loaded ones", name)
		}
		n.Close()
	}
}

// A mixed workload through apply: every command that writes a device or a
// record keeps the counters equal to a recount, retention compaction
// included.
func TestFleetCountsFollowWrites(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	now := t0.Add(2 * time.Hour)
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		mustVerifyIndexes(t, n, what)
		mustFleetEqualRecount(t, n, 24, now, what)
	}
	for i := 0; i < 3; i++ {
		dev := fmt.Sprintf("d%d", i)
		_, err := n.CommitEnrollment(ctx, "e"+dev, exp, Device{ID: dev, Status: DeviceActive, Group: "g1"}, record(dev, OutcomeAccepted))
		step("enroll "+dev, err)
	}
	_, err := n.CommitEnrollment(ctx, "ep", exp, Device{ID: "dp", Status: DevicePending}, record("dp", OutcomePending))
	step("enroll pending", err)
	if c, _ := n.FleetCounts(24, now); c.Pending != 1 || c.ByGroup[""] != 1 || c.ByGroup["g1"] != 3 {
		t.Fatalf("pending queue and groups: %+v", c)
	}
	rej := record("", OutcomeRejected)
	rej.Code, rej.Time = "ek_untrusted", t0.Add(-time.Hour)
	_, err = n.CommitRejection(ctx, "x", exp, rej)
	step("rejection an hour earlier", err)
	_, err = n.TransitionDevice(ctx, "dp", OpApprove, "op", "ok")
	step("approve", err)
	_, err = n.TransitionDevice(ctx, "d1", OpQuarantine, "op", "look")
	step("quarantine", err)
	_, err = n.TransitionDevice(ctx, "d2", OpDelete, "op", "gone")
	step("delete", err)
	c, _ := n.FleetCounts(24, now)
	if c.Pending != 0 || c.ByState[DeviceQuarantined] != 1 || c.ByState[DeviceDeleted] != 1 || c.Hours[20].Refusals["ek_untrusted"] != 1 || c.Hours[21].Accepted != 3 {
		t.Fatalf("after the workload: %+v", c)
	}
	_, _, err = n.Compact(ctx, "op", time.Nanosecond, time.Nanosecond)
	step("retention compaction", err)
	if c, _ := n.FleetCounts(24, now); c.Hours[20].Rejected != 0 || len(c.Hours[20].Refusals) != 0 {
		t.Fatalf("compaction left the refusal counted: %+v", c.Hours[20])
	}
}
