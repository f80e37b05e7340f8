package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// ClusterSettings are the settings every node of a cluster shares. They are
// replicated state (cluster.SettingsRecord): the node that creates the
// cluster writes them from its config.json at bootstrap, a joining node
// reads them from its replica, and `gatehouse settings set` changes them
// for every node, audited. In config.json these fields are the bootstrap
// seed, and a fallback only until the node's replica holds the settings;
// after that the replicated values win and a node whose config.json
// differs logs it at start. Node-local settings (node_id, listen,
// raft_addr, hostnames, audit_sink, join_seed, rate_limit, rate_burst,
// refusal_summary_every, max_in_flight) stay in config.json.
type ClusterSettings struct {
	// TrustDomain is fixed when the cluster is created: it is in every
	// certificate. It is shown, never changed.
	TrustDomain          string   `json:"trust_domain"`
	CertValidity         Duration `json:"cert_validity"`
	SessionTTL           Duration `json:"session_ttl"`
	ApprovalRetry        Duration `json:"approval_retry"`
	AuditCheckpointEvery Duration `json:"audit_checkpoint_every"`
	RetainRefused        Duration `json:"retain_refused"`
	RetainRawEvidence    Duration `json:"retain_raw_evidence"`
}

// clusterSettings is the cluster-wide part of a node's configuration.
func (c Config) clusterSettings() ClusterSettings {
	return ClusterSettings{TrustDomain: c.TrustDomain, CertValidity: c.CertValidity, SessionTTL: c.SessionTTL,
		ApprovalRetry: c.ApprovalRetry, AuditCheckpointEvery: c.AuditCheckpointEvery,
		RetainRefused: c.RetainRefused, RetainRawEvidence: c.RetainRawEvidence}
}

// withClusterSettings is c with s's cluster-wide fields.
func (c Config) withClusterSettings(s ClusterSettings) Config {
	c.TrustDomain, c.CertValidity, c.SessionTTL = s.TrustDomain, s.CertValidity, s.SessionTTL
	c.ApprovalRetry, c.AuditCheckpointEvery = s.ApprovalRetry, s.AuditCheckpointEvery
	c.RetainRefused, c.RetainRawEvidence = s.RetainRefused, s.RetainRawEvidence
	return c
}

// errSettingsInvalid: settings that `settings set` refuses.
var errSettingsInvalid = errors.New("invalid cluster settings")

// validate applies Config's rules to the cluster-wide fields.
func (s ClusterSettings) validate() error {
	if err := DefaultConfig().withClusterSettings(s).validate(); err != nil {
		return fmt.Errorf("%w: %v", errSettingsInvalid, err)
	}
	return nil
}

// validateSettingsDocument is the FSM's settings validator
// (cluster.WithSettingsValidator), and what a node checks a replicated
// document against before it uses it: Config's rules on the cluster-wide
// fields, and a trust domain that never changes once stored. Fields the
// document does not carry are the defaults; unknown keys are ignored here
// (ChangeSettings refuses them), so that a node does not refuse a document
// a newer node wrote with a field it does not know. It is a pure function
// of its arguments, as every replica must agree on it.
func validateSettingsDocument(prev, next json.RawMessage) error {
	s := DefaultConfig().clusterSettings()
	if err := json.Unmarshal(next, &s); err != nil {
		return err
	}
	if err := DefaultConfig().withClusterSettings(s).validate(); err != nil {
		return err
	}
	if prev == nil {
		return nil
	}
	var old ClusterSettings
	if err := json.Unmarshal(prev, &old); err != nil {
		return fmt.Errorf("the stored settings: %w", err)
	}
	if old.TrustDomain != s.TrustDomain {
		return fmt.Errorf("trust_domain %q cannot become %q: it is fixed when the cluster is created (it is in every certificate)", old.TrustDomain, s.TrustDomain)
	}
	return nil
}

// SettingsView is what GET /admin/v1/settings returns.
type SettingsView struct {
	// Version is the replicated version; 0 means the cluster holds none
	// yet and this node serves its own config.json's values.
	Version  int             `json:"version"`
	Time     time.Time       `json:"time,omitzero"`
	Actor    string          `json:"actor,omitempty"`
	Settings ClusterSettings `json:"settings"`
}

