package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ErrStorageFull: this node cannot write its Raft log or its registry (no
// space left on the device, or the quota is reached), so it takes no
// writes: a write is refused before it is proposed (nothing committed),
// and one the node could not store is never acknowledged. Writes succeed
// again, and the node catches up, once space returns. Retry, on another
// node or later.
var ErrStorageFull = errors.New("this node's disk is full")

// isNoSpace reports a write refused for lack of space: what retrying can
// cure once the operator frees some.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// storageFullWindow is how long a failed log write keeps the node refusing
// writes: the leader retries a lagging follower's entries within it, so
// the mark stays while the disk stays full and clears once a write passes.
const storageFullWindow = 30 * time.Second

// diskState records the node's failed writes for ErrStorageFull and
// Problems.
type diskState struct {
	mu       sync.Mutex
	logErr   error // the last failed log write, if none passed since
	logAt    time.Time
	applyErr error // the FSM's failing batch, while it retries
}

func (d *diskState) setLog(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.logErr, d.logAt = err, time.Now()
}

func (d *diskState) setApply(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.applyErr = err
}

func (d *diskState) applyStalled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applyErr != nil
}

// problem is why this node cannot write now, or nil.
func (d *diskState) problem() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applyErr != nil {
		return fmt.Errorf("%w: cannot write the registry (fsm.db), applying is paused until space returns: %v", ErrStorageFull, d.applyErr)
	}
	if d.logErr != nil && time.Since(d.logAt) < storageFullWindow {
		return fmt.Errorf("%w: cannot write the Raft log (raft.db): %v", ErrStorageFull, d.logErr)
	}
	return nil
}

// logStore is raft.db as Raft sees it. A failed log append is recorded (and
// Raft itself refuses the entries: a leader answers their futures with the
// error and steps down, a follower answers the AppendEntries with failure,
// so the leader sends them again). A failed term or vote write would make
// Raft panic (setCurrentTerm), so those are retried until space returns:
// the node stops taking part meanwhile, which is safe, and goes on
// afterwards with nothing lost.
type logStore struct {
	*raftboltdb.BoltStore
	disk *diskState
	log  *slog.Logger
}

func (s *logStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s *logStore) StoreLogs(logs []*raft.Log) error {
	err := s.BoltStore.StoreLogs(logs)
	if isNoSpace(err) {
		if s.disk.problem() == nil {
			s.log.Error("cannot write the Raft log (raft.db): this node refuses writes until space returns", "err", err)
		}
		s.disk.setLog(err)
	} else if err == nil {
		s.disk.setLog(nil)
	}
	return err
}

func (s *logStore) Set(k, v []byte) error {
	return s.retry("stable store", func() error { return s.BoltStore.Set(k, v) })
}

func (s *logStore) SetUint64(k []byte, v uint64) error {
	return s.retry("stable store", func() error { return s.BoltStore.SetUint64(k, v) })
}

// retry runs write until it passes or fails for another reason than space.
// It keeps trying after the node began closing: giving up would make Raft
// panic, and Close bounds its own wait (closeWait).
func (s *logStore) retry(what string, write func() error) error {
	backoff := 10 * time.Millisecond
	var since time.Time
	for {
		err := write()
		if !isNoSpace(err) {
			if !since.IsZero() && err == nil {
				s.disk.setLog(nil)
				s.log.Info("Raft "+what+" writable again", "waited", time.Since(since).Round(time.Millisecond))
			}
			return err
		}
		s.disk.setLog(err)
		if since.IsZero() {
			since = time.Now()
			s.log.Error("cannot write the Raft "+what+": Raft is paused until space returns", "err", err)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
	}
}
