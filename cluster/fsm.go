package cluster

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

var (
	bDevices              = []byte("devices")
	bAttestations         = []byte("attestations")
	bAttestationsByDevice = []byte("attestations_by_device")
	bEvidence             = []byte("evidence")     // attestation ID → gzip event log
	bRawEvidence          = []byte("raw_evidence") // attestation ID → gzip RawEvidence JSON
	bPolicies             = []byte("policies")     // version → PolicyRecord
	bSessions             = []byte("sessions")
	bSessionsByExpiry     = []byte("sessions_by_expiry")
	bMeta                 = []byte("meta")
	// allBuckets is in name order: stateHash depends on it.
	allBuckets      = [][]byte{bAttestations, bAttestationsByDevice, bAudit, bDevices, bEKRoots, bEvidence, bFailures, bIndividual, bJoinTokens, bMembers, bMeta, bPolicies, bRawEvidence, bSessions, bSessionsByExpiry, bSettings, bStepCA}
	keyAppliedIndex = []byte("applied_index")
)

// fsm is the registry state machine, kept in bbolt. The applied index is
// stored in the same transaction as the entries it covers, so after a
// restart the FSM resumes where it stopped instead of replaying the log
// from the last snapshot.
type fsm struct {
	path  string
	fatal func(error)

	mu sync.RWMutex // guards db against Restore swapping it
	db *bolt.DB

	// last is the index of the last entry this FSM has processed. Unlike
	// raft.AppliedIndex, which moves when entries are queued for the FSM, it
	// moves after they are applied: waiting on it gives read-your-writes.
	last atomic.Uint64
	// kvGen counts applied batches that changed step-ca's tables (and
	// restores): caches of what step-ca derives, like the CRL, compare it.
	kvGen atomic.Uint64
	// confGen counts applied batches that changed the EK root set or the
	// cluster settings (and restores): the EK verifier compares it.
	confGen atomic.Uint64
	// validateSettings, when set, judges every settings command at apply
	// (WithSettingsValidator).
	validateSettings SettingsValidator

	// A batch the store cannot take for lack of space is retried until
	// space returns (disk records it meanwhile, onStall is called once per
	// episode), or until stop closes (the node is closing).
	disk    *diskState
	log     *slog.Logger
	stop    chan struct{}
	onStall func()
	// feature is the committed cluster feature version (feature.go).
	feature atomic.Int64
	// halted is set at the first entry this build does not understand;
	// from then on nothing is applied (see halt).
	halted atomic.Pointer[Halt]
	// onHalt, when set, is called once when the FSM halts.
	onHalt func(*Halt)
}

var (
	_ raft.FSM         = (*fsm)(nil)
	_ raft.BatchingFSM = (*fsm)(nil)
)

func openFSM(path string, fatal func(error)) (*fsm, error) {
	db, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	// An upgraded data directory gets its query indexes here, once.
	if err := db.Update(func(tx *bolt.Tx) error { return ensureIndexes(tx, false) }); err != nil {
		db.Close()
		return nil, err
	}
	f := &fsm{path: path, fatal: fatal, db: db}
	f.last.Store(f.appliedIndex())
	_ = db.View(func(tx *bolt.Tx) error {
		f.feature.Store(int64(featureVersion(tx)))
		return nil
	})
	return f, nil
}

