package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// rebuildMarker, in DATADIR/raft, says the node's Raft state was moved
// aside by RebuildNode: the next serve must not bootstrap a cluster of its
// own (the first node has no join seed), but wait for its leader.
const rebuildMarker = "rebuilt"

// ErrNodeRunning: an offline operation found a node serving on the data
// directory.
var ErrNodeRunning = errors.New("a gatehouse node is running on this data directory")

// Rebuilt says what RebuildNode did.
type Rebuilt struct {
	MovedTo string   `json:"moved_to"` // the directory holding the old state
	Moved   []string `json:"moved"`    // what was moved, relative to DATADIR/raft
	Time    string   `json:"time"`
}

// RebuildNode prepares a node whose Raft state is damaged (or lost) to be
// rebuilt from its peers. It moves raft.db, fsm.db and the snapshots into
// DATADIR/raft/rebuild-TIME/ (kept for inspection, never read again) and
// leaves the node's identity and credentials (config.json, the CA
// directory, raft/cluster-root) as they are. The next serve starts with an
// empty log and never bootstraps: the leader, which still lists the node
// with its ID and address, sends it a snapshot (or the whole log) and the
// node catches up; reads and writes through it work once it has.
//
// The node must be stopped (ErrNodeRunning otherwise). The rebuilt node
// forgot the entries it had acknowledged to the leader, so until it has
// caught up it grants no vote and starts no election (cluster.Config.Rebuilt):
// a candidate lacking an entry committed by the leader and this node cannot
// win with its vote; if the leader fails meanwhile, the cluster waits for
// it. Rebuild one node at a time, with the other nodes up.
func RebuildNode(dataDir string, now time.Time) (Rebuilt, error) {
	if _, err := LoadConfig(dataDir); err != nil {
		return Rebuilt{}, err
	}
	dir := filepath.Join(dataDir, raftDir)
	var present []string
	for _, name := range []string{"raft.db", "fsm.db", "fsm.db.restore", "snapshots"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			present = append(present, name)
		} else if !errors.Is(err, os.ErrNotExist) {
			return Rebuilt{}, err
		}
	}
	for _, name := range []string{"raft.db", "fsm.db"} {
		if err := checkUnlocked(filepath.Join(dir, name)); err != nil {
			return Rebuilt{}, err
		}
	}
	r := Rebuilt{Time: now.UTC().Format(time.RFC3339), MovedTo: filepath.Join(dir, "rebuild-"+now.UTC().Format("20060102T150405Z"))}
	if err := os.MkdirAll(r.MovedTo, 0o700); err != nil {
		return Rebuilt{}, err
	}
	for _, name := range present {
		if err := os.Rename(filepath.Join(dir, name), filepath.Join(r.MovedTo, name)); err != nil {
			return r, fmt.Errorf("move %s aside: %w", name, err)
		}
		r.Moved = append(r.Moved, name)
	}
	b, _ := json.Marshal(r)
	if err := os.WriteFile(filepath.Join(dir, rebuildMarker), append(b, '\n'), 0o600); err != nil {
		return r, err
	}
	return r, syncDir(dir)
}

// checkUnlocked refuses a store a running node holds: bbolt keeps an
// exclusive flock on it while open.
func checkUnlocked(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w (%s is locked): stop it first", ErrNodeRunning, path)
		}
		return fmt.Errorf("lock %s: %w", path, err)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// rebuilding reports whether RebuildNode moved this node's Raft state aside
// and the node has not received state from its leader since.
func rebuilding(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, raftDir, rebuildMarker))
	return err == nil
}
