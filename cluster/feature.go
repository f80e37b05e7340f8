package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FeatureVersion is the highest cluster feature version this build applies.
// The cluster's committed feature version (Node.FeatureVersion) is raised
// through Raft, by the cluster.feature command, and never lowered; the
// leader raises it only once every member advertises a build that applies
// it (server: GET /cluster/v1/info), so every replica applies every entry
// the same way: a command that needs a newer feature version than the
// committed one is refused at apply, on every replica alike.
//
//   - 0: a registry that never committed one (every build before feature
//     versions, and every log they wrote).
//   - 1: this build: the cluster.feature command itself. Commands of
//     builds before feature versions all apply at 0.
//
// A later build that adds a command gives it the next feature version in
// commandSince and raises FeatureVersion to it.
const FeatureVersion = 1

// buildFeatureVersion is FeatureVersion, what every check below compares
// with; a variable only so a test can stand in for a newer build.
var buildFeatureVersion = FeatureVersion

// keyFeature holds the committed feature version in the settings bucket,
// which the state hash covers (a registry that never committed one has no
// key, so its hash is what it was before feature versions).
var keyFeature = []byte("feature_version")

// commandSince is the feature version from which a command applies; a
// command not listed applies from 0. The FSM refuses (ErrFeatureDisabled,
// writing nothing) a command listed above the committed feature version,
// and Node.apply does not propose one.
var commandSince = map[cmdKey]int{}

// Feature version errors.
var (
	// ErrFeatureVersion: the cluster's committed feature version, or a
	// cluster.feature entry, is above what this build applies
	// (FeatureVersion). A replica halts on such an entry (Node.Halted), a
	// node whose registry is at such a version refuses to start, and the
	// leader refuses to let such a build join.
	ErrFeatureVersion = errors.New("cluster feature version not supported by this build")
	// ErrFeatureDisabled: a command that needs a newer cluster feature
	// version than the committed one; refused at apply on every replica
	// alike, writing nothing.
	ErrFeatureDisabled = errors.New("command needs a newer cluster feature version")
	// ErrHalted: this node's registry stopped at an entry its build does
	// not understand (Node.Halted); it applies nothing more until it runs
	// a build that does.
	ErrHalted = errors.New("registry halted")
)

// AuditFeatureRaised is the audit entry of a raised feature version.
const AuditFeatureRaised = "cluster.feature_raised"

