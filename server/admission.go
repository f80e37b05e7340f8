package server

import (
	"context"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Admission control: what an unauthenticated client can make a node do.
// See DESIGN.md "Admission control".
//
// Guarantees: a client address without a client certificate gets at most
// RateBurst requests at once and RateLimit per second after that, on every
// route of the HTTPS port; a refusal before the client proved TPM
// possession writes nothing to Raft but a per-node summary, at most one per
// RefusalSummaryEvery. Non-guarantees: the limit is per node and per
// address (many addresses, or many nodes, multiply it); requests that carry
// an unrevoked certificate from this CA are not limited here (they are
// authenticated by their handler).

// clientLimiter keeps one token bucket per client address.
type clientLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	clients map[string]*clientBucket
	swept   time.Time
}

type clientBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

const (
	// maxTrackedClients bounds the limiter's memory; past it, idle buckets
	// are dropped, and if none are idle new addresses share one bucket.
	maxTrackedClients = 1 << 16
	clientIdle        = 10 * time.Minute
	overflowClient    = "*"
)

func newClientLimiter(perSecond float64, burst int) *clientLimiter {
	return &clientLimiter{limit: rate.Limit(perSecond), burst: burst, clients: map[string]*clientBucket{}}
}

// allow takes a token for client, or says how long until one is free.
func (l *clientLimiter) allow(client string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	b := l.clients[client]
	if b == nil {
		if len(l.clients) >= maxTrackedClients && now.Sub(l.swept) > time.Second {
			l.swept = now
			for k, c := range l.clients {
				if now.Sub(c.seen) > clientIdle {
					delete(l.clients, k)
				}
			}
		}
		if len(l.clients) >= maxTrackedClients {
			client = overflowClient
			b = l.clients[client]
		}
		if b == nil {
			b = &clientBucket{lim: rate.NewLimiter(l.limit, l.burst)}
			l.clients[client] = b
		}
	}
	b.seen = now
	l.mu.Unlock()
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// admit rate-limits every request that did not authenticate with a client
// certificate from this CA: enrollment, the CRL, joins, metrics, and
// refusals of authenticated routes alike.
func (a *Appliance) admit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A revoked or expired certificate authenticates no one: its
		// holder is limited like any client (a local read; handlers still
		// judge revocation linearizably).
		if leaf := verifiedLeaf(r, time.Now()); leaf != nil {
			if revoked, err := a.ca.IsRevoked(leaf.SerialNumber); err == nil && !revoked {
				next.ServeHTTP(w, r)
				return
			}
		}
		host := clientKey(r.RemoteAddr)
		ok, wait := a.admission.allow(host, time.Now())
		if ok {
			next.ServeHTTP(w, r)
			return
		}
		a.countUnrecorded(limitedStage(r.URL.Path), api.CodeRateLimited)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeProblem(w, newProblem(http.StatusTooManyRequests, api.CodeRateLimited, "too many requests from "+host+"; retry later"))
	})
}

// limitedStage names a rate-limited request by route for counting: a
// fixed set, so that an attacker's paths neither grow the summary nor the
// metric's label set.
func limitedStage(path string) string {
	switch path {
	case api.PathChallenge:
		return stageChallenge
	case api.PathComplete:
		return stageComplete
	case api.PathRenewChallenge, api.PathRenew:
		return stageRenew
	case pathClusterJoin:
		return stageJoin
	case api.PathCRL:
		return "crl"
	case api.PathAttestationAttest:
		return stageAKChallenge
	case api.PathAttestationSecret:
		return stageAKCertificate
	}
	if strings.HasPrefix(path, acme.Prefix+"/") || path == acme.PathProvisioners {
		return stageACME
	}
	if strings.HasPrefix(path, "/admin/") {
		return stageAdmin
	}
	return "other"
}

// countUnrecorded counts a refusal that gets no audit entry of its own.
func (a *Appliance) countUnrecorded(stage, code string) {
	a.enroller.unproven.add(stage, code)
	a.enroller.metrics.unrecorded.WithLabelValues(stage, code).Inc()
}

// countJoinRefusal counts a refused join like an unrecorded refusal.
func (a *Appliance) countJoinRefusal(code string) { a.countUnrecorded(stageJoin, code) }

// Stages of refusals outside enrollment, in summaries and metrics.
const (
	stageJoin  = "join"
	stageAdmin = "admin"
	stageTLS   = "tls"
	// codeTLSRefused: a client certificate that did not verify (no HTTP
	// answer is sent; the code names the refusal in counts only).
	codeTLSRefused = "certificate_refused"
)

