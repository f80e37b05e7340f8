package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// LabelChange is the body of POST /admin/v1/devices/{id}/labels.
type LabelChange struct {
	Actor  string            `json:"actor,omitempty"`
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// ConfigChange is the body of PUT .../config.
type ConfigChange struct {
	Actor  string          `json:"actor,omitempty"`
	Config json.RawMessage `json:"config"`
}

// DeviceConfig is what GET /admin/v1/devices/{id}/config returns.
type DeviceConfig struct {
	Effective api.ConfigResponse `json:"effective"`
	Group     json.RawMessage    `json:"group"`
	Override  json.RawMessage    `json:"override"`
}

// GroupConfig is what GET /admin/v1/groups/{name}/config returns.
type GroupConfig struct {
	Group         string          `json:"group"`
	PolicyVersion int             `json:"policy_version"`
	Config        json.RawMessage `json:"config"`
}

// AdminCertRequest is the body of POST /admin/v1/admin-certs.
type AdminCertRequest struct {
	Role     string   `json:"role"`
	Name     string   `json:"name"`
	CSR      []byte   `json:"csr"` // PKCS#10 DER
	Validity Duration `json:"validity"`
}

// AdminCertResponse carries the issued certificate (PEM, leaf first) and
// the root the CLI pins for the server.
type AdminCertResponse struct {
	Chain []byte `json:"chain"`
	Root  []byte `json:"root"`
}

func decodeBody(r *http.Request, limit int64, v any) error {
	if err := json.NewDecoder(io.LimitReader(r.Body, limit)).Decode(v); err != nil {
		return malformed("body: " + err.Error())
	}
	return nil
}

func (a *Appliance) registerRegistryAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	a.registerImportAdmin(add)
	a.registerEvidenceAdmin(add)
	a.registerDeviceCertsAdmin(add)
	add(ca.RoleOperator, "POST "+adminDevices+"/{id}/labels", func(w http.ResponseWriter, r *http.Request) {
		var req LabelChange
		if err := decodeBody(r, 64<<10, &req); err != nil {
			writeProblem(w, err)
			return
		}
		dev, err := a.node.LabelDevice(r.Context(), r.PathValue("id"), actor(r, req.Actor), req.Set, req.Remove)
		writeResult(w, http.StatusOK, dev, a.errProblem(err))
	})
	add(ca.RoleAuditor, "GET "+adminDevices+"/{id}/config", a.read(func(w http.ResponseWriter, r *http.Request) {
		dev, err := a.node.Device(r.PathValue("id"))
		if err != nil {
			writeProblem(w, a.adminErr(err))
			return
		}
		eff, err := a.effectiveConfig(dev)
		if err != nil {
			writeProblem(w, err)
			return
		}
		group := json.RawMessage("{}")
		if p, err := a.enroller.policies.current(); err == nil {
			if g := p.GroupNamed(dev.Group); g != nil && len(g.Config) > 0 {
				group = g.Config
			}
		}
		override := dev.Config
		if len(override) == 0 {
			override = json.RawMessage("{}")
		}
		writeJSON(w, http.StatusOK, DeviceConfig{Effective: eff, Group: group, Override: override})
	}))
	add(ca.RoleOperator, "PUT "+adminDevices+"/{id}/config", func(w http.ResponseWriter, r *http.Request) {
		var req ConfigChange
		if err := decodeBody(r, 1<<20, &req); err != nil {
			writeProblem(w, err)
			return
		}
		dev, err := a.node.ConfigureDevice(r.Context(), r.PathValue("id"), actor(r, req.Actor), req.Config)
		writeResult(w, http.StatusOK, dev, a.errProblem(err))
	})
	add(ca.RoleAuditor, "GET "+adminGroups+"/{name}/config", a.read(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.enroller.policies.current()
		if err != nil {
			writeProblem(w, a.adminErr(err))
			return
		}
		g := p.GroupNamed(r.PathValue("name"))
		if g == nil {
			writeProblem(w, newProblem(http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("policy v%d has no group %q", p.Version, r.PathValue("name"))))
			return
		}
		cfg := g.Config
		if len(cfg) == 0 {
			cfg = json.RawMessage("{}")
		}
		writeJSON(w, http.StatusOK, GroupConfig{Group: g.Name, PolicyVersion: p.Version, Config: cfg})
	}))
	add(ca.RoleOperator, "PUT "+adminGroups+"/{name}/config", func(w http.ResponseWriter, r *http.Request) {
		var req ConfigChange
		if err := decodeBody(r, 1<<20, &req); err != nil {
			writeProblem(w, err)
			return
		}
		rec, err := a.setGroupConfig(r.Context(), r.PathValue("name"), actor(r, req.Actor), req.Config)
		writeResult(w, http.StatusOK, rec, err)
	})
	add(ca.RoleAuditor, "GET "+adminAudit, func(w http.ResponseWriter, r *http.Request) {
		a.exportAudit(w, r)
	})
	add(ca.RoleOperator, "POST "+adminAudit+"/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		seq, err := a.checkpoint(r.Context(), actor(r, ""))
		writeResult(w, http.StatusOK, map[string]uint64{"seq": seq}, a.errProblem(err))
	})
	add(ca.RoleAuditor, "GET "+adminAudit+"/head", func(w http.ResponseWriter, r *http.Request) {
		head, err := a.auditHead(r.Context())
		writeResult(w, http.StatusOK, head, a.errProblem(err))
	})
	add(ca.RoleAuditor, "GET "+adminAudit+"/entries", a.read(func(w http.ResponseWriter, r *http.Request) {
		q, err := auditQuery(r)
		if err != nil {
			writeProblem(w, err)
			return
		}
		es, next, err := a.node.QueryAudit(q)
		writePage(w, r, es, next, a.queryErr(err))
	}))
	add(ca.RoleAuditor, "GET "+adminAudit+"/key", func(w http.ResponseWriter, r *http.Request) {
		_, chain := a.ca.AuditKey()
		w.Header().Set("Content-Type", "application/pem-certificate-chain")
		w.Write(pemChain(chain))
	})
	add(ca.RoleAuditor, "GET "+adminAdminCerts, a.read(func(w http.ResponseWriter, r *http.Request) {
		cursor, limit, err := pageParams(r)
		if err != nil {
			writeProblem(w, err)
			return
		}
		certs, err := a.ca.AdminCertificates()
		if err != nil {
			writeProblem(w, a.errProblem(err))
			return
		}
		page, next, err := pageSlice(certs, adminCertKey, cursor, limit)
		writePage(w, r, page, next, a.queryErr(err))
	}))
	add(ca.RoleOperator, "POST "+adminAdminCerts+"/{serial}/revoke", func(w http.ResponseWriter, r *http.Request) {
		var req DeviceOp
		if err := decodeBody(r, 64<<10, &req); err != nil {
			writeProblem(w, err)
			return
		}
		err := a.RevokeAdminCert(r.Context(), r.PathValue("serial"), actor(r, req.Actor), req.Reason)
		writeResult(w, http.StatusOK, struct{}{}, err)
	})
	add(ca.RoleOperator, "POST "+adminAdminCerts, func(w http.ResponseWriter, r *http.Request) {
		var req AdminCertRequest
		if err := decodeBody(r, 64<<10, &req); err != nil {
			writeProblem(w, err)
			return
		}
		csr, err := x509.ParseCertificateRequest(req.CSR)
		if err != nil {
			writeProblem(w, malformed("csr: "+err.Error()))
			return
		}
		if req.Validity.Duration == 0 {
			req.Validity.Duration = 90 * 24 * time.Hour
		}
		chain, err := a.ca.IssueAdmin(r.Context(), csr, a.cfg.TrustDomain, req.Role, req.Name, req.Validity.Duration)
		if errors.Is(err, ca.ErrBadProfile) {
			writeProblem(w, malformed(err.Error()))
			return
		} else if err != nil {
			writeProblem(w, a.enroller.internal(err))
			return
		}
		a.log.Info("admin certificate issued", "role", req.Role, "name", req.Name, "serial", chain[0].SerialNumber.Text(16), "actor", actor(r, ""))
		if err := a.node.AppendAudit(r.Context(), "admin.certificate_issued", actor(r, ""), req.Name, map[string]string{"role": req.Role, "serial": chain[0].SerialNumber.Text(16), "not_after": chain[0].NotAfter.Format(time.RFC3339)}); err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		writeJSON(w, http.StatusOK, AdminCertResponse{Chain: pemChain(chain), Root: pemChain([]*x509.Certificate{a.ca.Root()})})
	})
}

