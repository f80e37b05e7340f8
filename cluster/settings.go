package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Cluster-wide settings (certificate validity, session TTL, approval retry,
// checkpoint interval, retention) are replicated state: one JSON document
// the appliance defines and validates, written at bootstrap from the first
// node's configuration and changed later by operators, each change a new
// version, audited.

var (
	bSettings   = []byte("settings") // keySettings → SettingsRecord (JSON)
	keySettings = []byte("cluster")
)

// AuditSettings is the audit type of a settings change.
const AuditSettings = "settings.changed"

// ErrSettingsConflict: the settings changed since the caller read the
// version it based its change on; read again and retry.
var ErrSettingsConflict = errors.New("cluster settings changed concurrently")

// SettingsRecord is the current cluster settings document.
type SettingsRecord struct {
	Version  int             `json:"version"`
	Time     time.Time       `json:"time"`
	Actor    string          `json:"actor"`
	Document json.RawMessage `json:"document"`
}

// setSettings stores the next settings version. With Seed it applies only
// when none is stored; otherwise Base must be the stored version (0: none
// stored), so two operators' changes cannot overwrite each other unseen.
type setSettings struct {
	Actor    string          `json:"actor"`
	Document json.RawMessage `json:"document"`
	Base     int             `json:"base"`
	Seed     bool            `json:"seed,omitempty"`
}

func (c *setSettings) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bSettings)
	cur := 0
	if v := b.Get(keySettings); v != nil {
		var old SettingsRecord
		if err := json.Unmarshal(v, &old); err != nil {
			return applyResult{Err: err}
		}
		cur = old.Version
	}
	if c.Seed && cur > 0 {
		return applyResult{}
	}
	if !c.Seed && c.Base != cur {
		return applyResult{Err: fmt.Errorf("%w: based on version %d, the cluster has %d", ErrSettingsConflict, c.Base, cur)}
	}
	rec := SettingsRecord{Version: cur + 1, Time: at, Actor: c.Actor, Document: c.Document}
	if err := putJSON(b, keySettings, rec); err != nil {
		return applyResult{Err: err}
	}
	detail := map[string]any{"version": rec.Version, "settings": c.Document}
	if c.Seed {
		detail["seed"] = true
	}
	if err := appendAudit(tx, at, AuditSettings, c.Actor, "settings", detail); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: uint64(rec.Version)}
}

// SetSettings commits a settings document as the version after base and
// returns its version; ErrSettingsConflict if base is no longer current.
// Validate the document first: the registry stores it as is.
func (n *Node) SetSettings(ctx context.Context, actor string, base int, document json.RawMessage) (int, error) {
	v, err := n.apply(ctx, "settings.set", 1, &setSettings{Actor: actor, Document: document, Base: base})
	return int(v), err
}

// SeedSettings writes the first settings version if, when the command
// applies, none exists; it reports whether it did.
func (n *Node) SeedSettings(ctx context.Context, actor string, document json.RawMessage) (bool, error) {
	v, err := n.apply(ctx, "settings.set", 1, &setSettings{Actor: actor, Document: document, Seed: true})
	return v > 0, err
}

// Settings returns this node's replica of the settings; ErrNotFound before
// they were seeded.
func (n *Node) Settings() (SettingsRecord, error) {
	var rec SettingsRecord
	err := n.fsm.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bSettings).Get(keySettings)
		if v == nil {
			return fmt.Errorf("cluster settings: %w", ErrNotFound)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}