func openBolt(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range append(slices.Clone(allBuckets), indexBuckets...) {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func (f *fsm) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.db.Close()
}

func (f *fsm) view(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.db.View(fn)
}

// appliedIndex is the index of the last entry whose effects are stored.
func (f *fsm) appliedIndex() (idx uint64) {
	_ = f.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bMeta).Get(keyAppliedIndex); len(v) == 8 {
			idx = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return idx
}

// Apply applies one entry.
func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch decodes the entries outside the write transaction, then applies
// them all in one bolt transaction: one fsync per batch instead of per entry.
//
// An entry this build does not understand halts the FSM (halt): the
// entries before it apply, it and every later one do not, in this batch
// and every later one, and the applied index stays before it. Never
// skipped: a replica that skipped it would silently diverge.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	results := make([]any, len(logs))
	if h := f.halted.Load(); h != nil {
		for i := range results {
			results[i] = applyResult{Err: fmt.Errorf("%w: %s", ErrHalted, h)}
		}
		return results
	}
	type decoded struct {
		cmd *command
		op  op
	}
	ops := make([]decoded, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		c, o, err := decodeCommand(l.Data)
		if err != nil {
			h := f.halt(l.Index, c, err)
			for j := i; j < len(logs); j++ {
				results[j] = applyResult{Err: fmt.Errorf("%w: %s", ErrHalted, h)}
			}
			logs, ops = logs[:i], ops[:i]
			break
		}
		if s, ok := o.(*setSettings); ok {
			s.validate = f.validateSettings
		}
		ops[i] = decoded{c, o}
	}
	if len(logs) == 0 {
		return results
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	feature := f.feature.Load()
	write := func() error {
		return f.db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bMeta)
			var applied uint64
			if v := meta.Get(keyAppliedIndex); len(v) == 8 {
				applied = binary.BigEndian.Uint64(v)
			}
			feature = int64(featureVersion(tx))
			var last time.Time
			for i, l := range logs {
				if l.Index <= applied || ops[i].op == nil {
					continue // already applied before a restart, or not a command
				}
				c := ops[i].cmd
				// Judged against the committed version, which an earlier
				// entry of this batch may have raised: the same on every
				// replica.
				if since := commandSince[cmdKey{c.Type, c.Version}]; int64(since) > feature {
					results[i] = applyResult{Err: fmt.Errorf("%w: %s v%d needs feature version %d, the cluster is at %d", ErrFeatureDisabled, c.Type, c.Version, since, feature)}
					last = c.Time
					continue
				}
				results[i] = ops[i].op.apply(tx, l.Index, c.Time)
				last = c.Time
				if _, ok := ops[i].op.(*raiseFeature); ok {
					feature = int64(featureVersion(tx))
				}
			}
			if !last.IsZero() {
				if err := pruneSessions(tx, last); err != nil {
					return err
				}
			}
			if top := logs[len(logs)-1].Index; top > applied {
				if err := meta.Put(keyIndexMark, indexMark(top)); err != nil {
					return err
				}
				return meta.Put(keyAppliedIndex, be64(top))
			}
			return nil
		})
	}
	err := write()
	if isNoSpace(err) {
		if err = f.retryNoSpace(logs, err, write); errors.Is(err, ErrStorageFull) {
			for i := range results {
				results[i] = applyResult{Err: err}
			}
			return results // closing: nothing stored, the index does not move
		}
	}
	if err == nil {
		f.feature.Store(feature)
		// Before last moves: a writer that waits for its index sees it.
		for _, d := range ops {
			switch d.op.(type) {
			case *addEKRoots, *removeEKRoot, *setSettings:
				f.confGen.Add(1)
			}
		}
		f.last.Store(logs[len(logs)-1].Index)
		for _, d := range ops {
			if _, ok := d.op.(*stepCAUpdate); ok {
				f.kvGen.Add(1)
				break
			}
		}
	}
	if err != nil {
		// The store cannot take writes: continuing would diverge.
		f.fatal(fmt.Errorf("apply batch ending at raft index %d: %w", logs[len(logs)-1].Index, err))
		for i := range results {
			results[i] = applyResult{Err: err}
		}
	}
	return results
}

