package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The admin API is served on a unix socket inside the data directory (mode
// 0600, directory 0700), where the appliance's OS user is an operator, and
// on the HTTPS port to admin certificates with a role (roles.go).
//
// Reads are linearizable unless ?stale=true: the node confirms with the
// leader how far the log has committed and waits to apply that far.
const (
	adminDevices     = "/admin/v1/devices"
	adminAttestation = "/admin/v1/attestations"
	adminStatus      = "/admin/v1/status"
	adminTokens      = "/admin/v1/cluster/tokens"
	adminMembers     = "/admin/v1/cluster/members"
	adminTransfer    = "/admin/v1/cluster/transfer-leadership"
	adminBackup      = "/admin/v1/cluster/backup"
	adminRestore     = "/admin/v1/cluster/restore"
	adminGroups      = "/admin/v1/groups"
	adminAudit       = "/admin/v1/audit"
	adminAdminCerts  = "/admin/v1/admin-certs"
	adminEnrollments = "/admin/v1/enrollments"
	adminImport      = adminEnrollments + "/import"
	adminPolicy      = "/admin/v1/policy"
)

// DeviceOp is the body of POST /admin/v1/devices/{id}/{op}.
type DeviceOp struct {
	Actor  string `json:"actor"`
	Reason string `json:"reason"`
}

// PolicyApply is the body of PUT /admin/v1/policy.
type PolicyApply struct {
	Actor    string          `json:"actor"`
	Document json.RawMessage `json:"document"`
}

// Status is what GET /admin/v1/status returns.
type Status struct {
	NodeID      string `json:"node_id"`
	Leader      bool   `json:"leader"`
	LeaderID    string `json:"leader_id"`
	TrustDomain string `json:"trust_domain"`
	DeviceAPI   string `json:"device_api"` // for clients: the first host name and the listen port (admin.json's server)
	RaftAddr    string `json:"raft_addr"`
	StateHash   string `json:"state_hash,omitempty"` // left out with ?state_hash=false
	// CertificatesIssued counts device certificates this node issued since it started.
	CertificatesIssued uint64 `json:"certificates_issued"`
	// Healthy is false when Problems is not empty: the node cannot take
	// part in its cluster (see cluster.Node.Problems).
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems,omitempty"`
	// FeatureVersion is the cluster's committed feature version in this
	// node's replica; BuildFeatureVersion the highest this build applies.
	// Halted is set when the registry stopped at an entry the build does
	// not understand (cluster.Node.Halted).
	FeatureVersion      int           `json:"feature_version"`
	BuildFeatureVersion int           `json:"build_feature_version"`
	Halted              *cluster.Halt `json:"halted,omitempty"`
	// Version is this node's build; Nodes every member with the build it
	// reports (asked live, so a member that is down shows an error).
	Version api.BuildInfo `json:"version"`
	Nodes   []NodeStatus  `json:"nodes"`
}

type tokenRequest struct {
	TTL Duration `json:"ttl"`
}

type tokenResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

func (a *Appliance) serveAdmin() error {
	path := filepath.Join(a.dataDir, adminSocket)
	_ = os.Remove(path) // a stale socket from a previous run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	a.adminLn = ln
	a.adminSrv = &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := a.adminSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin API stopped", "err", err)
		}
	}()
	return nil
}

// read wraps a read handler: linearizable unless the caller asked for stale.
func (a *Appliance) read(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("stale") != "true" {
			if err := a.node.Linearize(r.Context()); err != nil {
				writeProblem(w, a.clusterProblem(err))
				return
			}
		}
		h(w, r)
	}
}

// adminHandler is the admin API on the unix socket: whoever can reach the
// socket (the appliance's OS user) is an operator.
func (a *Appliance) adminHandler() http.Handler {
	mux := http.NewServeMux()
	a.registerAdmin(func(role, pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, adminBody(pattern, h)) })
	return a.logRequests(listenerSocket, mux, mux)
}