// clientKey is the bucket a remote address draws from: its IPv4 address,
// or its IPv6 /64 (one subscriber's usual allocation, which an attacker
// could otherwise spread over 2^64 buckets). Forwarding headers are the
// client's to forge and are not read.
func clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.To4() != nil {
		return host
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// possession says whether rec comes from a client that proved it holds the
// TPM, and so is committed, and whether its raw evidence may be stored. An
// enrollment proves it by credential activation (until then anyone with a
// copy of a public EK certificate can play along). A renewal comes from an
// authenticated device, but only a refusal that judged its evidence (the
// AK check onwards) is committed: those quarantine the device, so they are
// bounded; a bad, expired or replayed token or a malformed body would let
// one device certificate write without end, so they are counted like
// unproven ones. Raw evidence is kept once the enrolled AK is shown.
func possession(rec cluster.AttestationRecord) (proven, keepRaw bool) {
	switch rec.Stage {
	case stageChallenge:
		return false, false
	case stageComplete, stageAKCertificate:
		ok, _ := check(rec.Checks, attest.CheckActivation)
		return ok, ok
	case stageAKChallenge:
		return false, false
	default:
		ok, judged := check(rec.Checks, attest.CheckAK)
		return judged, ok
	}
}

// check reports whether the named check passed, and whether it ran.
func check(checks []cluster.Check, name string) (passed, ran bool) {
	for _, c := range checks {
		if c.Name == name {
			return c.Passed, true
		}
	}
	return false, false
}

// maxStoredBlob bounds each compressed blob (raw evidence, event log) a
// record keeps. A bigger one is dropped; its digest stays in the record.
const maxStoredBlob = 256 << 10

func bounded(gz []byte) []byte {
	if len(gz) > maxStoredBlob {
		return nil
	}
	return gz
}

// refusalCounts are the refusals a node did not record one by one, by
// stage and code, since the last summary.
type refusalCounts struct {
	now    func() time.Time
	mu     sync.Mutex
	since  time.Time
	counts map[string]uint64
}

func newRefusalCounts(now func() time.Time) *refusalCounts {
	return &refusalCounts{now: now, since: now(), counts: map[string]uint64{}}
}

func (c *refusalCounts) add(stage, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts[stage+" "+code]++
}

// take returns the counts and resets them.
func (c *refusalCounts) take() (since time.Time, counts map[string]uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	since, counts = c.since, c.counts
	c.since, c.counts = c.now(), map[string]uint64{}
	return since, counts
}

// putBack returns counts a failed summary could not commit.
func (c *refusalCounts) putBack(since time.Time, counts map[string]uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.since = since
	for k, n := range counts {
		c.counts[k] += n
	}
}

// RefusalSummary is the Detail of an admission.refused audit entry: the
// refusals one node answered without a record, keyed "stage code".
type RefusalSummary struct {
	Node   string            `json:"node"`
	Since  time.Time         `json:"since"`
	Until  time.Time         `json:"until"`
	Total  uint64            `json:"total"`
	Counts map[string]uint64 `json:"counts"`
}

// SummarizeRefusals commits one admission.refused audit entry with the
// refusals counted since the last one, if there were any.
func (a *Appliance) SummarizeRefusals(ctx context.Context) error {
	since, counts := a.enroller.unproven.take()
	if len(counts) == 0 {
		return nil
	}
	s := RefusalSummary{Node: a.cfg.NodeID, Since: since.UTC(), Until: a.enroller.now().UTC(), Counts: counts}
	for _, n := range counts {
		s.Total += n
	}
	if err := a.node.AppendAudit(ctx, cluster.AuditAdmissionRefused, "node:"+a.cfg.NodeID, "", s); err != nil {
		a.enroller.unproven.putBack(since, counts)
		return err
	}
	return nil
}

// refusalSummaryLoop audits the uncounted refusals every interval: the
// number of audit entries is bounded by time, not by an attacker's traffic.
func (a *Appliance) refusalSummaryLoop(every time.Duration) {
	a.periodically(every, func(ctx context.Context) {
		if err := a.SummarizeRefusals(ctx); err != nil {
			a.log.Warn("refusal summary not committed; kept for the next one", "err", err)
		}
	})
}

// CompactRetention removes refused records and raw evidence past the
// cluster's retention settings (leader only; the leader loop runs it), repeating
// while a command hit the per-command bound.
func (a *Appliance) CompactRetention(ctx context.Context) (removed int, err error) {
	s := a.conf.view().settings // replicated: every leader keeps the same
	for range 100 {
		n, more, err := a.node.Compact(ctx, "node:"+a.cfg.NodeID, s.RetainRefused.Duration, s.RetainRawEvidence.Duration)
		removed += n
		if err != nil || !more {
			return removed, err
		}
	}
	return removed, nil
}

// crlCache holds the signed CRL until the registry's step-ca tables change
// (a revocation replicates as such a change) or a minute passes, so serving
// /crl costs neither a leader round trip nor a signature per request.
type crlCache struct {
	mu      sync.Mutex
	gen     uint64
	der     []byte
	refresh time.Time
}

const crlRefresh = time.Minute

func (a *Appliance) cachedCRL(now time.Time) ([]byte, error) {
	gen := a.node.KVGeneration()
	c := &a.crlCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.der != nil && c.gen == gen && now.Before(c.refresh) {
		return c.der, nil
	}
	der, err := a.ca.CRL(now)
	if err != nil {
		return nil, err
	}
	c.gen, c.der, c.refresh = gen, der, now.Add(crlRefresh)
	return der, nil
}
