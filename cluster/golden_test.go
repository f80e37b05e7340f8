package cluster

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// Every golden fixture a release committed (testvectors/golden/*) still
// replays, entry by entry through the FSM's apply path, to the state hash
// and facts it recorded, and its snapshot still restores to the same
// state; the query indexes verify after both. A build that fails this
// cannot replay old logs or take part in a rolling upgrade from that
// release (DESIGN.md "Golden fixtures"): fix the build, never the fixture.
func TestGoldenFixtures(t *testing.T) {
	dirs, err := filepath.Glob(testvectors.Path("golden/*"))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			continue
		}
		n++
		t.Run(filepath.Base(dir), func(t *testing.T) {
			exp, err := ReadGoldenExpect(dir)
			if err != nil {
				t.Fatal(err)
			}
			if exp.Log.StateHash == "" || exp.Log.StateHash != exp.Snapshot.StateHash || len(exp.Log.Commands) == 0 {
				t.Fatalf("%s: a log and a snapshot of one state expected: %+v", GoldenExpectFile, exp)
			}
			log, err := os.ReadFile(filepath.Join(dir, GoldenLogFile))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ReplayGolden(t.TempDir(), bytes.NewReader(log))
			if err != nil {
				t.Fatalf("replay %s: %v", GoldenLogFile, err)
			}
			if !reflect.DeepEqual(got, exp.Log) {
				t.Errorf("the log replays to\n%+v\nrecorded\n%+v", got, exp.Log)
			}
			snap := gunzip(t, filepath.Join(dir, GoldenSnapshotFile))
			if _, v, err := readSnapshotHeader(bytes.NewReader(snap)); err != nil || v != exp.SnapshotFormat {
				t.Errorf("snapshot format %d (%v), recorded %d", v, err, exp.SnapshotFormat)
			}
			got, err = RestoreGolden(t.TempDir(), bytes.NewReader(snap))
			if err != nil {
				t.Fatalf("restore %s: %v", GoldenSnapshotFile, err)
			}
			if !reflect.DeepEqual(got, exp.Snapshot) {
				t.Errorf("the snapshot restores to\n%+v\nrecorded\n%+v", got, exp.Snapshot)
			}
		})
	}
	if n == 0 {
		t.Fatal("no golden fixtures in testvectors/golden")
	}
}

// A log holding a command this build does not apply (a newer build's
// version) stops the replay with ErrUnknownCommand, as it stops a replica
// (TestUnknownCommandHalts); it is never skipped.
func TestGoldenReplayRefusesUnknownCommand(t *testing.T) {
	dirs, _ := filepath.Glob(testvectors.Path("golden/*"))
	if len(dirs) == 0 {
		t.Fatal("no golden fixtures")
	}
	raw := gunzip(t, filepath.Join(dirs[0], GoldenLogFile))
	var last GoldenEntry
	lines := bytes.Split(bytes.TrimSpace(raw), []byte("\n"))
	if err := json.Unmarshal(lines[len(lines)-1], &last); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{
		`{"type":"enrollment.accept","version":99,"time":"2026-01-01T00:00:00Z","payload":{}}`,
		`{"type":"device.teleport","version":1,"time":"2026-01-01T00:00:00Z","payload":{}}`,
	} {
		next, _ := json.Marshal(GoldenEntry{Index: last.Index + 1, Term: last.Term, Type: raft.LogCommand.String(), Command: json.RawMessage(cmd)})
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(raw)
		zw.Write(append(next, '\n'))
		zw.Close()
		if _, err := ReplayGolden(t.TempDir(), &buf); !errors.Is(err, ErrUnknownCommand) {
			t.Errorf("%s: replay gave %v, want ErrUnknownCommand", cmd, err)
		}
	}
}

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// snapshotOf persists f's snapshot, as Raft's snapshot store receives it.
func snapshotOf(t *testing.T, f *fsm) []byte {
	t.Helper()
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	var sink memSink
	if err := s.Persist(&sink); err != nil || sink.cancelled {
		t.Fatalf("persist: %v", err)
	}
	return sink.Bytes()
}

// fsmWithState is a fresh FSM holding a few enrollments.
func fsmWithState(t *testing.T) *fsm {
	t.Helper()
	f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.close() })
	for i := range 3 {
		f.ApplyBatch([]*raft.Log{mustLog(t, uint64(i+1), fmt.Sprintf("s%d", i), fmt.Sprintf("dev-%d", i))})
	}
	return f
}

