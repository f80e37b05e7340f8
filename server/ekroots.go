package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The manufacturer CA set is replicated (cluster/ekroots.go). Every node
// builds its EK verifier from its replica and rebuilds it when the replica
// changes, so `ekroots add` or `remove` is in force for enrollments on a
// node as soon as that node applies it. Until the cluster holds a set (the
// first moments of a new cluster; a data directory from before the set was
// replicated, until its leader migrates it), the node's DATADIR/ek-roots.pem
// stands in.

// errEKRootInvalid: a certificate `ekroots add` refuses.
var errEKRootInvalid = errors.New("invalid manufacturer CA")

// maxEKRootsBody bounds an `ekroots add` request.
const maxEKRootsBody = 2 << 20 // forwarded to the leader as base64 DER: under maxRPCBody

// ekRootsFromPEM parses a PEM bundle (or one DER certificate) into CAs for
// the replicated set. Every certificate must parse and, when strict, be a
// CA (basicConstraints cA): `ekroots add` is strict; seeding from a node's
// ek-roots.pem is not, keeping what init accepted before the set was
// replicated (every configured certificate is an anchor). A CA marked with attest.NoTPMEvidenceHeader, or
// every CA when allowNoEvidence, may issue EK certificates without TPM
// evidence. Duplicates collapse.
func ekRootsFromPEM(b []byte, source string, allowNoEvidence, strict bool) ([]cluster.EKRoot, error) {
	type cert struct {
		der   []byte
		allow bool
	}
	var certs []cert
	rest := b
	for i := 1; ; i++ {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: PEM block %d is a %q, not a CERTIFICATE", errEKRootInvalid, i, blk.Type)
		}
		certs = append(certs, cert{blk.Bytes, allowNoEvidence || blk.Headers[attest.NoTPMEvidenceHeader] == "allowed"})
	}
	if len(certs) == 0 {
		if len(b) == 0 {
			return nil, fmt.Errorf("%w: no certificate given", errEKRootInvalid)
		}
		certs = append(certs, cert{b, allowNoEvidence})
	}
	if len(certs) > cluster.MaxEKRoots {
		return nil, fmt.Errorf("%w: %d certificates (at most %d)", errEKRootInvalid, len(certs), cluster.MaxEKRoots)
	}
	seen := map[string]bool{}
	var out []cluster.EKRoot
	for i, c := range certs {
		parsed, err := attest.ParseCertificates(c.der)
		if err != nil || len(parsed) != 1 {
			return nil, fmt.Errorf("%w: certificate %d does not parse: %v", errEKRootInvalid, i+1, err)
		}
		x := parsed[0]
		if strict && (!x.BasicConstraintsValid || !x.IsCA) {
			return nil, fmt.Errorf("%w: certificate %d (%s) is not a CA certificate (basicConstraints cA is not set); only manufacturer CAs belong in the set", errEKRootInvalid, i+1, attest.Name(x.Subject))
		}
		if len(x.Raw) > cluster.MaxEKRootDER {
			return nil, fmt.Errorf("%w: certificate %d is %d bytes (at most %d)", errEKRootInvalid, i+1, len(x.Raw), cluster.MaxEKRootDER)
		}
		sum := sha256.Sum256(x.Raw)
		fp := hex.EncodeToString(sum[:])
		if seen[fp] {
			continue
		}
		seen[fp] = true
		out = append(out, cluster.EKRoot{SHA256: fp, Subject: attest.Name(x.Subject), DER: x.Raw, AllowNoTPMEvidence: c.allow, Source: source})
	}
	return out, nil
}

// ekRootsPEM is the set as a PEM bundle that attest.EKRootsOptions reads:
// each CA preceded by a comment naming it, the allowance as a PEM header.
func ekRootsPEM(roots []cluster.EKRoot) []byte {
	var out []byte
	for _, r := range roots {
		out = append(out, fmt.Sprintf("# %s (sha256 %s)\n", r.Subject, r.SHA256)...)
		out = append(out, attest.EKRootPEM(r.DER, r.AllowNoTPMEvidence)...)
	}
	return out
}

// confView is what a node builds from the replicated configuration.
type confView struct {
	settings        ClusterSettings
	settingsVersion int // 0: the node's config.json stands in
	settingsTime    time.Time
	settingsActor   string
	verifier        *attest.EKVerifier
	roots           []cluster.EKRoot // nil: the node's ek-roots.pem stands in
}

// replicatedConf caches confView, rebuilding it when the node's
// ConfigGeneration moves (a batch changed the EK roots or settings, or a
// snapshot was restored).
type replicatedConf struct {
	node       *cluster.Node // nil until Raft opens: local values only
	local      Config
	localRoots []byte
	log        *slog.Logger

	mu    sync.Mutex
	gen   uint64
	built bool
	cur   confView
}