// retryNoSpace retries a batch the store refused for lack of space until it
// is written, fails otherwise, or the node closes (ErrStorageFull). A
// committed entry is never skipped: the FSM does not move past it, so Raft's
// queue to the FSM fills and this node stops applying, and waits.
func (f *fsm) retryNoSpace(logs []*raft.Log, err error, write func() error) error {
	log := f.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	first, last := logs[0].Index, logs[len(logs)-1].Index
	start, said := time.Now(), time.Now()
	log.Error("cannot write the registry (fsm.db): applying paused until space returns; this node refuses writes meanwhile",
		"first_index", first, "last_index", last, "err", err)
	if f.disk != nil {
		f.disk.setApply(err)
		defer f.disk.setApply(nil)
	}
	if f.onStall != nil {
		f.onStall()
	}
	backoff := 10 * time.Millisecond
	for isNoSpace(err) {
		select {
		case <-f.stop:
			return fmt.Errorf("%w: entries %d to %d not applied (the node is closing): %v", ErrStorageFull, first, last, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		if err = write(); isNoSpace(err) && time.Since(said) > 30*time.Second {
			said = time.Now()
			log.Error("registry (fsm.db) still cannot be written: applying paused", "first_index", first, "waited", time.Since(start).Round(time.Second), "err", err)
		}
	}
	if err == nil {
		log.Info("registry (fsm.db) writable again: applying resumed", "first_index", first, "waited", time.Since(start).Round(time.Millisecond))
	}
	return err
}

// Snapshot opens a read transaction (cheap); Persist streams it. A halted
// FSM refuses: Raft would label the snapshot with an index past the entry
// it could not apply, and compact that entry out of the log.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if h := f.halted.Load(); h != nil {
		return nil, fmt.Errorf("%w: no snapshot: %s", ErrHalted, h)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{tx: tx}, nil
}

type fsmSnapshot struct{ tx *bolt.Tx }

// SnapshotFormat is the version of the snapshot format Persist writes: a
// header line, snapshotHeader as JSON, then the bbolt file. Restore reads
// every version up to it, and snapshots without a header (format 0: the
// bbolt file alone, written before formats existed; a backup's state still
// is one). A change to what a snapshot holds that an older Restore would
// misread gets a new version, so an older node refuses it (ErrSnapshotFormat)
// instead of misreading it.
const SnapshotFormat = 1

// snapshotHeader opens every snapshot of format 1 and later.
type snapshotHeader struct {
	Format  string `json:"format"` // snapshotFormatName
	Version int    `json:"version"`
}

const (
	snapshotFormatName = "gatehouse-fsm-snapshot"
	// maxSnapshotHeader bounds the header line Restore reads.
	maxSnapshotHeader = 4096
)

// Persist writes a consistent copy of the whole database after the format
// header.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	hdr, err := json.Marshal(snapshotHeader{Format: snapshotFormatName, Version: SnapshotFormat})
	if err != nil {
		sink.Cancel()
		return err
	}
	if _, err := sink.Write(append(hdr, '\n')); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if _, err := s.tx.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { _ = s.tx.Rollback() }

// Restore replaces all state with the snapshot's. The applied index is reset:
// a snapshot restored into another cluster (disaster recovery) comes with
// indexes that mean nothing there, and raft re-applies everything after the
// snapshot anyway.
//
// The snapshot's format is read first: one this build does not know (a
// newer build's) is refused with ErrSnapshotFormat before anything is
// written, so the current state stays whole.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if h := f.halted.Load(); h != nil {
		return fmt.Errorf("%w: no restore: %s", ErrHalted, h)
	}
	body, _, err := readSnapshotHeader(rc) // format 0 and 1 hold the same bbolt file
	if err != nil {
		return err
	}
	tmp := f.path + ".restore"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, body); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("restore: %w", err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	// Check the copy opens before discarding the current state.
	check, err := openBolt(tmp)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore: snapshot is not a registry: %w", err)
	}
	var snapIndex uint64
	var feature int
	err = check.Update(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bMeta).Get(keyAppliedIndex); len(v) == 8 {
			snapIndex = binary.BigEndian.Uint64(v)
		}
		// A registry at a feature version this build does not apply is
		// refused whole, before the current state is touched.
		if err := checkRegistryFeature(tx, "snapshot"); err != nil {
			return err
		}
		feature = featureVersion(tx)
		// A snapshot from a build without query indexes (or older ones)
		// gets them now; a current one keeps its own.
		if err := ensureIndexes(tx, false); err != nil {
			return err
		}
		if err := tx.Bucket(bMeta).Put(keyIndexMark, indexMark(0)); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Delete(keyAppliedIndex)
	})
	check.Close()
	if err != nil {
		os.Remove(tmp)
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.db.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return err
	}
	f.db, err = openBolt(f.path)
	f.last.Store(snapIndex)
	f.feature.Store(int64(feature))
	f.kvGen.Add(1)
	f.confGen.Add(1)
	return err
}