// adminBody checks an admin request body's media type: a backup archive
// for restore, JSON everywhere else.
func adminBody(pattern string, h http.HandlerFunc) http.HandlerFunc {
	if pattern == "POST "+adminRestore {
		return requireMediaType(mediaTypeTar, h)
	}
	return requireJSON(h)
}

const mediaTypeTar = "application/x-tar"

// registerAdmin hands every admin route, with the least role that may call
// it, to add.
func (a *Appliance) registerAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	add(ca.RoleAuditor, "GET "+adminStatus, func(w http.ResponseWriter, r *http.Request) {
		// The state hash reads the whole registry (~0.3 s at 100,000
		// devices): ?state_hash=false leaves it out, for pages that poll.
		var h string
		var err error
		if r.URL.Query().Get("state_hash") != "false" {
			h, err = a.node.StateHash()
		}
		problems := a.node.Problems()
		nodes, nerr := a.nodeStatuses(r.Context())
		if nerr != nil {
			a.log.Warn("status: cannot list members", "err", nerr)
		}
		writeResult(w, http.StatusOK, Status{
			NodeID: a.cfg.NodeID, Leader: a.node.IsLeader(), LeaderID: a.node.LeaderID(), TrustDomain: a.cfg.TrustDomain,
			DeviceAPI: "https://" + a.publicAddr(), RaftAddr: a.node.RaftAddr(), StateHash: h, CertificatesIssued: a.CertificatesIssued(),
			Healthy: len(problems) == 0, Problems: problems, Version: buildInfo, Nodes: nodes,
			FeatureVersion: a.node.FeatureVersion(), BuildFeatureVersion: a.buildFeature(), Halted: a.node.Halted(),
		}, a.adminErr(err))
	})
	add(ca.RoleAuditor, "GET "+adminDevices, a.read(func(w http.ResponseWriter, r *http.Request) {
		q, err := deviceQuery(r)
		if err != nil {
			writeProblem(w, err)
			return
		}
		devs, next, err := a.node.QueryDevices(q)
		writePage(w, r, devs, next, a.queryErr(err))
	}))
	add(ca.RoleOperator, "POST "+adminDevices+"/{id}/{op}", func(w http.ResponseWriter, r *http.Request) {
		var req DeviceOp
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			writeProblem(w, malformed("body: "+err.Error()))
			return
		}
		who := actor(r, req.Actor)
		var dev cluster.Device
		var err error
		if r.PathValue("op") == cluster.OpRevoke {
			dev, err = a.RevokeDevice(r.Context(), r.PathValue("id"), who, req.Reason)
		} else {
			dev, err = a.node.TransitionDevice(r.Context(), r.PathValue("id"), r.PathValue("op"), who, req.Reason)
			if err == nil && r.PathValue("op") == cluster.OpDelete {
				// Deleted is final: its certificates go on the CRL too
				// (the leader's SweepRevocations completes an interrupted run).
				if _, rerr := a.revokeSerials(r.Context(), dev.ID, req.Reason); rerr != nil {
					err = fmt.Errorf("device %s is deleted, but not yet all its certificates are revoked (the leader completes it): %w", dev.ID, rerr)
				}
			}
		}
		if err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		a.log.Info("device state changed", "device_id", dev.ID, "op", r.PathValue("op"), "state", dev.Status, "actor", who)
		writeJSON(w, http.StatusOK, dev)
	})
	add(ca.RoleAuditor, "GET "+adminDevices+"/{id}", a.read(func(w http.ResponseWriter, r *http.Request) {
		dev, err := a.DeviceDetail(r.PathValue("id"))
		writeResult(w, http.StatusOK, dev, a.adminErr(err))
	}))
	add(ca.RoleAuditor, "GET "+adminAttestation, a.read(func(w http.ResponseWriter, r *http.Request) {
		q, err := attestationFilter(r)
		if err != nil {
			writeProblem(w, err)
			return
		}
		recs, next, err := a.node.QueryAttestations(q)
		writePage(w, r, recs, next, a.queryErr(err))
	}))
	add(ca.RoleAuditor, "GET "+adminAttestation+"/{id}", a.read(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			writeProblem(w, malformed("attestation IDs are positive integers"))
			return
		}
		rec, err := a.node.Attestation(id)
		writeResult(w, http.StatusOK, rec, a.adminErr(err))
	}))
	add(ca.RoleOperator, "PUT "+adminPolicy, func(w http.ResponseWriter, r *http.Request) {
		var req PolicyApply
		if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&req); err != nil {
			writeProblem(w, malformed("body: "+err.Error()))
			return
		}
		rec, err := a.ApplyPolicy(r.Context(), actor(r, req.Actor), req.Document)
		writeResult(w, http.StatusOK, rec, err)
	})
	add(ca.RoleAuditor, "GET "+adminPolicy, a.read(func(w http.ResponseWriter, r *http.Request) {
		v := 0
		if s := r.URL.Query().Get("version"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				writeProblem(w, malformed("version must be a positive integer"))
				return
			}
			v = n
		}
		rec, err := a.node.Policy(v)
		writeResult(w, http.StatusOK, rec, a.adminErr(err))
	}))
	add(ca.RoleAuditor, "GET "+adminPolicy+"/history", a.read(func(w http.ResponseWriter, r *http.Request) {
		cursor, limit, err := pageParams(r)
		if err != nil {
			writeProblem(w, err)
			return
		}
		recs, next, err := a.node.PolicyHistoryPage(cursor, limit)
		writePage(w, r, recs, next, a.queryErr(err))
	}))
	add(ca.RoleAuditor, "POST "+adminPolicy+"/test", a.read(func(w http.ResponseWriter, r *http.Request) {
		doc, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
		if err != nil {
			writeProblem(w, malformed(err.Error()))
			return
		}
		p, err := attest.ParsePolicy(doc)
		if err != nil {
			writeProblem(w, problemFor(err))
			return
		}
		res, err := DryRun(a.node, p)
		writeResult(w, http.StatusOK, res, a.adminErr(err))
	}))
	add(ca.RoleOperator, "GET "+adminPolicy+"/capture", a.read(func(w http.ResponseWriter, r *http.Request) {
		p, err := CapturePolicy(a.node, r.URL.Query().Get("device"), r.URL.Query().Get("group"))
		if err != nil {
			writeProblem(w, a.adminErr(err))
			return
		}
		doc, err := marshalPolicy(p)
		writeResult(w, http.StatusOK, json.RawMessage(doc), a.adminErr(err))
	}))
	add(ca.RoleOperator, "POST "+adminTokens, func(w http.ResponseWriter, r *http.Request) {
		var req tokenRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.TTL.Duration <= 0 {
			writeProblem(w, malformed("want {\"ttl\": \"15m\"} with a positive duration"))
			return
		}
		tok, err := a.CreateJoinToken(r.Context(), req.TTL.Duration)
		if err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		writeJSON(w, http.StatusOK, tokenResponse{Token: tok.String(), Expires: tok.Expires})
	})
	add(ca.RoleOperator, "GET "+adminMembers, func(w http.ResponseWriter, r *http.Request) {
		ms, err := a.node.Members()
		writeResult(w, http.StatusOK, ms, a.adminErr(err))
	})
	add(ca.RoleOperator, "DELETE "+adminMembers+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		err := a.leaderOp(r.Context(), leaderOp{Op: "remove", NodeID: r.PathValue("id"), Actor: actor(r, "")})
		writeResult(w, http.StatusOK, struct{}{}, err)
	})
	add(ca.RoleOperator, "POST "+adminTransfer, func(w http.ResponseWriter, r *http.Request) {
		err := a.leaderOp(r.Context(), leaderOp{Op: "transfer-leadership", Actor: actor(r, "")})
		writeResult(w, http.StatusOK, struct{}{}, err)
	})
	add(ca.RoleOperator, "GET "+adminBackup, func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer // whole, so a failure is a clean error rather than a cut archive
		meta, err := a.WriteBackup(r.Context(), &buf)
		if err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		w.Header().Set("Content-Type", mediaTypeTar)
		w.Header().Set("Gatehouse-Raft-Index", strconv.FormatUint(meta.RaftIndex, 10))
		w.Write(buf.Bytes())
	})
	add(ca.RoleOperator, "POST "+adminRestore, func(w http.ResponseWriter, r *http.Request) {
		b, err := ReadBackup(r.Body)
		if err != nil {
			writeProblem(w, newProblem(http.StatusBadRequest, api.CodeBackupInvalid, err.Error()))
			return
		}
		if !a.node.IsLeader() {
			writeProblem(w, newProblem(http.StatusConflict, api.CodeUnavailable, "restore on the leader ("+a.node.LeaderID()+")"))
			return
		}
		if err := a.RestoreBackup(r.Context(), b); errors.Is(err, ErrBadBackup) {
			writeProblem(w, newProblem(http.StatusConflict, api.CodeBackupInvalid, err.Error()))
			return
		} else if err != nil {
			writeProblem(w, a.clusterProblem(err))
			return
		}
		a.log.Info("registry restored from backup", "backup_node", b.Meta.NodeID, "backup_created", b.Meta.Created)
		// The restored state carries the backup's audit chain; say so on it.
		if err := a.node.AppendAudit(r.Context(), cluster.AuditRegistryRestore, actor(r, ""), b.Meta.NodeID, b.Meta); err != nil {
			a.log.Warn("could not audit the restore", "err", err)
		}
		writeJSON(w, http.StatusOK, b.Meta)
	})
	a.registerRegistryAdmin(add)
	a.registerEKRootsAdmin(add)
	a.registerSettingsAdmin(add)
	a.registerFleetAdmin(add)
}