func (c *replicatedConf) view() confView {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gen uint64
	if c.node != nil {
		gen = c.node.ConfigGeneration()
	}
	if c.built && gen == c.gen {
		return c.cur
	}
	v, err := c.build(c.cur)
	if err != nil {
		// Not cached: the next view tries again.
		c.log.Error("reading the replicated configuration failed", "err", err)
	}
	c.cur, c.gen, c.built = v, gen, err == nil
	return v
}

// build reads the replica. The local files stand in for what the cluster
// does not hold yet. On an error it still returns a view to use: settings
// it cannot read or that fail validation keep prev's (or the local ones);
// EK roots it cannot read give a verifier that trusts no CA, never prev's,
// which may hold a CA the replica has removed.
func (c *replicatedConf) build(prev confView) (confView, error) {
	v := confView{settings: c.local.clusterSettings()}
	if prev.settingsVersion > 0 {
		v.settings, v.settingsVersion, v.settingsTime, v.settingsActor = prev.settings, prev.settingsVersion, prev.settingsTime, prev.settingsActor
	}
	var errs []error
	var roots []cluster.EKRoot
	rootsOK := true
	if c.node != nil {
		rec, err := c.node.Settings()
		if err == nil {
			if err = validateSettingsDocument(nil, rec.Document); err != nil {
				err = fmt.Errorf("cluster settings version %d: %w", rec.Version, err)
			}
		}
		if err == nil {
			s := DefaultConfig().clusterSettings()
			if err = json.Unmarshal(rec.Document, &s); err == nil {
				v.settings, v.settingsVersion, v.settingsTime, v.settingsActor = s, rec.Version, rec.Time, rec.Actor
			}
		}
		if err != nil && !errors.Is(err, cluster.ErrNotFound) {
			errs = append(errs, err)
		}
		if roots, err = c.node.EKRoots(); err != nil {
			errs, rootsOK = append(errs, err), false
		}
	}
	var bundle []byte
	if len(roots) > 0 {
		v.roots, bundle = roots, ekRootsPEM(roots)
	} else if rootsOK {
		bundle = c.localRoots
	}
	var certs []*x509.Certificate
	if rootsOK {
		var err error
		if certs, err = attest.ParseCertificates(bundle); err != nil {
			errs = append(errs, fmt.Errorf("EK roots: %w", err))
			certs, bundle = nil, nil
		}
	}
	v.verifier = attest.NewEKVerifier(certs, attest.EKRootsOptions(bundle)...)
	return v, errors.Join(errs...)
}

// EKRootInfo is one manufacturer CA as the admin API shows it.
type EKRootInfo struct {
	SHA256             string    `json:"sha256"`
	Subject            string    `json:"subject"`
	Issuer             string    `json:"issuer"`
	NotAfter           time.Time `json:"not_after"`
	AllowNoTPMEvidence bool      `json:"allow_no_tpm_evidence"`
	AddedAt            time.Time `json:"added_at,omitzero"`
	AddedBy            string    `json:"added_by,omitempty"`
	Source             string    `json:"source,omitempty"`
	PEM                string    `json:"pem"`
}

func ekRootInfo(r cluster.EKRoot) EKRootInfo {
	info := EKRootInfo{SHA256: r.SHA256, Subject: r.Subject, AllowNoTPMEvidence: r.AllowNoTPMEvidence, AddedAt: r.AddedAt, AddedBy: r.AddedBy, Source: r.Source,
		PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.DER}))}
	if c, err := x509.ParseCertificate(r.DER); err == nil {
		info.Issuer, info.NotAfter = attest.Name(c.Issuer), c.NotAfter
	}
	return info
}

// EKRootsBundle is a served set as a PEM bundle for attest (Recheck).
func EKRootsBundle(infos []EKRootInfo) []byte {
	var out []byte
	for _, i := range infos {
		blk, _ := pem.Decode([]byte(i.PEM))
		if blk == nil || blk.Type != "CERTIFICATE" {
			continue
		}
		out = append(out, attest.EKRootPEM(blk.Bytes, i.AllowNoTPMEvidence)...)
	}
	return out
}

// EKRootsAdd is the body of POST /admin/v1/ekroots.
type EKRootsAdd struct {
	Actor string `json:"actor"`
	// PEM holds one or more CA certificates; a PEM header
	// attest.NoTPMEvidenceHeader marks a CA allowed to omit TPM evidence.
	PEM                string `json:"pem"`
	AllowNoTPMEvidence bool   `json:"allow_no_tpm_evidence,omitempty"`
	Source             string `json:"source,omitempty"`
}