// readSnapshotHeader reads a snapshot's format header, if any, and returns
// the rest of the stream (the bbolt file) and the format version: 0 for a
// snapshot without a header (a bbolt file starts with its zero page ID, so
// never with '{'), else the header's, which must be at most SnapshotFormat.
func readSnapshotHeader(r io.Reader) (io.Reader, int, error) {
	br := bufio.NewReaderSize(r, maxSnapshotHeader)
	first, err := br.Peek(1)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: empty or unreadable snapshot: %v", ErrSnapshotFormat, err)
	}
	if first[0] != '{' {
		return br, 0, nil
	}
	buf, _ := br.Peek(maxSnapshotHeader)
	n := bytes.IndexByte(buf, '\n')
	if n < 0 {
		return nil, 0, fmt.Errorf("%w: header line missing or over %d bytes", ErrSnapshotFormat, maxSnapshotHeader)
	}
	var h snapshotHeader
	if err := json.Unmarshal(buf[:n], &h); err != nil || h.Format != snapshotFormatName || h.Version < 1 {
		return nil, 0, fmt.Errorf("%w: header %.100q", ErrSnapshotFormat, buf[:n])
	}
	if h.Version > SnapshotFormat {
		return nil, 0, fmt.Errorf("%w: version %d, written by a newer build (this one reads up to %d): upgrade this node", ErrSnapshotFormat, h.Version, SnapshotFormat)
	}
	if _, err := br.Discard(n + 1); err != nil {
		return nil, 0, err
	}
	return br, h.Version, nil
}

// halt stops the FSM at the entry at index, which this build cannot apply
// (cause wraps ErrUnknownCommand or ErrFeatureVersion; c is its envelope,
// if it decoded). Loud: logged at error level through onHalt, reported by
// Node.Halted and the node's health. It is never undone while the process
// runs; a restart on a build that understands the entry applies it.
func (f *fsm) halt(index uint64, c *command, cause error) *Halt {
	h := &Halt{Index: index, Reason: cause.Error(), Since: time.Now(), cause: cause}
	if c != nil {
		h.Type, h.Version = c.Type, c.Version
	}
	if f.halted.CompareAndSwap(nil, h) && f.onHalt != nil {
		f.onHalt(h)
	}
	return f.halted.Load()
}

// stateHash hashes every bucket but meta, in a fixed order: two replicas
// with equal hashes hold the same registry. The query indexes are not
// hashed: they are derived from the hashed buckets (see query.go).
func (f *fsm) stateHash() (string, error) {
	h := sha256.New()
	err := f.view(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if bytes.Equal(name, bMeta) {
				continue
			}
			writeLenPrefixed(h, name)
			if err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				writeLenPrefixed(h, k)
				writeLenPrefixed(h, v)
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

func writeLenPrefixed(w io.Writer, b []byte) {
	w.Write(be64(uint64(len(b))))
	w.Write(b)
}

func getDevice(tx *bolt.Tx, id string) (Device, error) {
	var d Device
	v := tx.Bucket(bDevices).Get([]byte(id))
	if v == nil {
		return d, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	return d, json.Unmarshal(v, &d)
}

func (f *fsm) device(id string) (d Device, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		d, err = getDevice(tx, id)
		return err
	})
	return d, err
}

func (f *fsm) devices() ([]Device, error) {
	out := []Device{} // [] in JSON when empty, never null
	err := f.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bDevices).ForEach(func(_, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, d)
			return nil
		})
	})
	return out, err
}

func (f *fsm) attestation(id uint64) (a AttestationRecord, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bAttestations).Get(be64(id))
		if v == nil {
			return fmt.Errorf("attestation %d: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &a)
	})
	return a, err
}

func (f *fsm) attestations(q AttestationQuery) ([]AttestationRecord, error) {
	out := []AttestationRecord{}
	full := func() bool { return q.Limit > 0 && len(out) >= q.Limit }
	err := f.view(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bAttestations)
		add := func(v []byte) error {
			var a AttestationRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, a)
			return nil
		}
		if q.DeviceID == "" {
			c := recs.Cursor()
			for k, v := c.Last(); k != nil && !full(); k, v = c.Prev() {
				if err := add(v); err != nil {
					return err
				}
			}
			return nil
		}
		prefix := append([]byte(q.DeviceID), 0)
		c := tx.Bucket(bAttestationsByDevice).Cursor()
		// Seek past the device's last key, then walk back.
		k, _ := c.Seek(append(append([]byte(nil), prefix...), bytes.Repeat([]byte{0xff}, 9)...))
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && !full(); k, _ = c.Prev() {
			v := recs.Get(k[len(prefix):])
			if v == nil {
				return errors.New("attestation index points at a missing record")
			}
			if err := add(v); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

func (f *fsm) sessionUsed(id string) (used bool, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		used = sessionUsed(tx, id)
		return nil
	})
	return used, err
}