// leaderOp is a membership operation only the leader can carry out; a
// follower forwards it.
type leaderOp struct {
	Op     string `json:"op"`
	NodeID string `json:"node_id,omitempty"`
	Actor  string `json:"actor,omitempty"`
}

func orLocal(s string) string {
	if s == "" {
		return "local"
	}
	return s
}

func (a *Appliance) leaderOp(ctx context.Context, op leaderOp) error {
	if !a.node.IsLeader() {
		leader := a.node.LeaderID()
		if leader == "" {
			return newProblem(http.StatusServiceUnavailable, api.CodeUnavailable, "no leader")
		}
		addr, err := forwarder{a}.leaderAPI(leader)
		if err != nil {
			return a.clusterProblem(err)
		}
		body, _ := json.Marshal(op)
		if err := a.nodeRPC(ctx, addr, pathClusterOp, bytes.NewReader(body), &struct{}{}); err != nil {
			return a.clusterProblem(err)
		}
		return nil
	}
	var err error
	switch op.Op {
	case "remove":
		if op.NodeID == a.cfg.NodeID {
			return newProblem(http.StatusConflict, api.CodeMalformed, "the leader cannot remove itself: transfer leadership first")
		}
		err = a.node.RemoveServer(op.NodeID)
	case "transfer-leadership":
		err = a.node.TransferLeadership()
	default:
		return malformed("unknown operation " + op.Op)
	}
	if err != nil {
		return a.clusterProblem(err)
	}
	a.log.Info("membership changed", "op", op.Op, "node_id", op.NodeID)
	typ := cluster.AuditMemberRemoved
	if op.Op == "transfer-leadership" {
		typ = cluster.AuditLeaderTransfer
	}
	if err := a.node.AppendAudit(ctx, typ, orLocal(op.Actor), op.NodeID, nil); err != nil {
		a.log.Warn("could not audit a membership change", "err", err)
	}
	return nil
}

