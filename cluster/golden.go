package cluster

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"
)

// Golden fixtures (testvectors/golden, cluster/DESIGN.md "Golden
// fixtures"): a Raft log and an FSM snapshot written by one release, with
// the state they must reach. Every later build replays them through the
// real apply path and must reach the same state hash; a change that breaks
// that would break rolling upgrades and nodes restarting on old logs.

// GoldenEntry is one Raft log entry of a log fixture (one JSON line of a
// gzip file): Command holds a JSON LogCommand's bytes as written, Data any
// other entry's bytes, a command in the binary envelope included.
type GoldenEntry struct {
	Index      uint64          `json:"index"`
	Term       uint64          `json:"term"`
	Type       string          `json:"type"` // raft.LogType's String
	AppendedAt time.Time       `json:"appended_at"`
	Command    json.RawMessage `json:"command,omitempty"`
	Data       []byte          `json:"data,omitempty"`
}

// GoldenFacts are what a registry state is checked by: its hash, and a few
// facts that say what differs when the hash does.
type GoldenFacts struct {
	StateHash     string         `json:"state_hash"`
	AppliedIndex  uint64         `json:"applied_index"`
	Devices       map[string]int `json:"devices_by_state"`
	Attestations  int            `json:"attestations"`
	AuditHeadSeq  uint64         `json:"audit_head_seq"`
	AuditHeadHash string         `json:"audit_head_hash"`
	Policies      int            `json:"policies"`
	EKRoots       int            `json:"ek_roots"`
	Individual    int            `json:"individual_enrollments"`
	JoinTokens    int            `json:"join_tokens"`
	StepCAKeys    int            `json:"stepca_keys"`
	// Commands counts the log's commands by "type/version" (log fixtures
	// only: a snapshot does not say which commands made it).
	Commands map[string]int `json:"commands,omitempty"`
}

// ExportGolden writes the fixtures of the closed node whose Raft data
// directory is raftDir: its whole Raft log to log (gzip JSON lines of
// GoldenEntry) and its FSM's snapshot, as Persist writes it, to snap. It
// returns the state's facts. The FSM must have applied every command in
// the log, or the two fixtures would not meet.
func ExportGolden(raftDir string, log, snap io.Writer) (GoldenFacts, error) {
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db"), BoltOptions: &bolt.Options{ReadOnly: true, Timeout: time.Second}})
	if err != nil {
		return GoldenFacts{}, fmt.Errorf("open raft.db: %w", err)
	}
	defer store.Close()
	first, err := store.FirstIndex()
	if err != nil {
		return GoldenFacts{}, err
	}
	last, err := store.LastIndex()
	if err != nil {
		return GoldenFacts{}, err
	}
	if first != 1 {
		return GoldenFacts{}, fmt.Errorf("the log starts at index %d: it was compacted by a snapshot, so it cannot be replayed from empty", first)
	}
	zw := gzip.NewWriter(log)
	enc := json.NewEncoder(zw)
	cmds := map[string]int{}
	var lastCommand uint64
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			return GoldenFacts{}, fmt.Errorf("log index %d: %w", i, err)
		}
		e := GoldenEntry{Index: l.Index, Term: l.Term, Type: l.Type.String(), AppendedAt: l.AppendedAt.UTC()}
		if l.Type == raft.LogCommand {
			c, _, err := decodeCommand(l.Data)
			if err != nil {
				return GoldenFacts{}, fmt.Errorf("log index %d: %w", i, err)
			}
			cmds[fmt.Sprintf("%s/%d", c.Type, c.Version)]++
			lastCommand = l.Index
			if IsEnvelope(l.Data) {
				e.Data = l.Data // not JSON: base64 in Data
			} else {
				e.Command = l.Data
			}
		} else {
			e.Data = l.Data
		}
		if err := enc.Encode(e); err != nil {
			return GoldenFacts{}, err
		}
	}
	if err := zw.Close(); err != nil {
		return GoldenFacts{}, err
	}
	f, err := openFSM(filepath.Join(raftDir, "fsm.db"), func(err error) {})
	if err != nil {
		return GoldenFacts{}, err
	}
	defer f.close()
	if f.last.Load() < lastCommand {
		return GoldenFacts{}, fmt.Errorf("the FSM applied up to index %d, the log's last command is %d", f.last.Load(), lastCommand)
	}
	s, err := f.Snapshot()
	if err != nil {
		return GoldenFacts{}, err
	}
	defer s.Release()
	if err := s.Persist(&writerSink{w: snap}); err != nil {
		return GoldenFacts{}, err
	}
	facts, err := f.facts()
	facts.Commands = cmds
	return facts, err
}