// RevokeAdminCert revokes an admin certificate by serial (hex) through
// step-ca: from then on every node refuses it.
func (a *Appliance) RevokeAdminCert(ctx context.Context, serialHex, who, reason string) error {
	serial, ok := new(big.Int).SetString(serialHex, 16)
	if !ok || reason == "" {
		return malformed("want a hex serial and a reason")
	}
	if err := a.ca.Revoke(ctx, serial, ca.ReasonUnspecified, reason); err != nil && !errors.Is(err, ca.ErrAlreadyRevoked) {
		return a.enroller.internal(err)
	}
	if err := a.node.AppendAudit(ctx, "admin.certificate_revoked", who, serialHex, map[string]string{"reason": reason}); err != nil {
		return a.clusterProblem(err)
	}
	a.log.Info("admin certificate revoked", "serial", serialHex, "actor", who)
	return nil
}

func pemChain(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// errProblem maps registry errors (with their codes) for write routes.
func (a *Appliance) errProblem(err error) error {
	if err == nil {
		return nil
	}
	return a.clusterProblem(err)
}

// RevokeDevice revokes a device and every certificate it ever had, in this
// order:
//  1. The state change commits through Raft. From its index on, the FSM
//     refuses every enrollment and renewal commit for the device
//     (ErrDeviceInactive), so no serial can be added to it afterwards.
//  2. Every serial in the device's accepted attestation records (the device
//     record keeps only the newest) is revoked through step-ca. This node has
//     applied everything up to the state change, so the records include any
//     enrollment or renewal committed before it, even one whose certificate
//     is issued only after this: revocation needs only the serial.
//
// Revoking a revoked serial is not an error, so step 2 can be repeated: a
// revocation interrupted after step 1 completes when `devices revoke` runs
// again on the revoked device (no second state change), or at the leader's
// next SweepRevocations.
func (a *Appliance) RevokeDevice(ctx context.Context, id, who, reason string) (cluster.Device, error) {
	if who == "" || reason == "" {
		return cluster.Device{}, fmt.Errorf("%w: an actor and a reason are required", cluster.ErrIllegalTransition)
	}
	dev, err := a.node.TransitionDevice(ctx, id, cluster.OpRevoke, who, reason)
	if errors.Is(err, cluster.ErrIllegalTransition) {
		// Already revoked: complete an earlier run's step 2.
		if lerr := a.node.Linearize(ctx); lerr != nil {
			return cluster.Device{}, lerr
		}
		if d, derr := a.node.Device(id); derr == nil && d.Status == cluster.DeviceRevoked {
			dev, err = d, nil
		}
	}
	if err != nil {
		return cluster.Device{}, err
	}
	if a.revokeHook != nil {
		a.revokeHook(id)
	}
	if _, err := a.revokeSerials(ctx, id, reason); err != nil {
		return cluster.Device{}, fmt.Errorf("device %s is revoked, but not yet all its certificates (run the revocation again): %w", id, err)
	}
	return dev, nil
}

// revokeSerials revokes every serial issued to a device (every accepted
// attestation record's, and the device record's) and returns how many it
// revoked now; serials already revoked are skipped.
func (a *Appliance) revokeSerials(ctx context.Context, id, reason string) (int, error) {
	_, certs, err := a.deviceSerials(id)
	if err != nil {
		return 0, err
	}
	serials := make([]string, len(certs))
	for i, c := range certs {
		serials[i] = c.Serial
	}
	n := 0
	for _, s := range serials {
		serial, ok := new(big.Int).SetString(s, 16)
		if !ok {
			return n, fmt.Errorf("device %s: bad serial %q in the registry", id, s)
		}
		if done, err := a.ca.IsRevoked(serial); err != nil {
			return n, err
		} else if done {
			continue
		}
		if err := a.ca.Revoke(ctx, serial, ca.ReasonCessationOfOperation, reason); err != nil && !errors.Is(err, ca.ErrAlreadyRevoked) {
			return n, err
		}
		n++
	}
	return n, nil
}

// SweepRevocations completes revocations interrupted between their state
// change and their serials (the leader runs it every
// audit_checkpoint_every): every certificate of a device that was ever
// revoked, or is deleted, is revoked. Revocation is final but for delete,
// so those are the revoked and deleted devices, read page by page.
func (a *Appliance) SweepRevocations(ctx context.Context) error {
	var errs []error
	for _, state := range []string{cluster.DeviceRevoked, cluster.DeviceDeleted} {
		err := a.eachDevice(state, func(d cluster.Device) error {
			i := slices.IndexFunc(d.History, func(c cluster.StateChange) bool {
				return c.Op == cluster.OpRevoke || c.Op == cluster.OpDelete
			})
			if i < 0 {
				return nil
			}
			n, err := a.revokeSerials(ctx, d.ID, d.History[i].Reason)
			if err != nil {
				errs = append(errs, err)
			}
			if n > 0 {
				a.log.Warn("completed an interrupted device revocation", "device_id", d.ID, "certificates", n)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// setGroupConfig applies a new policy version in which group's
// configuration is config: group configuration is part of the policy, so it
// is versioned with it.
func (a *Appliance) setGroupConfig(ctx context.Context, group, who string, config json.RawMessage) (cluster.PolicyRecord, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(config, &obj); err != nil || obj == nil {
		return cluster.PolicyRecord{}, malformed("configuration must be a JSON object")
	}
	if err := a.node.Linearize(ctx); err != nil {
		return cluster.PolicyRecord{}, a.clusterProblem(err)
	}
	p, err := a.enroller.policies.current()
	if err != nil {
		return cluster.PolicyRecord{}, a.enroller.internal(err)
	}
	next := *p
	next.Groups = append([]attest.Group(nil), p.Groups...)
	g := next.GroupNamed(group)
	if g == nil {
		return cluster.PolicyRecord{}, newProblem(http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("policy v%d has no group %q", p.Version, group))
	}
	g.Config = config
	doc, err := marshalPolicy(&next)
	if err != nil {
		return cluster.PolicyRecord{}, a.enroller.internal(err)
	}
	return a.ApplyPolicy(ctx, who, doc)
}

// ApplyPolicy validates a policy document (ParsePolicy, and no template
// may render the host name of any node of the cluster) and commits it as the next
// version. It is the only way the appliance applies a policy: the
// cluster stores whatever it is given.
func (a *Appliance) ApplyPolicy(ctx context.Context, who string, doc []byte) (cluster.PolicyRecord, error) {
	p, err := attest.ParsePolicy(doc)
	if err == nil {
		err = p.CheckReservedNames(a.reservedNames())
	}
	if err == nil && slices.ContainsFunc(p.Groups, func(g attest.Group) bool { return g.ACME }) {
		err = a.membersApply(ctx, featurePolicyACME)
	}
	if err != nil {
		return cluster.PolicyRecord{}, problemFor(err)
	}
	v, err := a.node.ApplyPolicy(ctx, who, doc)
	if err != nil {
		return cluster.PolicyRecord{}, a.clusterProblem(err)
	}
	rec, err := a.node.Policy(v)
	if err == nil {
		a.log.Info("policy applied", "version", v, "actor", who, "sha256", rec.SHA256)
	}
	return rec, a.errProblem(err)
}

// exportAudit serves GET /admin/v1/audit?since=RFC3339&format=jsonl|csv.
// It first commits a checkpoint over the head, so every export ends on a
// signature, and ends the export with a range signed over exactly its
// entries, so a cut at either end shows.
func (a *Appliance) exportAudit(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format == "" {
		format = cluster.AuditJSONL
	}
	if format != cluster.AuditJSONL && format != cluster.AuditCSV {
		writeProblem(w, malformed("format must be jsonl or csv"))
		return
	}
	var since time.Time
	if s := r.URL.Query().Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			writeProblem(w, malformed("since must be an RFC 3339 time"))
			return
		}
		since = t
	}
	key, chain := a.ca.AuditKey()
	upTo, err := a.checkpoint(r.Context(), actor(r, ""))
	if err != nil {
		writeProblem(w, a.clusterProblem(err))
		return
	}
	entries, err := a.node.AuditEntries(since, upTo)
	if err != nil {
		writeProblem(w, a.enroller.internal(err))
		return
	}
	if format == cluster.AuditCSV {
		w.Header().Set("Content-Type", "text/csv")
	} else {
		w.Header().Set("Content-Type", "application/jsonl")
	}
	now := time.Now().UTC()
	h := cluster.AuditHeader{ExportedAt: now, Since: since, KeyCertificate: string(pemChain(chain))}
	err = cluster.WriteAudit(w, format, h, entries)
	if err == nil {
		err = cluster.WriteAuditRange(w, format, cluster.SignRange(key, cluster.RangeExport, a.cfg.TrustDomain, since, now, entries))
	}
	if err != nil {
		a.log.Error("audit export interrupted", "err", err)
	}
}

// LabelDevice sets and removes labels on a device.
func (c *AdminClient) LabelDevice(ctx context.Context, id, actor string, set map[string]string, remove []string) (cluster.Device, error) {
	var dev cluster.Device
	return dev, c.do(ctx, http.MethodPost, adminDevices+"/"+url.PathEscape(id)+"/labels", LabelChange{Actor: actor, Set: set, Remove: remove}, &dev)
}

// DeviceConfig returns a device's effective, group and override configuration.
func (c *AdminClient) DeviceConfig(ctx context.Context, id string) (DeviceConfig, error) {
	var out DeviceConfig
	return out, c.get(ctx, adminDevices+"/"+url.PathEscape(id)+"/config", &out)
}

// SetDeviceConfig replaces a device's configuration override.
func (c *AdminClient) SetDeviceConfig(ctx context.Context, id, actor string, config json.RawMessage) (cluster.Device, error) {
	var dev cluster.Device
	return dev, c.do(ctx, http.MethodPut, adminDevices+"/"+url.PathEscape(id)+"/config", ConfigChange{Actor: actor, Config: config}, &dev)
}

// GroupConfig returns a group's configuration in the policy in force.
func (c *AdminClient) GroupConfig(ctx context.Context, group string) (GroupConfig, error) {
	var out GroupConfig
	return out, c.get(ctx, adminGroups+"/"+url.PathEscape(group)+"/config", &out)
}

// SetGroupConfig applies a policy version with the group's configuration replaced.
func (c *AdminClient) SetGroupConfig(ctx context.Context, group, actor string, config json.RawMessage) (cluster.PolicyRecord, error) {
	var rec cluster.PolicyRecord
	return rec, c.do(ctx, http.MethodPut, adminGroups+"/"+url.PathEscape(group)+"/config", ConfigChange{Actor: actor, Config: config}, &rec)
}

// Checkpoint signs the audit head now.
func (c *AdminClient) Checkpoint(ctx context.Context) (uint64, error) {
	var out map[string]uint64
	err := c.do(ctx, http.MethodPost, adminAudit+"/checkpoint", struct{}{}, &out)
	return out["seq"], err
}

// ExportAudit writes the audit log since since (zero: all) in format to w;
// the export ends on a fresh checkpoint.
func (c *AdminClient) ExportAudit(ctx context.Context, since time.Time, format string, w io.Writer) error {
	q := url.Values{"format": {format}}
	if !since.IsZero() {
		q.Set("since", since.UTC().Format(time.RFC3339))
	}
	return c.stream(ctx, http.MethodGet, adminAudit+"?"+q.Encode(), w)
}

// AuditHead returns the live head of the audit chain, signed by the audit key.
func (c *AdminClient) AuditHead(ctx context.Context) (cluster.AuditRange, error) {
	var out cluster.AuditRange
	return out, c.get(ctx, adminAudit+"/head", &out)
}

// AuditKey returns the audit key's certificate chain (PEM).
func (c *AdminClient) AuditKey(ctx context.Context) ([]byte, error) {
	var buf bytes.Buffer
	err := c.stream(ctx, http.MethodGet, adminAudit+"/key", &buf)
	return buf.Bytes(), err
}

// IssueAdminCert asks for an admin certificate for csr (DER).
func (c *AdminClient) IssueAdminCert(ctx context.Context, role, name string, csr []byte, validity time.Duration) (AdminCertResponse, error) {
	var out AdminCertResponse
	return out, c.do(ctx, http.MethodPost, adminAdminCerts, AdminCertRequest{Role: role, Name: name, CSR: csr, Validity: Duration{validity}}, &out)
}

// AdminCertificates lists the admin certificates the cluster issued, with
// whether each is revoked.
func (c *AdminClient) AdminCertificates(ctx context.Context) ([]ca.AdminCertificate, error) {
	return allPages(ctx, func(cursor string) ([]ca.AdminCertificate, string, error) {
		var out []ca.AdminCertificate
		next, err := c.getPage(ctx, adminAdminCerts, nil, cursor, cluster.MaxPageLimit, &out)
		return out, next, err
	})
}

// RevokeAdminCert revokes an admin certificate by its hex serial.
func (c *AdminClient) RevokeAdminCert(ctx context.Context, serialHex, actor, reason string) error {
	return c.do(ctx, http.MethodPost, adminAdminCerts+"/"+url.PathEscape(serialHex)+"/revoke", DeviceOp{Actor: actor, Reason: reason}, &struct{}{})
}

// stream copies a non-JSON response body to w.
func (c *AdminClient) stream(ctx context.Context, method, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var p api.Problem
		if json.NewDecoder(resp.Body).Decode(&p) == nil && p.Code != "" {
			return &p
		}
		return fmt.Errorf("admin API: %s", resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
