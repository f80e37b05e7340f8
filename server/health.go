package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Probes on the HTTPS API port (DESIGN.md "Probes and metrics"), for load
// balancers and orchestrators, unauthenticated:
//   - GET /healthz: the process serves HTTP; always 200.
//   - GET /readyz: 200 when every check below passes, else 503 (rqlite's
//     /readyz; Vault's sys/health answers 503 too when it cannot serve).
//     ?noleader skips the leader check, as rqlite's does.
//
// Both read memory only: no Raft write, no round trip to the leader, no
// disk; the one chain verification is cached per certificate, and the one
// signature is the node's own certificates' reissue when due (certSource).
// So they are exempt from the admission rate limit (an L7 load balancer's
// probes share its address with the device traffic it forwards, and must
// not be refused 429 because of it), and cost a flood no more than a 404
// would.
//
// Non-guarantees: readiness is this node's own view. A follower that is
// ready may still answer a write with 503 when its leader fails meanwhile,
// and "peers accept its certificate" is judged from what this node can
// see (its certificates, refusals of its Raft handshakes, contact from
// its leader), not by asking the peers.
const (
	pathHealthz = "/healthz"
	pathReadyz  = "/readyz"

	// maxApplyLag is how far the registry may trail the commit index and
	// still be ready. Raft hands committed entries to the FSM in batches
	// of up to MaxAppendEntries (64 by default), so a healthy node trails
	// by up to one batch while applying it; entries that never reach the
	// FSM (the no-op of each election, membership changes) also keep it a
	// few behind. Two batches separate that from a node catching up after
	// downtime or installing a snapshot, which trails by thousands.
	maxApplyLag = 128
	// maxLeaderSilence: a follower that has not heard from its leader
	// for this long (ten default heartbeat timeouts) is not being
	// replicated to, whatever it still believes about the leader.
	maxLeaderSilence = 10 * time.Second
)

// Readiness checks, the keys of Readiness.Checks.
const (
	CheckLeader      = "leader"      // a Raft leader is known
	CheckApplied     = "applied"     // the registry has applied up to the commit index
	CheckCA          = "ca"          // the CA is loaded and its certificates are valid
	CheckCertificate = "certificate" // peers accept this node's certificates
	CheckStorage     = "storage"     // the node can write its Raft log and registry (disk not full)
)

// Health is the body of GET /healthz.
type Health struct {
	Status string `json:"status"` // "ok"
	NodeID string `json:"node_id"`
}

// Readiness is the body of GET /readyz.
type Readiness struct {
	Ready    bool   `json:"ready"`
	NodeID   string `json:"node_id"`
	LeaderID string `json:"leader_id"` // "" when none is known
	// Checks holds every check that ran, by name (Check* constants).
	Checks map[string]ReadyCheck `json:"checks"`
}

// ReadyCheck is one readiness check: OK, or the reasons it failed.
type ReadyCheck struct {
	OK      bool     `json:"ok"`
	Reasons []string `json:"reasons,omitempty"`
}

// healthState is what the probes keep between calls.
type healthState struct {
	mu       sync.Mutex
	verified *tls.Certificate // the node certificate whose chain was last verified
	chainErr error            // and the result
	// progress, when set (tests), changes what readiness sees of Raft:
	// the one condition a test cannot produce for real on demand is a
	// registry trailing its commit index.
	progress func(*cluster.Progress)
}

func (a *Appliance) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, Health{Status: "ok", NodeID: a.cfg.NodeID})
}

func (a *Appliance) readyz(w http.ResponseWriter, r *http.Request) {
	_, noLeader := r.URL.Query()["noleader"]
	rd := a.Readiness(!noLeader)
	status := http.StatusOK
	if !rd.Ready {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, rd)
}