// Snapshots carry their format version in a header line; one written
// before formats existed (the bbolt file alone, as a backup's state still
// is) restores as before.
func TestSnapshotFormatHeader(t *testing.T) {
	src := fsmWithState(t)
	want, _ := src.stateHash()
	snap := snapshotOf(t, src)
	body, v, err := readSnapshotHeader(bytes.NewReader(snap))
	if err != nil || v != SnapshotFormat {
		t.Fatalf("snapshot format %d, %v; want %d", v, err, SnapshotFormat)
	}
	hdr, _, _ := bytes.Cut(snap, []byte("\n"))
	if string(hdr) != fmt.Sprintf(`{"format":"gatehouse-fsm-snapshot","version":%d}`, SnapshotFormat) {
		t.Fatalf("header %q", hdr)
	}
	rest, _ := io.ReadAll(body)
	var versionless bytes.Buffer
	if err := src.view(func(tx *bolt.Tx) error { _, err := tx.WriteTo(&versionless); return err }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, versionless.Bytes()) {
		t.Fatal("after the header, a snapshot is not the bbolt file")
	}
	for name, b := range map[string][]byte{"format 1": snap, "versionless": versionless.Bytes()} {
		dst := fsmWithState(t)
		if err := dst.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, _ := dst.stateHash(); got != want {
			t.Errorf("%s restored to %s, want %s", name, got, want)
		}
	}
}

// A snapshot of a format this build does not know (a newer build's), or
// with a malformed header, is refused with ErrSnapshotFormat before
// anything is written: the current state stays whole, and no temporary
// copy is left.
func TestSnapshotUnknownFormatRefused(t *testing.T) {
	src := fsmWithState(t)
	body := snapshotOf(t, src)
	_, file, _ := bytes.Cut(body, []byte("\n"))
	for name, b := range map[string][]byte{
		"future version": append([]byte(fmt.Sprintf(`{"format":"gatehouse-fsm-snapshot","version":%d}`+"\n", SnapshotFormat+1)), file...),
		"other format":   append([]byte(`{"format":"something-else","version":1}`+"\n"), file...),
		"version 0":      append([]byte(`{"format":"gatehouse-fsm-snapshot","version":0}`+"\n"), file...),
		"no newline":     append([]byte(`{"format":"gatehouse-fsm-snapshot","version":1}`), bytes.Repeat([]byte{'x'}, maxSnapshotHeader)...),
		"empty":          nil,
	} {
		dst, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
		if err != nil {
			t.Fatal(err)
		}
		dst.ApplyBatch([]*raft.Log{mustLog(t, 1, "kept", "kept-device")})
		before, _ := dst.stateHash()
		err = dst.Restore(io.NopCloser(bytes.NewReader(b)))
		if !errors.Is(err, ErrSnapshotFormat) {
			t.Errorf("%s: restore gave %v, want ErrSnapshotFormat", name, err)
		}
		if after, _ := dst.stateHash(); after != before {
			t.Errorf("%s: a refused snapshot changed the state", name)
		}
		if _, err := os.Stat(dst.path + ".restore"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: a refused snapshot left %s.restore (%v)", name, dst.path, err)
		}
		if dst.appliedIndex() != 1 || dst.last.Load() != 1 {
			t.Errorf("%s: applied index %d, last %d after a refused restore", name, dst.appliedIndex(), dst.last.Load())
		}
		dst.close()
	}
}

// The leader refuses a forwarded command it does not apply (a newer
// build's follower sent it) before it reaches the log, where every replica
// would have to stop on it.
func TestApplyForwardedRefusesUnknownCommand(t *testing.T) {
	n := openNode(t, t.TempDir(), WithFatalHook(func(err error) { t.Errorf("fatal: %v", err) }))
	before := n.raft.LastIndex()
	for _, cmd := range []string{
		`{"type":"renewal.accept","version":99,"time":"2026-01-01T00:00:00Z","payload":{}}`,
		`{"type":"device.teleport","version":1,"time":"2026-01-01T00:00:00Z","payload":{}}`,
	} {
		if _, err := n.ApplyForwarded(context.Background(), []byte(cmd)); !errors.Is(err, ErrUnknownCommand) {
			t.Errorf("%s: %v, want ErrUnknownCommand", cmd, err)
		}
	}
	if after := n.raft.LastIndex(); after != before {
		t.Fatalf("the log moved from %d to %d", before, after)
	}
}