// queryErr maps a list query's error: a bad cursor or filter is the
// client's (400 malformed_request); anything else is logged as internal.
func (a *Appliance) queryErr(err error) error {
	if err == nil {
		return nil
	}
	return a.clusterProblem(err)
}

func (a *Appliance) adminErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrNotFound):
		return newProblem(http.StatusNotFound, api.CodeNotFound, err.Error())
	default:
		return a.enroller.internal(err)
	}
}

// AdminClient talks to a node's admin API: its unix socket (NewAdminClient)
// or, from anywhere, HTTPS with an admin certificate (NewRemoteAdminClient).
type AdminClient struct {
	hc   *http.Client
	base string
	// StaleReads serves reads from the node's local state without asking
	// the leader: faster, and available without a quorum, but possibly behind.
	StaleReads bool
	// Retry bounds the retries of idempotent requests (enrollment import
	// batches); nil means DefaultRetry.
	Retry *RetryPolicy
}

// NewAdminClient returns a client for the node whose data directory is dataDir.
func NewAdminClient(dataDir string) *AdminClient {
	sock := filepath.Join(dataDir, adminSocket)
	return &AdminClient{base: "http://gatehouse", hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: api.WrapTransport(&http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, fmt.Errorf("admin socket %s (is gatehouse serve running?): %w", sock, err)
			}
			return c, nil
		}}),
	}}
}