// EKRootRemove is the optional body of DELETE /admin/v1/ekroots/{sha256}.
type EKRootRemove struct {
	Actor string `json:"actor"`
}

// EKRootsAdded is what POST /admin/v1/ekroots returns.
type EKRootsAdded struct {
	Written int          `json:"written"` // added, or whose allowance changed
	Roots   []EKRootInfo `json:"roots"`   // every CA the request named
}

// EKRoots returns the set this node verifies EK certificates against: the
// replicated set, or the node's ek-roots.pem while the cluster has none.
func (a *Appliance) EKRoots() ([]EKRootInfo, error) {
	v := a.conf.view()
	roots := v.roots
	if roots == nil {
		var err error
		if roots, err = ekRootsFromPEM(a.conf.localRoots, ekRootsFile, false, false); err != nil {
			return nil, err
		}
	}
	out := make([]EKRootInfo, 0, len(roots))
	for _, r := range roots {
		out = append(out, ekRootInfo(r))
	}
	return out, nil
}

// ekRootsFile is the set this node serves as a PEM bundle: what a joining
// node and a backup's ek-roots.pem carry.
func (a *Appliance) ekRootsFile() ([]byte, error) {
	if roots := a.conf.view().roots; roots != nil {
		return ekRootsPEM(roots), nil
	}
	return a.conf.localRoots, nil
}

var fingerprintRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (a *Appliance) registerEKRootsAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	const path = "/admin/v1/ekroots"
	add(ca.RoleAuditor, "GET "+path, a.read(func(w http.ResponseWriter, r *http.Request) {
		infos, err := a.EKRoots()
		writeResult(w, http.StatusOK, infos, a.adminErr(err))
	}))
	add(ca.RoleOperator, "POST "+path, func(w http.ResponseWriter, r *http.Request) {
		var req EKRootsAdd
		if err := json.NewDecoder(limitBody(w, r.Body, maxEKRootsBody)).Decode(&req); err != nil {
			writeProblem(w, malformed("body: "+err.Error()))
			return
		}
		roots, err := ekRootsFromPEM([]byte(req.PEM), req.Source, req.AllowNoTPMEvidence, true)
		if err != nil {
			writeProblem(w, err) // errEKRootInvalid: 400 ek_root_invalid
			return
		}
		if err := a.membersApply(r.Context(), cluster.ConfigCommands...); err != nil {
			writeProblem(w, err) // errMembersBehind: 503
			return
		}
		// An add before the set was seeded would become the whole set.
		if err := a.seedEKRoots(r.Context()); err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		who := actor(r, req.Actor)
		n, err := a.node.AddEKRoots(r.Context(), who, roots)
		if err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		// Answer with the records as stored (who added them and when), once
		// this node has applied the add.
		stored := map[string]cluster.EKRoot{}
		if a.node.Linearize(r.Context()) == nil {
			if all, err := a.node.EKRoots(); err == nil {
				for _, s := range all {
					stored[s.SHA256] = s
				}
			}
		}
		out := EKRootsAdded{Written: n}
		for _, root := range roots {
			if s, ok := stored[root.SHA256]; ok {
				root = s
			}
			out.Roots = append(out.Roots, ekRootInfo(root))
			a.log.Info("manufacturer CA added", "subject", root.Subject, "sha256", root.SHA256, "actor", who)
		}
		writeJSON(w, http.StatusOK, out)
	})
	add(ca.RoleOperator, "DELETE "+path+"/{sha256}", func(w http.ResponseWriter, r *http.Request) {
		fp := r.PathValue("sha256")
		if !fingerprintRE.MatchString(fp) {
			writeProblem(w, malformed("a manufacturer CA is named by the lowercase hex SHA-256 of its DER (ekroots list)"))
			return
		}
		if err := a.membersApply(r.Context(), cluster.ConfigCommands...); err != nil {
			writeProblem(w, err) // errMembersBehind: 503
			return
		}
		// Removal goes by what the cluster holds, not by this node's file.
		if err := a.seedEKRoots(r.Context()); err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		var req EKRootRemove
		if r.ContentLength != 0 {
			if err := decodeBody(r, 64<<10, &req); err != nil {
				writeProblem(w, err)
				return
			}
		}
		who := actor(r, req.Actor)
		if err := a.node.RemoveEKRoot(r.Context(), who, fp); err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		a.log.Info("manufacturer CA removed", "sha256", fp, "actor", who)
		writeJSON(w, http.StatusOK, struct{}{})
	})
}

