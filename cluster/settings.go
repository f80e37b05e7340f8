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

var (
	// ErrSettingsConflict: the settings changed since the caller read the
	// version it based its change on; read again and retry.
	ErrSettingsConflict = errors.New("cluster settings changed concurrently")
	// ErrSettingsInvalid: a settings document the FSM refuses to apply:
	// over MaxSettingsDocument, or refused by the node's settings
	// validator (WithSettingsValidator).
	ErrSettingsInvalid = errors.New("invalid cluster settings")
)

// MaxSettingsDocument bounds the settings document: a handful of fields,
// read by every node on every change.
const MaxSettingsDocument = 16 << 10

// SettingsValidator judges a settings document when the FSM applies it:
// prev is the stored document (nil when none is), next the proposed one.
// It must be a pure function of its arguments (every replica calls it on
// the same entries and must agree), and is called under the FSM's write
// transaction, so it must be quick.
type SettingsValidator func(prev, next json.RawMessage) error

// WithSettingsValidator makes the FSM refuse (ErrSettingsInvalid, nothing
// written) a settings command validate refuses: whoever proposed it (an
// operator through the API, a forwarded command from any node, a replayed
// entry), settings that the appliance would not accept never take effect.
// Every node of a cluster must use the same validator.
func WithSettingsValidator(validate SettingsValidator) Option {
	return func(o *options) { o.validateSettings = validate }
}

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

	validate SettingsValidator // the FSM's, set when it decodes the entry
}

func (c *setSettings) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bSettings)
	cur := 0
	var prev json.RawMessage
	if v := b.Get(keySettings); v != nil {
		var old SettingsRecord
		if err := json.Unmarshal(v, &old); err != nil {
			return applyResult{Err: err}
		}
		cur, prev = old.Version, old.Document
	}
	if c.Seed && cur > 0 {
		return applyResult{}
	}
	if !c.Seed && c.Base != cur {
		return applyResult{Err: fmt.Errorf("%w: based on version %d, the cluster has %d", ErrSettingsConflict, c.Base, cur)}
	}
	if len(c.Document) > MaxSettingsDocument {
		return applyResult{Err: fmt.Errorf("%w: a document of %d bytes (at most %d)", ErrSettingsInvalid, len(c.Document), MaxSettingsDocument)}
	}
	if c.validate != nil {
		if err := c.validate(prev, c.Document); err != nil {
			return applyResult{Err: fmt.Errorf("%w: %v", ErrSettingsInvalid, err)}
		}
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
// Validate the document first: the FSM applies only what its
// SettingsValidator accepts.
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