// NewRemoteAdminClient returns a client for the admin API at server
// (https://host:port), authenticating with an admin certificate issued by
// `gatehouse admin issue-cert` and trusting only root for the server.
func NewRemoteAdminClient(server string, cert tls.Certificate, root *x509.Certificate) *AdminClient {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &AdminClient{base: strings.TrimRight(server, "/"), hc: &http.Client{
		Timeout: 60 * time.Second,
		Transport: api.WrapTransport(&http.Transport{TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert},
		}}),
	}}
}

// Status returns the node's status.
func (c *AdminClient) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.get(ctx, adminStatus, &s)
}

// StatusBrief is Status without the state hash, which hashes the whole
// registry: for pages that poll.
func (c *AdminClient) StatusBrief(ctx context.Context) (Status, error) {
	var s Status
	return s, c.get(ctx, adminStatus+"?state_hash=false", &s)
}

// Device returns one device, with the enrollment paths it came through.
func (c *AdminClient) Device(ctx context.Context, id string) (DeviceDetail, error) {
	var d DeviceDetail
	return d, c.get(ctx, adminDevices+"/"+url.PathEscape(id), &d)
}

// Attestations lists attestation records, newest first: the newest limit
// of them (limit <= 0: one page of the server's default size).
func (c *AdminClient) Attestations(ctx context.Context, deviceID string, limit int) ([]cluster.AttestationRecord, error) {
	out := []cluster.AttestationRecord{}
	for cursor := ""; ; {
		recs, next, err := c.AttestationPage(ctx, AttestationFilter{Device: deviceID}, cursor, min(max(limit-len(out), 0), cluster.MaxPageLimit))
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
		if next == "" || limit <= 0 || len(out) >= limit {
			return out, nil
		}
		cursor = next
	}
}

// Attestation returns one attestation record.
func (c *AdminClient) Attestation(ctx context.Context, id uint64) (cluster.AttestationRecord, error) {
	var rec cluster.AttestationRecord
	return rec, c.get(ctx, adminAttestation+"/"+strconv.FormatUint(id, 10), &rec)
}

// CreateJoinToken makes a one-time join token valid for ttl.
func (c *AdminClient) CreateJoinToken(ctx context.Context, ttl time.Duration) (string, time.Time, error) {
	var out tokenResponse
	err := c.do(ctx, http.MethodPost, adminTokens, tokenRequest{TTL: Duration{ttl}}, &out)
	return out.Token, out.Expires, err
}

// Members lists the cluster's members.
func (c *AdminClient) Members(ctx context.Context) ([]cluster.Member, error) {
	var ms []cluster.Member
	return ms, c.get(ctx, adminMembers, &ms)
}

// RemoveMember removes a node from the cluster.
func (c *AdminClient) RemoveMember(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, adminMembers+"/"+url.PathEscape(id), nil, &struct{}{})
}

// TransferLeadership asks the leader to hand leadership to another voter.
func (c *AdminClient) TransferLeadership(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, adminTransfer, struct{}{}, &struct{}{})
}

// Backup writes a backup archive of the cluster to w.
func (c *AdminClient) Backup(ctx context.Context, w io.Writer) error {
	return c.stream(ctx, http.MethodGet, adminBackup, w)
}