// SettingsChange is the body of PUT /admin/v1/settings: the fields to
// change (a JSON object with ClusterSettings' keys), based on the version
// the operator read (0: the current one).
type SettingsChange struct {
	Actor       string          `json:"actor"`
	BaseVersion int             `json:"base_version,omitempty"`
	Settings    json.RawMessage `json:"settings"`
}

// Settings returns the cluster settings this node uses.
func (a *Appliance) Settings() SettingsView {
	v := a.conf.view()
	return SettingsView{Version: v.settingsVersion, Time: v.settingsTime, Actor: v.settingsActor, Settings: v.settings}
}

// ChangeSettings merges change into the current cluster settings and
// commits the result as the next version. Unknown keys and a changed
// trust domain are refused; so is a change based on an older version.
func (a *Appliance) ChangeSettings(ctx context.Context, actor string, base int, change json.RawMessage) (SettingsView, error) {
	if err := a.membersApply(ctx, cluster.ConfigCommands...); err != nil {
		return SettingsView{}, err
	}
	if err := a.seedSettings(ctx); err != nil {
		return SettingsView{}, err
	}
	if err := a.node.Linearize(ctx); err != nil {
		return SettingsView{}, err
	}
	cur := a.Settings()
	if base == 0 {
		base = cur.Version
	}
	next := cur.Settings
	dec := json.NewDecoder(bytes.NewReader(change))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&next); err != nil {
		return SettingsView{}, fmt.Errorf("%w: %v", errSettingsInvalid, err)
	}
	if next.TrustDomain != cur.Settings.TrustDomain {
		return SettingsView{}, fmt.Errorf("%w: trust_domain is fixed when the cluster is created (it is in every certificate)", errSettingsInvalid)
	}
	if err := next.validate(); err != nil {
		return SettingsView{}, err
	}
	doc, err := json.Marshal(next)
	if err != nil {
		return SettingsView{}, err
	}
	if _, err := a.node.SetSettings(ctx, actor, base, doc); err != nil {
		return SettingsView{}, err
	}
	return a.Settings(), nil
}

const adminSettings = "/admin/v1/settings"

func (a *Appliance) registerSettingsAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	add(ca.RoleAuditor, "GET "+adminSettings, a.read(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Settings())
	}))
	add(ca.RoleOperator, "PUT "+adminSettings, func(w http.ResponseWriter, r *http.Request) {
		var req SettingsChange
		if err := decodeBody(r, 64<<10, &req); err != nil {
			writeProblem(w, err)
			return
		}
		v, err := a.ChangeSettings(r.Context(), actor(r, req.Actor), req.BaseVersion, req.Settings)
		if errors.Is(err, errSettingsInvalid) || errors.Is(err, errMembersBehind) {
			writeProblem(w, err) // 400 settings_invalid, 503 unavailable
			return
		}
		if err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		a.log.Info("cluster settings changed", "version", v.Version, "actor", v.Actor)
		writeJSON(w, http.StatusOK, v)
	})
}

// Settings returns the cluster settings the node uses.
func (c *AdminClient) Settings(ctx context.Context) (SettingsView, error) {
	var v SettingsView
	return v, c.get(ctx, adminSettings, &v)
}

// ChangeSettings changes cluster settings (a JSON object of the fields to change).
func (c *AdminClient) ChangeSettings(ctx context.Context, actor string, base int, change json.RawMessage) (SettingsView, error) {
	var v SettingsView
	return v, c.do(ctx, http.MethodPut, adminSettings, SettingsChange{Actor: actor, BaseVersion: base, Settings: change}, &v)
}

// seedSettings writes this node's cluster-wide configuration as the
// cluster's settings if the cluster has none: the first node at
// bootstrap, or the node that created a cluster from before settings were
// replicated. A node that joined never seeds (its config.json's
// cluster-wide fields are not the cluster's choice).
func (a *Appliance) seedSettings(ctx context.Context) error {
	if a.cfg.JoinSeed != "" {
		return nil
	}
	if _, err := a.node.Settings(); err == nil {
		return nil
	}
	doc, err := json.Marshal(a.cfg.clusterSettings())
	if err != nil {
		return err
	}
	seeded, err := a.node.SeedSettings(ctx, "node:"+a.cfg.NodeID, doc)
	if seeded {
		a.log.Info("cluster settings written to the replicated state", "from", configFile)
	}
	return err
}