// seedEKRoots writes this node's ek-roots.pem as the cluster's set if the
// cluster has none: the first node at bootstrap, or the leader of a
// cluster from before the set was replicated (a one-time migration,
// audited as ekroots.seeded). Every node got the same file at join.
func (a *Appliance) seedEKRoots(ctx context.Context) error {
	if roots, err := a.node.EKRoots(); err != nil || len(roots) > 0 {
		return err
	}
	roots, err := ekRootsFromPEM(a.conf.localRoots, ekRootsFile, false, false)
	if err != nil {
		return fmt.Errorf("%s cannot seed the replicated set: %w", ekRootsFile, err)
	}
	seeded, err := a.node.SeedEKRoots(ctx, "node:"+a.cfg.NodeID, roots)
	if seeded {
		a.log.Info("manufacturer CAs written to the replicated state", "from", ekRootsFile, "count", len(roots))
	}
	return err
}

// seedLoop seeds the replicated EK roots (on the leader) and settings
// (from the node that created the cluster) once the node can commit,
// retrying until both are in the replica or the appliance closes.
func (a *Appliance) seedLoop() {
	for attempt := 0; ; attempt++ {
		err := a.seed(a.ctx)
		if err == nil && a.seeded() {
			a.warnLocalSettings()
			return
		}
		if err != nil && attempt%100 == 99 {
			a.log.Warn("still writing the initial EK roots and settings to the cluster", "err", err)
		}
		wait := 50 * time.Millisecond
		if attempt >= 100 {
			wait = 5 * time.Second // a joiner of an old cluster waits for its creator
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// seed writes what is missing of the replicated EK roots (on the leader)
// and settings (the creator, once there is a leader), once every member
// applies those commands (membersApply: in a rolling upgrade, an old member
// would stop on them).
func (a *Appliance) seed(ctx context.Context) error {
	roots, err := a.node.EKRoots()
	if err != nil {
		return err
	}
	_, err = a.node.Settings()
	needRoots := a.node.IsLeader() && len(roots) == 0
	needSettings := a.cfg.JoinSeed == "" && a.node.LeaderID() != "" && errors.Is(err, cluster.ErrNotFound)
	if !needRoots && !needSettings {
		return a.seedFeature(ctx)
	}
	if err := a.membersApply(ctx, cluster.ConfigCommands...); err != nil {
		return err
	}
	var errs []error
	if needRoots {
		errs = append(errs, a.seedEKRoots(ctx))
	}
	if needSettings {
		errs = append(errs, a.seedSettings(ctx))
	}
	errs = append(errs, a.seedFeature(ctx))
	return errors.Join(errs...)
}

// seeded: the replica holds both EK roots and settings, or this node
// cannot seed the settings (it joined) and the EK roots are there.
func (a *Appliance) seeded() bool {
	roots, err := a.node.EKRoots()
	if err != nil || len(roots) == 0 {
		return false
	}
	_, err = a.node.Settings()
	return err == nil
}

// warnLocalSettings logs the cluster-wide fields of config.json that the
// replicated settings override.
func (a *Appliance) warnLocalSettings() {
	v := a.conf.view()
	if v.settingsVersion > 0 && v.settings != a.cfg.clusterSettings() {
		local, _ := json.Marshal(a.cfg.clusterSettings())
		cur, _ := json.Marshal(v.settings)
		a.log.Info("config.json's cluster-wide settings differ from the cluster's; the cluster's apply (gatehouse settings show)", "config_json", string(local), "cluster", string(cur))
	}
}

// EKRoots returns the manufacturer CA set the node serves.
func (c *AdminClient) EKRoots(ctx context.Context) ([]EKRootInfo, error) {
	var out []EKRootInfo
	return out, c.get(ctx, "/admin/v1/ekroots", &out)
}

// AddEKRoots adds the CA certificates in pemBundle to the cluster's set.
func (c *AdminClient) AddEKRoots(ctx context.Context, actor string, pemBundle []byte, allowNoEvidence bool, source string) (EKRootsAdded, error) {
	var out EKRootsAdded
	return out, c.do(ctx, http.MethodPost, "/admin/v1/ekroots", EKRootsAdd{Actor: actor, PEM: string(pemBundle), AllowNoTPMEvidence: allowNoEvidence, Source: source}, &out)
}

// RemoveEKRoot removes the CA with the given SHA-256 fingerprint.
func (c *AdminClient) RemoveEKRoot(ctx context.Context, actor, sha256Hex string) error {
	return c.do(ctx, http.MethodDelete, "/admin/v1/ekroots/"+sha256Hex, EKRootRemove{Actor: actor}, &struct{}{})
}