// Restore replaces the cluster's registry with a backup's.
func (c *AdminClient) Restore(ctx context.Context, archive io.Reader) (BackupMeta, error) {
	var meta BackupMeta
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+adminRestore, archive)
	if err != nil {
		return meta, err
	}
	req.Header.Set("Content-Type", mediaTypeTar)
	resp, err := c.hc.Do(req)
	if err != nil {
		return meta, err
	}
	return meta, decodeProblemOr(resp, &meta)
}

// Devices lists devices, every page; with state set, only those in it.
func (c *AdminClient) Devices(ctx context.Context, state string) ([]cluster.Device, error) {
	return allPages(ctx, func(cursor string) ([]cluster.Device, string, error) {
		return c.DevicePage(ctx, DeviceFilter{State: state}, cursor, cluster.MaxPageLimit)
	})
}

// TransitionDevice performs a lifecycle operation (approve, disable, …).
func (c *AdminClient) TransitionDevice(ctx context.Context, id, op, actor, reason string) (cluster.Device, error) {
	var dev cluster.Device
	return dev, c.do(ctx, http.MethodPost, adminDevices+"/"+url.PathEscape(id)+"/"+url.PathEscape(op), DeviceOp{Actor: actor, Reason: reason}, &dev)
}

// ApplyPolicy validates and commits a policy document as the next version.
func (c *AdminClient) ApplyPolicy(ctx context.Context, actor string, doc []byte) (cluster.PolicyRecord, error) {
	var rec cluster.PolicyRecord
	return rec, c.do(ctx, http.MethodPut, adminPolicy, PolicyApply{Actor: actor, Document: doc}, &rec)
}

// Policy returns one policy version (0: the one in force).
func (c *AdminClient) Policy(ctx context.Context, version int) (cluster.PolicyRecord, error) {
	var rec cluster.PolicyRecord
	path := adminPolicy
	if version > 0 {
		path += "?version=" + strconv.Itoa(version)
	}
	return rec, c.get(ctx, path, &rec)
}

// PolicyHistory returns every applied version, newest first.
func (c *AdminClient) PolicyHistory(ctx context.Context) ([]cluster.PolicyRecord, error) {
	return allPages(ctx, func(cursor string) ([]cluster.PolicyRecord, string, error) {
		var recs []cluster.PolicyRecord
		next, err := c.getPage(ctx, adminPolicy+"/history", nil, cursor, cluster.MaxPageLimit, &recs)
		return recs, next, err
	})
}

// TestPolicy judges every device's stored evidence under a candidate.
func (c *AdminClient) TestPolicy(ctx context.Context, doc []byte) ([]DryRunResult, error) {
	var res []DryRunResult
	return res, c.do(ctx, http.MethodPost, adminPolicy+"/test", json.RawMessage(doc), &res)
}

// CapturePolicy drafts a policy from a device's accepted evidence.
func (c *AdminClient) CapturePolicy(ctx context.Context, deviceID, group string) (json.RawMessage, error) {
	var doc json.RawMessage
	q := url.Values{"device": {deviceID}, "group": {group}}
	return doc, c.get(ctx, adminPolicy+"/capture?"+q.Encode(), &doc)
}

func (c *AdminClient) get(ctx context.Context, path string, v any) error {
	if c.StaleReads {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "stale=true"
	}
	return c.do(ctx, http.MethodGet, path, nil, v)
}

func (c *AdminClient) do(ctx context.Context, method, path string, in, v any) error {
	_, err := c.doHeader(ctx, method, path, in, v)
	return err
}

// doHeader is do that also returns the response's header (Link, for paging).
func (c *AdminClient) doHeader(ctx context.Context, method, path string, in, v any) (http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var p api.Problem
		if json.Unmarshal(out, &p) == nil && p.Code != "" {
			return resp.Header, &p
		}
		return resp.Header, fmt.Errorf("admin API: %s", resp.Status)
	}
	return resp.Header, json.Unmarshal(out, v)
}