// Readiness runs the readiness checks (see /readyz); withLeader false
// skips the leader check.
//   - leader: the node knows a leader.
//   - applied: the registry's applied index trails the commit index this
//     node learned by at most maxApplyLag entries, the registry is not
//     halted, and a rebuilt node has caught up with its leader.
//   - storage: the node can write its Raft log and registry (a full disk
//     refuses writes with storage_full until space returns).
//   - ca: the CA is open and its root and intermediate certificates are
//     within their validity at the node's clock.
//   - certificate: peers accept this node's certificates: its node
//     certificate (Raft and cluster RPC) and HTTPS server certificate are
//     within their validity, the node certificate chains to the cluster
//     root and names this node (what every peer's verifyNode checks), no
//     Raft peer refused its TLS handshake in the last minute, and, as a
//     follower, it heard from its leader within maxLeaderSilence (a leader
//     that refused its certificate would not replicate to it).
//
// Revocation is not a check: peers do not consult it for node certificates
// (which live a week and are reissued in memory).
func (a *Appliance) Readiness(withLeader bool) Readiness {
	p := a.node.Progress()
	a.health.mu.Lock()
	hook := a.health.progress
	a.health.mu.Unlock()
	if hook != nil {
		hook(&p)
	}
	now := a.enroller.now()
	rd := Readiness{NodeID: a.cfg.NodeID, LeaderID: p.LeaderID, Checks: map[string]ReadyCheck{}}
	add := func(name string, reasons []string) {
		rd.Checks[name] = ReadyCheck{OK: len(reasons) == 0, Reasons: reasons}
	}
	if withLeader {
		var why []string
		if p.LeaderID == "" {
			why = append(why, "no Raft leader known (this node is "+p.State+")")
		}
		add(CheckLeader, why)
	}
	var why []string
	if p.Commit > p.Applied && p.Commit-p.Applied > maxApplyLag {
		why = append(why, fmt.Sprintf("the registry applied index %d trails the commit index %d by %d entries (at most %d)", p.Applied, p.Commit, p.Commit-p.Applied, maxApplyLag))
	}
	if h := a.node.Halted(); h != nil {
		why = append(why, h.String())
	}
	select {
	case <-a.node.CaughtUp():
	default:
		why = append(why, "rebuilt node catching up with its leader (no vote until it has)")
	}
	add(CheckApplied, why)

	why = nil
	if p.Storage != "" {
		why = append(why, p.Storage)
	}
	add(CheckStorage, why)

	why = nil
	if a.ca == nil {
		why = append(why, "the CA is not loaded")
	} else {
		why = appendValidity(why, "CA root", a.ca.Root(), now)
		for _, c := range a.ca.Intermediates() {
			why = appendValidity(why, "CA intermediate", c, now)
		}
	}
	add(CheckCA, why)

	why = nil
	// get, not a cached look: on a node with no peers nothing else asks
	// for its node certificate, and get reissues it when it is due.
	node, _ := a.nodeCert.get(nil)
	server, _ := a.serverCert.get(nil)
	why = appendValidity(why, "node certificate", leafOf(node), now)
	why = appendValidity(why, "HTTPS server certificate", leafOf(server), now)
	if node != nil {
		if err := a.verifyOwnNodeCert(node); err != nil {
			why = append(why, "peers refuse the node certificate: "+err.Error())
		}
	}
	why = append(why, p.PeerRefusals...)
	// Raft stamps contact with the wall clock, not the node's (WithClock).
	if p.State == "Follower" && p.LeaderID != "" && time.Since(p.LastContact) > maxLeaderSilence {
		why = append(why, fmt.Sprintf("no contact from leader %s since %s", p.LeaderID, p.LastContact.UTC().Format(time.RFC3339)))
	}
	add(CheckCertificate, why)

	rd.Ready = true
	for _, c := range rd.Checks {
		rd.Ready = rd.Ready && c.OK
	}
	return rd
}

func leafOf(c *tls.Certificate) *x509.Certificate {
	if c == nil {
		return nil
	}
	return c.Leaf
}

func appendValidity(why []string, what string, c *x509.Certificate, now time.Time) []string {
	switch {
	case c == nil:
		return append(why, what+": none")
	case now.Before(c.NotBefore):
		return append(why, fmt.Sprintf("%s (serial %s) is not valid before %s", what, c.SerialNumber.Text(16), c.NotBefore.UTC().Format(time.RFC3339)))
	case now.After(c.NotAfter):
		return append(why, fmt.Sprintf("%s (serial %s) expired at %s", what, c.SerialNumber.Text(16), c.NotAfter.UTC().Format(time.RFC3339)))
	}
	return why
}

// verifyOwnNodeCert checks this node's certificate the way its peers do
// (verifyNode), and that it names this node; once per certificate.
func (a *Appliance) verifyOwnNodeCert(c *tls.Certificate) error {
	h := &a.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.verified == c {
		return h.chainErr
	}
	chain := make([]*x509.Certificate, 0, len(c.Certificate))
	var err error
	for _, der := range c.Certificate {
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(der); err != nil {
			break
		}
		chain = append(chain, cert)
	}
	if err == nil {
		var id string
		if id, err = a.verifyNode(chain); err == nil && id != a.cfg.NodeID {
			err = fmt.Errorf("it names node %q, not %q", id, a.cfg.NodeID)
		}
	}
	h.verified, h.chainErr = c, err
	return err
}
