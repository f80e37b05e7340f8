package server

import (
	"context"
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
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The admin API is served only on a unix socket inside the data directory
// (mode 0600, directory 0700): reaching it requires the appliance's own OS
// user. Remote admin with mTLS roles comes with the lifecycle issue.
const (
	adminDevices     = "/admin/v1/devices"
	adminAttestation = "/admin/v1/attestations"
	adminStatus      = "/admin/v1/status"
)

// Status is what GET /admin/v1/status returns.
type Status struct {
	NodeID      string `json:"node_id"`
	Leader      bool   `json:"leader"`
	TrustDomain string `json:"trust_domain"`
	DeviceAPI   string `json:"device_api"`
	StateHash   string `json:"state_hash"`
	// CertificatesIssued counts device certificates this node issued since it started.
	CertificatesIssued uint64 `json:"certificates_issued"`
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

func (a *Appliance) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+adminStatus, func(w http.ResponseWriter, r *http.Request) {
		h, err := a.node.StateHash()
		writeResult(w, http.StatusOK, Status{
			NodeID: a.cfg.NodeID, Leader: a.node.IsLeader(), TrustDomain: a.cfg.TrustDomain,
			DeviceAPI: "https://" + a.Addr(), StateHash: h, CertificatesIssued: a.CertificatesIssued(),
		}, a.adminErr(err))
	})
	mux.HandleFunc("GET "+adminDevices, func(w http.ResponseWriter, r *http.Request) {
		devs, err := a.node.Devices()
		writeResult(w, http.StatusOK, devs, a.adminErr(err))
	})
	mux.HandleFunc("GET "+adminDevices+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		dev, err := a.node.Device(r.PathValue("id"))
		writeResult(w, http.StatusOK, dev, a.adminErr(err))
	})
	mux.HandleFunc("GET "+adminAttestation, func(w http.ResponseWriter, r *http.Request) {
		q := cluster.AttestationQuery{DeviceID: r.URL.Query().Get("device"), Limit: 100}
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				writeProblem(w, malformed("limit must be a positive integer"))
				return
			}
			q.Limit = n
		}
		recs, err := a.node.Attestations(q)
		writeResult(w, http.StatusOK, recs, a.adminErr(err))
	})
	mux.HandleFunc("GET "+adminAttestation+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			writeProblem(w, malformed("attestation IDs are positive integers"))
			return
		}
		rec, err := a.node.Attestation(id)
		writeResult(w, http.StatusOK, rec, a.adminErr(err))
	})
	return mux
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

// AdminClient talks to a node's admin socket.
type AdminClient struct {
	hc *http.Client
}

// NewAdminClient returns a client for the node whose data directory is dataDir.
func NewAdminClient(dataDir string) *AdminClient {
	sock := filepath.Join(dataDir, adminSocket)
	return &AdminClient{hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, fmt.Errorf("admin socket %s (is gatehouse serve running?): %w", sock, err)
			}
			return c, nil
		}},
	}}
}

// Status returns the node's status.
func (c *AdminClient) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.get(ctx, adminStatus, &s)
}

// Devices lists all devices.
func (c *AdminClient) Devices(ctx context.Context) ([]cluster.Device, error) {
	var d []cluster.Device
	return d, c.get(ctx, adminDevices, &d)
}

// Device returns one device.
func (c *AdminClient) Device(ctx context.Context, id string) (cluster.Device, error) {
	var d cluster.Device
	return d, c.get(ctx, adminDevices+"/"+url.PathEscape(id), &d)
}

// Attestations lists attestation records, newest first.
func (c *AdminClient) Attestations(ctx context.Context, deviceID string, limit int) ([]cluster.AttestationRecord, error) {
	q := url.Values{}
	if deviceID != "" {
		q.Set("device", deviceID)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var recs []cluster.AttestationRecord
	return recs, c.get(ctx, adminAttestation+"?"+q.Encode(), &recs)
}

// Attestation returns one attestation record.
func (c *AdminClient) Attestation(ctx context.Context, id uint64) (cluster.AttestationRecord, error) {
	var rec cluster.AttestationRecord
	return rec, c.get(ctx, adminAttestation+"/"+strconv.FormatUint(id, 10), &rec)
}

func (c *AdminClient) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://gatehouse"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var p api.Problem
		if json.Unmarshal(body, &p) == nil && p.Code != "" {
			return &p
		}
		return fmt.Errorf("admin API: %s", resp.Status)
	}
	return json.Unmarshal(body, v)
}