// FeatureRecord is the committed feature version: who raised it, when (the
// leader's clock).
type FeatureRecord struct {
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`
}

// raiseFeature is cluster.feature v1: raise the committed feature version
// to Version. A version at or below the committed one changes nothing (two
// leaders' raises, or a retry); one above FeatureVersion never reaches
// apply: decodeCommand refuses it, and the FSM halts on it.
type raiseFeature struct {
	Version int    `json:"version"`
	Actor   string `json:"actor"`
}

func (c *raiseFeature) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	cur := featureVersion(tx)
	if c.Version <= cur {
		return applyResult{Result: uint64(cur)}
	}
	if err := putJSON(tx.Bucket(bSettings), keyFeature, FeatureRecord{Version: c.Version, Time: at, Actor: c.Actor}); err != nil {
		return applyResult{Err: err}
	}
	if err := appendAudit(tx, at, AuditFeatureRaised, c.Actor, "cluster", map[string]int{"from": cur, "to": c.Version}); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: uint64(c.Version)}
}

// checkFeature refuses a decoded cluster.feature entry this build cannot
// apply: it is an entry the build does not understand.
func checkFeature(o op) error {
	if r, ok := o.(*raiseFeature); ok && r.Version > buildFeatureVersion {
		return fmt.Errorf("%w: cluster.feature raises to version %d, this build applies up to %d", ErrFeatureVersion, r.Version, buildFeatureVersion)
	}
	return nil
}

// featureVersion reads the committed feature version inside a transaction
// (0 when none was committed, or the record is unreadable).
func featureVersion(tx *bolt.Tx) int {
	r, _ := featureRecord(tx)
	return r.Version
}

func featureRecord(tx *bolt.Tx) (FeatureRecord, error) {
	var r FeatureRecord
	v := tx.Bucket(bSettings).Get(keyFeature)
	if v == nil {
		return r, nil
	}
	return r, json.Unmarshal(v, &r)
}

// checkRegistryFeature refuses a registry whose committed feature version
// this build does not apply (a node started on a newer build's data
// directory, or rolled back past the cluster's version).
func checkRegistryFeature(tx *bolt.Tx, what string) error {
	r, err := featureRecord(tx)
	if err != nil {
		return fmt.Errorf("%s: feature version record: %w", what, err)
	}
	if r.Version > buildFeatureVersion {
		return fmt.Errorf("%w: %s is at cluster feature version %d (raised %s), this build applies up to %d: run a build that supports it (the one the rest of the cluster runs)",
			ErrFeatureVersion, what, r.Version, r.Time.UTC().Format(time.RFC3339), buildFeatureVersion)
	}
	return nil
}

// FeatureVersion is the cluster's committed feature version in this node's
// replica (0: never raised).
func (n *Node) FeatureVersion() int { return int(n.fsm.feature.Load()) }

// Feature is the committed feature version's record (zero: never raised).
func (n *Node) Feature() (FeatureRecord, error) {
	var r FeatureRecord
	err := n.fsm.view(func(tx *bolt.Tx) (err error) {
		r, err = featureRecord(tx)
		return err
	})
	return r, err
}

// RaiseFeatureVersion commits cluster.feature: the cluster's feature version
// becomes version (at most FeatureVersion) unless it already is at least
// that; it returns the committed version. The caller (the leader's
// appliance) must first know that every member applies version: an older
// build halts on the entry.
func (n *Node) RaiseFeatureVersion(ctx context.Context, version int, actor string) (int, error) {
	if version > buildFeatureVersion {
		return 0, fmt.Errorf("%w: version %d, this build applies up to %d", ErrFeatureVersion, version, buildFeatureVersion)
	}
	v, err := n.apply(ctx, "cluster.feature", 1, &raiseFeature{Version: version, Actor: actor})
	return int(v), err
}

// commandEnabled refuses, before it is proposed, a command that needs a
// newer feature version than the one committed in this node's replica.
func (n *Node) commandEnabled(typ string, version int) error {
	if s := commandSince[cmdKey{typ, version}]; s > n.FeatureVersion() {
		return fmt.Errorf("%w: %s v%d needs feature version %d, the cluster is at %d", ErrFeatureDisabled, typ, version, s, n.FeatureVersion())
	}
	return nil
}

// Halt is why a replica stopped applying the log: the first entry it does
// not understand (an unknown command type or version, or a feature version
// above this build's). Entries before it are applied; it and every later
// entry are not, and are never skipped: the node applies them once it runs
// a build that understands them (its applied index stays before the entry).
type Halt struct {
	Index   uint64    `json:"index"`             // Raft index of the entry
	Type    string    `json:"type,omitempty"`    // the command's type, if it decoded
	Version int       `json:"version,omitempty"` // and version
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`

	cause error // wraps ErrUnknownCommand or ErrFeatureVersion
}

func (h *Halt) String() string {
	return fmt.Sprintf("registry halted at Raft index %d (%s v%d) since %s: %s; this build (feature version %d) cannot apply it: upgrade this node",
		h.Index, h.Type, h.Version, h.Since.UTC().Format(time.RFC3339), h.Reason, buildFeatureVersion)
}

// Halted is why this node's registry stopped applying entries, or nil.
func (n *Node) Halted() *Halt { return n.fsm.halted.Load() }

// CommandFeature is the feature version from which a command ("type/version",
// as Commands lists it) applies, and whether this build knows it.
func CommandFeature(cmd string) (int, bool) {
	i := strings.LastIndexByte(cmd, '/')
	if i < 0 {
		return 0, false
	}
	v, err := strconv.Atoi(cmd[i+1:])
	if err != nil {
		return 0, false
	}
	k := cmdKey{cmd[:i], v}
	if _, ok := commandTypes[k]; !ok {
		return 0, false
	}
	return commandSince[k], true
}
