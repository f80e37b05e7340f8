package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 150 * time.Millisecond
	c.ElectionTimeout = 150 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

func openNode(t *testing.T, dir string, opts ...Option) *Node {
	t.Helper()
	return openConfigured(t, Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true}, opts...)
}

// openConfigured opens a node with cfg and fast Raft timing, and waits
// until it leads.
func openConfigured(t *testing.T, cfg Config, opts ...Option) *Node {
	t.Helper()
	n, err := Open(cfg, append([]Option{WithRaftConfig(fastRaft)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func record(dev string, outcome string) AttestationRecord {
	return AttestationRecord{Time: t0, Node: "n1", DeviceID: dev, Stage: "complete", Outcome: outcome, Evidence: Evidence{Nonce: "00"}}
}

func enroll(t *testing.T, n *Node, session, dev string) uint64 {
	t.Helper()
	id, err := n.CommitEnrollment(context.Background(), session, time.Now().Add(time.Minute),
		Device{ID: dev, Status: DeviceActive, CertificateSerial: "s-" + session}, record(dev, OutcomeAccepted))
	if err != nil {
		t.Fatalf("commit %s: %v", session, err)
	}
	return id
}

func TestCommitAndRead(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	a1 := enroll(t, n, "sess-1", "dev-a")
	r1, err := n.CommitRejection(ctx, "sess-2", time.Now().Add(time.Minute), record("dev-a", OutcomeRejected))
	if err != nil {
		t.Fatal(err)
	}
	a2 := enroll(t, n, "sess-3", "dev-b")
	if !(a1 < r1 && r1 < a2) {
		t.Fatalf("attestation IDs not increasing in commit order: %d %d %d", a1, r1, a2)
	}
	d, err := n.Device("dev-a")
	if err != nil || d.Enrollments != 1 || d.LastAttestationID != a1 || !d.EnrolledAt.Equal(t0) || d.CertificateSerial != "s-sess-1" {
		t.Fatalf("device %+v %v", d, err)
	}
	recs, err := n.Attestations(AttestationQuery{DeviceID: "dev-a"})
	if err != nil || len(recs) != 2 || recs[0].ID != r1 || recs[1].ID != a1 || recs[0].Outcome != OutcomeRejected {
		t.Fatalf("dev-a records %+v %v", recs, err)
	}
	all, _ := n.Attestations(AttestationQuery{Limit: 2})
	if len(all) != 2 || all[0].ID != a2 || all[1].ID != r1 {
		t.Fatalf("newest two: %+v", all)
	}
	if devs, _ := n.Devices(); len(devs) != 2 || devs[0].ID != "dev-a" || devs[1].ID != "dev-b" {
		t.Fatalf("devices %+v", devs)
	}
	if _, err := n.Device("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing device: %v", err)
	}
	if _, err := n.Attestation(9999); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing attestation: %v", err)
	}
	// A rejection never creates a device.
	if _, err := n.CommitRejection(ctx, "", time.Time{}, record("dev-z", OutcomeRejected)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Device("dev-z"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rejection created a device: %v", err)
	}
}

func TestSessionCompletesOnce(t *testing.T) {
	n := openNode(t, t.TempDir())
	enroll(t, n, "s1", "dev")
	before, _ := n.StateHash()
	_, err := n.CommitEnrollment(context.Background(), "s1", time.Now().Add(time.Minute), Device{ID: "dev"}, record("dev", OutcomeAccepted))
	if !errors.Is(err, ErrSessionUsed) {
		t.Fatalf("reused session: %v", err)
	}
	if after, _ := n.StateHash(); after != before {
		t.Fatal("a refused command changed the state")
	}
	// A session consumed by a rejection cannot be completed either.
	if _, err := n.CommitRejection(context.Background(), "s2", time.Now().Add(time.Minute), record("dev", OutcomeRejected)); err != nil {
		t.Fatal(err)
	}
	if used, _ := n.SessionUsed("s2"); !used {
		t.Fatal("rejection did not consume the session")
	}
	if _, err := n.CommitEnrollment(context.Background(), "s2", time.Now().Add(time.Minute), Device{ID: "dev"}, record("dev", OutcomeAccepted)); !errors.Is(err, ErrSessionUsed) {
		t.Fatalf("session consumed by a rejection: %v", err)
	}
	// A new session for the same device is a second enrollment.
	enroll(t, n, "s3", "dev")
	if d, _ := n.Device("dev"); d.Enrollments != 2 || !d.EnrolledAt.Equal(t0) {
		t.Fatalf("second enrollment: %+v", d)
	}
}

// An entry of unknown type or version halts the replica, loudly and for
// good: nothing at or after it applies (it is never skipped), the applied
// index stays before it, no snapshot is taken past it, and the node's
// health names it.
func TestUnknownCommandHalts(t *testing.T) {
	if _, _, err := decodeCommand([]byte(`{"type":"device.teleport","version":1,"payload":{}}`)); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, _, err := decodeCommand([]byte(`{"type":"enrollment.accept","version":9,"payload":{}}`)); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown version: %v", err)
	}
	if _, _, err := decodeCommand([]byte(`not json`)); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("garbage: %v", err)
	}

	var logs lockedBuffer
	n := openConfigured(t, Config{NodeID: "n1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", Bootstrap: true, Logger: jsonLogger(&logs, slog.LevelInfo)},
		WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	enroll(t, n, "s1", "d1")
	before, _ := n.StateHash()
	applied := n.fsm.appliedIndex()
	f := n.raft.Apply([]byte(`{"type":"device.teleport","version":1,"time":"2026-01-01T00:00:00Z","payload":{}}`), time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	if res, _ := f.Response().(applyResult); !errors.Is(res.Err, ErrHalted) {
		t.Fatalf("response %+v", f.Response())
	}
	h := n.Halted()
	if h == nil || h.Index != f.Index() || h.Type != "device.teleport" || h.Version != 1 || !strings.Contains(h.Reason, "unknown command") {
		t.Fatalf("halt %+v, want index %d device.teleport v1", h, f.Index())
	}
	// A valid command after it is not applied either.
	g := n.raft.Apply(mustEncode(t, "attestation.reject", 1, &rejectAttestation{Attestation: record("d2", OutcomeRejected)}), time.Second)
	if err := g.Error(); err != nil {
		t.Fatal(err)
	}
	if res, _ := g.Response().(applyResult); !errors.Is(res.Err, ErrHalted) {
		t.Fatalf("a later entry: %+v", g.Response())
	}
	if after, _ := n.StateHash(); after != before {
		t.Fatal("a halted replica changed its state")
	}
	if got := n.fsm.appliedIndex(); got != applied || n.fsm.last.Load() != applied {
		t.Fatalf("applied index %d, last %d; want %d (before the unknown entry)", got, n.fsm.last.Load(), applied)
	}
	if err := n.Snapshot(); err == nil {
		t.Fatal("a halted replica took a snapshot past the entry it could not apply")
	}
	// As leader it proposes nothing more and gives no read index.
	last := n.raft.LastIndex()
	if _, err := n.CommitRejection(context.Background(), "", time.Time{}, record("d3", OutcomeRejected)); !errors.Is(err, ErrHalted) {
		t.Fatalf("a write on a halted leader: %v", err)
	}
	if n.raft.LastIndex() != last {
		t.Fatal("a halted leader proposed an entry")
	}
	if _, err := n.ReadIndex(context.Background()); !errors.Is(err, ErrHalted) {
		t.Fatalf("a read index from a halted leader: %v", err)
	}
	if p := strings.Join(n.Problems(), "; "); !strings.Contains(p, fmt.Sprintf("halted at Raft index %d (device.teleport v1)", h.Index)) {
		t.Fatalf("problems: %s", p)
	}
	logged := false
	for _, r := range logs.records(t) {
		if r["level"] == "ERROR" && strings.HasPrefix(r["msg"].(string), "registry halted") && r["type"] == "device.teleport" && r["index"] == float64(h.Index) {
			logged = true
		}
	}
	if !logged {
		t.Fatal("the halt was not logged at error level naming the entry")
	}
}

func mustEncode(t *testing.T, typ string, version int, payload any) []byte {
	t.Helper()
	b, err := encodeCommand(typ, version, time.Now().UTC(), payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSessionsArePruned(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	old := time.Now().Add(-time.Hour)
	if _, err := n.CommitRejection(ctx, "old", old, record("d", OutcomeRejected)); err != nil {
		t.Fatal(err)
	}
	// The next command's time is now: "old" expired an hour ago, past retention.
	if _, err := n.CommitRejection(ctx, "fresh", time.Now().Add(time.Minute), record("d", OutcomeRejected)); err != nil {
		t.Fatal(err)
	}
	if used, _ := n.SessionUsed("old"); used {
		t.Fatal("expired session not pruned")
	}
	if used, _ := n.SessionUsed("fresh"); !used {
		t.Fatal("live session pruned")
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	n := openNode(t, t.TempDir())
	for i := 0; i < 20; i++ {
		enroll(t, n, fmt.Sprintf("s%d", i), fmt.Sprintf("dev-%d", i%7))
	}
	want, _ := n.StateHash()
	snap, err := n.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil || sink.cancelled {
		t.Fatal(err)
	}
	snap.Release()

	fatal := func(err error) { t.Errorf("fatal: %v", err) }
	other, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), fatal)
	if err != nil {
		t.Fatal(err)
	}
	defer other.close()
	// Pre-existing state must disappear on restore.
	other.ApplyBatch([]*raft.Log{mustLog(t, 1, "stale-session", "stale-device")})
	if err := other.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, _ := other.stateHash(); got != want {
		t.Fatalf("restored hash %s, want %s", got, want)
	}
	if _, err := other.device("stale-device"); !errors.Is(err, ErrNotFound) {
		t.Fatal("restore kept state that was not in the snapshot")
	}
	if other.appliedIndex() != 0 {
		t.Fatal("restore kept an applied index from another log")
	}
	if err := other.Restore(io.NopCloser(bytes.NewReader([]byte("garbage")))); err == nil {
		t.Fatal("restored garbage")
	}
	if got, _ := other.stateHash(); got != want {
		t.Fatal("a failed restore damaged the state")
	}
}

func mustLog(t *testing.T, index uint64, session, dev string) *raft.Log {
	t.Helper()
	b, err := encodeCommand("enrollment.accept", 1, t0, &acceptEnrollment{SessionID: session, SessionExpires: t0.Add(time.Minute), Device: Device{ID: dev, Status: DeviceActive}, Attestation: record(dev, OutcomeAccepted)})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

func TestApplyBatch(t *testing.T) {
	f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	res := f.ApplyBatch([]*raft.Log{
		mustLog(t, 1, "a", "d1"),
		{Index: 2, Type: raft.LogNoop},
		mustLog(t, 3, "a", "d2"), // same session: refused
		mustLog(t, 4, "b", "d1"),
	})
	if r := res[0].(applyResult); r.Err != nil || r.Result != 1 {
		t.Fatalf("entry 1: %+v", r)
	}
	if res[1] != nil {
		t.Fatalf("no-op entry produced %v", res[1])
	}
	if r := res[2].(applyResult); !errors.Is(r.Err, ErrSessionUsed) {
		t.Fatalf("entry 3: %+v", r)
	}
	if r := res[3].(applyResult); r.Err != nil || r.Result != 4 {
		t.Fatalf("entry 4: %+v", r)
	}
	if _, err := f.device("d2"); !errors.Is(err, ErrNotFound) {
		t.Fatal("refused entry wrote a device")
	}
	if d, _ := f.device("d1"); d.Enrollments != 2 {
		t.Fatalf("d1 %+v", d)
	}
	// Replaying entries at or below the applied index changes nothing.
	before, _ := f.stateHash()
	res = f.ApplyBatch([]*raft.Log{mustLog(t, 3, "c", "d3")})
	if after, _ := f.stateHash(); after != before || res[0] != nil {
		t.Fatal("an already-applied index was applied again")
	}
}

func TestRestartRecovers(t *testing.T) {
	for _, tc := range []struct {
		name         string
		snapshot     bool
		deleteFSM    bool
		trailingLogs uint64
	}{
		{"log only", false, false, 10240},
		{"snapshot and log", true, false, 2},
		{"fsm.db lost: snapshot and log", true, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := func(c *raft.Config) {
				fastRaft(c)
				c.TrailingLogs = tc.trailingLogs
				c.SnapshotThreshold = 1 << 30 // only explicit snapshots
			}
			n, err := Open(Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true}, WithRaftConfig(cfg))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := n.WaitLeader(ctx); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 10; i++ {
				enroll(t, n, fmt.Sprintf("s%d", i), fmt.Sprintf("dev-%d", i))
			}
			if tc.snapshot {
				if err := n.Snapshot(); err != nil {
					t.Fatal(err)
				}
			}
			for i := 10; i < 15; i++ {
				enroll(t, n, fmt.Sprintf("s%d", i), fmt.Sprintf("dev-%d", i))
			}
			want, _ := n.StateHash()
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.deleteFSM {
				if err := os.Remove(filepath.Join(dir, "fsm.db")); err != nil {
					t.Fatal(err)
				}
			}
			n2 := openNode(t, dir, WithRaftConfig(cfg))
			// Raft applies the log tail asynchronously after a restart.
			deadline := time.Now().Add(5 * time.Second)
			for {
				got, _ := n2.StateHash()
				if got == want {
					break
				}
				if time.Now().After(deadline) {
					devs, _ := n2.Devices()
					t.Fatalf("state after restart differs: %d devices", len(devs))
				}
				time.Sleep(20 * time.Millisecond)
			}
			enroll(t, n2, "after", "dev-new")
			if used, _ := n2.SessionUsed("s3"); !used {
				t.Fatal("used session forgotten across restart")
			}
		})
	}
}

// BenchmarkCommitRejection measures one Raft commit of an attestation record
// (log append with fsync, FSM transaction with fsync) on a single node.
func BenchmarkCommitRejection(b *testing.B) {
	n, err := Open(Config{NodeID: "n1", DataDir: b.TempDir(), RaftAddr: "127.0.0.1:0", Bootstrap: true}, WithRaftConfig(fastRaft))
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	ctx := context.Background()
	if err := n.WaitLeader(ctx); err != nil {
		b.Fatal(err)
	}
	rec := record("dev", OutcomeRejected)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := n.CommitRejection(ctx, fmt.Sprintf("s%d", i), time.Now().Add(time.Minute), rec); err != nil {
			b.Fatal(err)
		}
	}
}

// Every (state, operation) pair: the legal ones lead where the state machine
// says, every other one is refused with ErrIllegalTransition.
func TestDeviceStateMachine(t *testing.T) {
	states := []string{DevicePending, DeviceActive, DeviceDisabled, DeviceQuarantined, DeviceRevoked, DeviceDeleted}
	legal := map[[2]string]string{
		{DevicePending, OpApprove}:     DeviceActive,
		{DevicePending, OpDisable}:     DeviceDisabled,
		{DeviceActive, OpDisable}:      DeviceDisabled,
		{DeviceQuarantined, OpDisable}: DeviceDisabled,
		{DeviceDisabled, OpEnable}:     DeviceActive,
		{DeviceQuarantined, OpEnable}:  DeviceActive,
		{DeviceActive, OpQuarantine}:   DeviceQuarantined,
		{DevicePending, OpDelete}:      DeviceDeleted,
		{DeviceActive, OpDelete}:       DeviceDeleted,
		{DeviceDisabled, OpDelete}:     DeviceDeleted,
		{DeviceQuarantined, OpDelete}:  DeviceDeleted,
		{DeviceRevoked, OpDelete}:      DeviceDeleted,
		{DevicePending, OpRevoke}:      DeviceRevoked,
		{DeviceActive, OpRevoke}:       DeviceRevoked,
		{DeviceDisabled, OpRevoke}:     DeviceRevoked,
		{DeviceQuarantined, OpRevoke}:  DeviceRevoked,
	}
	n := 0
	for _, s := range states {
		for _, op := range append(Ops(), "explode") {
			to, err := Transition(s, op)
			want, ok := legal[[2]string{s, op}]
			switch {
			case ok && (err != nil || to != want):
				t.Errorf("%s from %s: %q, %v; want %s", op, s, to, err, want)
			case !ok && !errors.Is(err, ErrIllegalTransition):
				t.Errorf("%s from %s allowed (→ %s)", op, s, to)
			case ok:
				n++
			}
		}
	}
	if n != len(legal) {
		t.Fatalf("%d legal transitions exercised, want %d", n, len(legal))
	}
}

// The FSM re-checks a device's state when an enrollment commits: a device
// disabled between the enroller's look and the commit stays disabled, and
// the refused command writes nothing.
func TestEnrollmentOfDisabledDeviceRefusedAtApply(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	enroll(t, n, "s1", "dev")
	if _, err := n.TransitionDevice(ctx, "dev", OpDisable, "ops", "stolen"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.TransitionDevice(ctx, "dev", OpQuarantine, "ops", "x"); !errors.Is(err, ErrIllegalTransition) {
		t.Fatalf("quarantine of a disabled device: %v", err)
	}
	before, _ := n.StateHash()
	_, err := n.CommitEnrollment(ctx, "s2", time.Now().Add(time.Minute), Device{ID: "dev", Status: DeviceActive}, record("dev", OutcomeAccepted))
	if !errors.Is(err, ErrDeviceInactive) {
		t.Fatalf("enrollment of a disabled device: %v", err)
	}
	if after, _ := n.StateHash(); after != before {
		t.Fatal("a refused enrollment changed the state")
	}
	if d, _ := n.Device("dev"); d.Status != DeviceDisabled || len(d.History) != 1 || d.History[0].Reason != "stolen" {
		t.Fatalf("device %+v", d)
	}
}

// Revocation commits its state change first; from that index on the FSM
// refuses every command that would give the device a certificate (an
// enrollment, active or pending, and a renewal), and writes nothing for it.
func TestRevokedDeviceRefusesIssuanceAtApply(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	enroll(t, n, "s1", "dev")
	if _, err := n.TransitionDevice(ctx, "dev", OpRevoke, "ops", "stolen"); err != nil {
		t.Fatal(err)
	}
	before, _ := n.StateHash()
	for _, status := range []string{DeviceActive, DevicePending} {
		rec := record("dev", OutcomeAccepted)
		rec.CertificateSerial = "after-" + status
		if _, err := n.CommitEnrollment(ctx, "s-"+status, time.Now().Add(time.Minute), Device{ID: "dev", Status: status}, rec); !errors.Is(err, ErrDeviceInactive) {
			t.Fatalf("%s enrollment of a revoked device: %v", status, err)
		}
	}
	rec := record("dev", OutcomeAccepted)
	rec.Stage, rec.CertificateSerial = "renew", "after-renewal"
	if _, err := n.CommitRenewal(ctx, "s-renew", time.Now().Add(time.Minute), rec, time.Now().Add(time.Hour)); !errors.Is(err, ErrDeviceInactive) {
		t.Fatalf("renewal of a revoked device: %v", err)
	}
	if after, _ := n.StateHash(); after != before {
		t.Fatal("a refused issuance changed the state")
	}
}

// Open fails with an error naming the cause, never a panic: the Raft port
// taken (with its address), and a corrupt raft.db or fsm.db (with its path).
func TestOpenFailsClearly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	_, err = Open(Config{NodeID: "n1", DataDir: t.TempDir(), RaftAddr: addr, Bootstrap: true})
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Raft port taken: %v", err)
	}

	for _, file := range []string{"raft.db", "fsm.db"} {
		dir := t.TempDir()
		n := openNode(t, dir)
		enroll(t, n, "s1", "dev")
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, file)
		if err := os.WriteFile(path, bytes.Repeat([]byte("not a database "), 1000), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true})
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("garbage in %s: %v", file, err)
		}
	}
}