// ReplayGolden applies a log fixture (as ExportGolden writes it) entry by
// entry to a fresh FSM in dir, through the FSM's apply path as Raft drives
// it, and returns the state's facts after VerifyIndexes passed. An entry
// the FSM halts on (ErrUnknownCommand: a command this build lost) fails it.
func ReplayGolden(dir string, log io.Reader) (GoldenFacts, error) {
	zr, err := gzip.NewReader(log)
	if err != nil {
		return GoldenFacts{}, err
	}
	var fatal error
	f, err := openFSM(filepath.Join(dir, "fsm.db"), func(err error) { fatal = errors.Join(fatal, err) })
	if err != nil {
		return GoldenFacts{}, err
	}
	defer f.close()
	types := map[string]raft.LogType{}
	for t := raft.LogCommand; t <= raft.LogConfiguration; t++ {
		types[t.String()] = t
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 64<<20)
	cmds := map[string]int{}
	var prev uint64
	for sc.Scan() {
		var e GoldenEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return GoldenFacts{}, fmt.Errorf("log fixture after index %d: %w", prev, err)
		}
		t, ok := types[e.Type]
		if !ok || e.Index != prev+1 {
			return GoldenFacts{}, fmt.Errorf("log fixture: entry %d of type %q after %d", e.Index, e.Type, prev)
		}
		prev = e.Index
		l := &raft.Log{Index: e.Index, Term: e.Term, Type: t, Data: e.Data, AppendedAt: e.AppendedAt}
		if t == raft.LogCommand {
			if len(e.Command) > 0 {
				l.Data = e.Command
			}
			if name, err := commandName(l.Data); err == nil {
				cmds[name]++
			}
		}
		// As Raft's runFSM sends a BatchingFSM: commands and
		// configurations, never no-ops or barriers.
		if t != raft.LogCommand && t != raft.LogConfiguration {
			continue
		}
		f.ApplyBatch([]*raft.Log{l})
		if fatal != nil {
			return GoldenFacts{}, fatal
		}
		if h := f.halted.Load(); h != nil {
			return GoldenFacts{}, fmt.Errorf("log index %d: %w", h.Index, h.cause)
		}
	}
	if err := sc.Err(); err != nil {
		return GoldenFacts{}, err
	}
	if err := f.verifyIndexes(); err != nil {
		return GoldenFacts{}, err
	}
	facts, err := f.facts()
	facts.Commands = cmds
	return facts, err
}

// RestoreGolden restores a snapshot fixture into a fresh FSM in dir,
// through Restore as Raft drives it, and returns the state's facts after
// VerifyIndexes passed.
func RestoreGolden(dir string, snap io.Reader) (GoldenFacts, error) {
	f, err := openFSM(filepath.Join(dir, "fsm.db"), func(error) {})
	if err != nil {
		return GoldenFacts{}, err
	}
	defer f.close()
	if err := f.Restore(io.NopCloser(snap)); err != nil {
		return GoldenFacts{}, err
	}
	if err := f.verifyIndexes(); err != nil {
		return GoldenFacts{}, err
	}
	return f.facts()
}

// facts reads the state's GoldenFacts (without Commands).
func (f *fsm) facts() (GoldenFacts, error) {
	h, err := f.stateHash()
	if err != nil {
		return GoldenFacts{}, err
	}
	out := GoldenFacts{StateHash: h, AppliedIndex: f.last.Load(), Devices: map[string]int{}}
	err = f.view(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bDevices).ForEach(func(_, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out.Devices[d.Status]++
			return nil
		}); err != nil {
			return err
		}
		if _, v := tx.Bucket(bAudit).Cursor().Last(); v != nil {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out.AuditHeadSeq, out.AuditHeadHash = e.Seq, e.Hash
		}
		out.Attestations = tx.Bucket(bAttestations).Stats().KeyN
		out.Policies = tx.Bucket(bPolicies).Stats().KeyN
		out.EKRoots = tx.Bucket(bEKRoots).Stats().KeyN
		out.Individual = tx.Bucket(bIndividual).Stats().KeyN
		out.JoinTokens = tx.Bucket(bJoinTokens).Stats().KeyN
		out.StepCAKeys = tx.Bucket(bStepCA).Stats().KeyN
		return nil
	})
	return out, err
}

// writerSink is a raft.SnapshotSink over a writer: what Persist writes
// for Raft's snapshot store, written to w instead.
type writerSink struct {
	w        io.Writer
	canceled bool
}

func (s *writerSink) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *writerSink) Close() error                { return nil }
func (s *writerSink) ID() string                  { return "golden" }
func (s *writerSink) Cancel() error               { s.canceled = true; return nil }

var _ raft.SnapshotSink = (*writerSink)(nil)

// The files of one fixture directory. The snapshot file is the gzip of
// the exact bytes Persist wrote (a bbolt file is mostly empty pages).
const (
	GoldenLogFile      = "log.jsonl.gz"
	GoldenSnapshotFile = "snapshot.bin.gz"
	GoldenExpectFile   = "expected.json"
)

// GoldenExpect is a fixture directory's expected.json: the facts its log
// replays to and its snapshot restores to (the same state hash), and how
// it was made.
type GoldenExpect struct {
	Log      GoldenFacts `json:"log"`
	Snapshot GoldenFacts `json:"snapshot"`
	// SnapshotFormat is the snapshot's format version (SnapshotFormat when
	// it was made).
	SnapshotFormat int `json:"snapshot_format"`
	// Made says by what: the generator, the commit, the Go version.
	Made map[string]string `json:"made"`
}

// ReadGoldenExpect reads a fixture directory's expected.json.
func ReadGoldenExpect(dir string) (GoldenExpect, error) {
	var g GoldenExpect
	b, err := os.ReadFile(filepath.Join(dir, GoldenExpectFile))
	if err != nil {
		return g, err
	}
	return g, json.Unmarshal(b, &g)
}
