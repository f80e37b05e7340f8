package server

import (
	"context"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
		now := time.Now()
		ok, wait := a.admission.allow(host, now)
		if !ok {
			a.countUnrecorded(limitedStage(r.URL.Path), api.CodeRateLimited)
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			writeProblem(w, newProblem(http.StatusTooManyRequests, api.CodeRateLimited, "too many requests from "+host+"; retry later"))
			return
		}
		class := workClass(r.URL.Path)
		if class == workNone {
			next.ServeHTTP(w, r)
			return
		}
		release, wait := a.work.acquire(class, now)
		if release == nil {
			// Before the body is read or any verification runs. The
			// connection is closed: a client told to come back in a minute
			// should not hold a goroutine and TLS buffers here meanwhile.
			a.countUnrecorded(limitedStage(r.URL.Path), api.CodeOverloaded)
			w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
			w.Header().Set("Connection", "close")
			writeProblem(w, newProblem(http.StatusServiceUnavailable, api.CodeOverloaded, "this node is at its limit of enrollments in progress; retry after the time given"))
			return
		}
		defer release()
		next.ServeHTTP(w, r)
	})
}

// DefaultMaxInFlight is Config.MaxInFlight's default: enough enrollments
// in progress at once to keep a node's Raft batches full (a completion
// waits a few hundred milliseconds for its commit), few enough that their
// request bodies and decoded evidence stay within tens of MiB.
const DefaultMaxInFlight = 64

// Work classes of anonymous requests the work gate bounds.
const (
	workNone  = iota
	workStart // a challenge: the start of an enrollment
	workFinish
)

// workClass says which anonymous requests cost verification work: the
// start of an enrollment (or of an attestation CA activation) and its
// completion.
func workClass(path string) int {
	switch path {
	case api.PathChallenge, api.PathAttestationAttest:
		return workStart
	case api.PathComplete, api.PathAttestationSecret:
		return workFinish
	}
	return workNone
}

// workGate bounds a node's anonymous enrollment work in progress and tells
// the clients it sheds when to come back (DESIGN.md "Admission control").
//
// Guarantees: at most limit starts and 2·limit requests in all are in
// progress at once (a completion has room a new start has not, so a device
// that got its challenge is not turned away for newcomers); a shed request
// costs no body read, no verification and no Raft entry. Each shed start is
// given its own return slot: slots are 1/rate apart from the last one
// handed out, rate being the completions the node finished per second when
// it was saturated, so a herd comes back at about the pace the node
// serves it, in the order it was turned away, instead of all at once.
// Non-guarantees: the slots are whole seconds (Retry-After), advice a
// client may ignore (the per-address rate limit still holds), and bounded
// by maxRetryAfter; many addresses can fill the slots ahead of a device.
type workGate struct {
	limit    int64
	inFlight atomic.Int64

	mu        sync.Mutex
	rate      float64   // completions per second when saturated
	bucket    time.Time // start of the current second of counting
	finished  int       // completions finished since bucket
	saturated bool      // something was shed since bucket
	next      time.Time // the latest return slot handed out
}

const (
	minRetryAfter = time.Second
	// maxRetryAfter bounds the slots: past it, clients are told this.
	maxRetryAfter = 5 * time.Minute
)

func newWorkGate(limit int, now time.Time) *workGate {
	// Until it has measured, the gate assumes each request takes a
	// second: optimistic (a completion commits faster), so the first shed
	// devices come back early rather than late.
	return &workGate{limit: int64(limit), rate: float64(limit), bucket: now}
}

// acquire takes a place for a request of class, and returns the function
// that gives it back; or nil and how long the shed client should wait.
func (g *workGate) acquire(class int, now time.Time) (release func(), retryAfter time.Duration) {
	bound := g.limit
	if class == workFinish {
		bound *= 2
	}
	if g.inFlight.Add(1) > bound {
		g.inFlight.Add(-1)
		return nil, g.shed(class, now)
	}
	return func() {
		g.inFlight.Add(-1)
		if class == workFinish {
			g.mu.Lock()
			g.roll(time.Now())
			g.finished++
			g.mu.Unlock()
		}
	}, 0
}

// roll closes the second of counting that ended before now: a saturated
// second measures the rate; an unsaturated one only bounds it from below.
// A saturated second without a finished completion says nothing (the
// first completions of a herd are still on their way, or a commit waits
// out an election): it leaves the estimate, which would otherwise halve
// and push every later slot out.
func (g *workGate) roll(now time.Time) {
	el := now.Sub(g.bucket)
	if el < time.Second {
		return
	}
	perSec := float64(g.finished) / el.Seconds()
	switch {
	case g.saturated && g.finished > 0:
		g.rate = (g.rate + perSec) / 2
	case !g.saturated:
		g.rate = max(g.rate, perSec)
	}
	g.rate = max(g.rate, 1)
	g.bucket, g.finished, g.saturated = now, 0, false
}

// shed hands out a return slot: a start gets the next one, a completion
// (its device is half-way through) the earliest.
func (g *workGate) shed(class int, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.roll(now)
	g.saturated = true
	if class == workFinish {
		return minRetryAfter
	}
	if g.next.Before(now) {
		g.next = now
	}
	g.next = g.next.Add(time.Duration(float64(time.Second) / g.rate))
	if g.next.Sub(now) > maxRetryAfter {
		g.next = now.Add(maxRetryAfter)
	}
	// Whole seconds, rounded up: never sooner than the slot.
	return max(minRetryAfter, (g.next.Sub(now) + time.Second - 1).Truncate(time.Second))
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
