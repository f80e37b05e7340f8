package server

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Which refusals are committed, and with raw evidence: only after the
// client proved TPM possession (activation for enrollment); for a renewal,
// only once its evidence was judged (the AK check, which quarantines on
// failure), with raw evidence once the enrolled AK is shown.
func TestPossession(t *testing.T) {
	ak := cluster.Check{Name: attest.CheckAK, Passed: true}
	badAK := cluster.Check{Name: attest.CheckAK}
	act := cluster.Check{Name: attest.CheckActivation, Passed: true}
	badAct := cluster.Check{Name: attest.CheckActivation}
	for _, tc := range []struct {
		name            string
		rec             cluster.AttestationRecord
		proven, keepRaw bool
	}{
		{"challenge, all passed", cluster.AttestationRecord{Stage: stageChallenge, Checks: []cluster.Check{{Name: attest.CheckEKChain, Passed: true}, ak}}, false, false},
		{"complete, no activation yet", cluster.AttestationRecord{Stage: stageComplete, Checks: []cluster.Check{ak}}, false, false},
		{"complete, activation failed", cluster.AttestationRecord{Stage: stageComplete, Checks: []cluster.Check{ak, badAct}}, false, false},
		{"complete, activation passed", cluster.AttestationRecord{Stage: stageComplete, Checks: []cluster.Check{ak, act, {Name: attest.CheckQuoteNonce}}}, true, true},
		{"renew, foreign AK", cluster.AttestationRecord{Stage: stageRenew, Checks: []cluster.Check{badAK}}, true, false},
		{"renew, token refused before any check", cluster.AttestationRecord{Stage: stageRenew}, false, false},
		{"renew, enrolled AK", cluster.AttestationRecord{Stage: stageRenew, Checks: []cluster.Check{ak, {Name: attest.CheckPCRDigest}}}, true, true},
		// The attestation CA: /attest never, /secret once the secret came back.
		{"ak challenge, all passed", cluster.AttestationRecord{Stage: stageAKChallenge, Checks: []cluster.Check{{Name: attest.CheckEKChain, Passed: true}, ak}}, false, false},
		{"ak certificate, unknown secret", cluster.AttestationRecord{Stage: stageAKCertificate}, false, false},
		{"ak certificate, AK passed but no activation", cluster.AttestationRecord{Stage: stageAKCertificate, Checks: []cluster.Check{ak}}, false, false},
		{"ak certificate, activated", cluster.AttestationRecord{Stage: stageAKCertificate, Checks: []cluster.Check{ak, act}}, true, true},
	} {
		proven, keepRaw := possession(tc.rec)
		if proven != tc.proven || keepRaw != tc.keepRaw {
			t.Errorf("%s: proven %v keepRaw %v, want %v %v", tc.name, proven, keepRaw, tc.proven, tc.keepRaw)
		}
	}
	if bounded(make([]byte, maxStoredBlob+1)) != nil || len(bounded(make([]byte, maxStoredBlob))) != maxStoredBlob {
		t.Error("blobs over maxStoredBlob are kept, or blobs within it dropped")
	}
}

// The per-client limiter: a burst, then a refill at the rate; clients are
// independent; past the tracking bound new clients share one bucket.
func TestClientLimiter(t *testing.T) {
	l := newClientLimiter(2, 3)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.allow("10.0.0.1", now); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, wait := l.allow("10.0.0.1", now)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("past the burst: ok %v, wait %v", ok, wait)
	}
	if ok, _ := l.allow("10.0.0.2", now); !ok {
		t.Fatal("another client was limited")
	}
	if ok, _ := l.allow("10.0.0.1", now.Add(500*time.Millisecond)); !ok {
		t.Fatal("no refill after 1/rate")
	}
	for i := range maxTrackedClients {
		l.allow(string(rune(i))+"x", now)
	}
	if len(l.clients) > maxTrackedClients {
		t.Fatalf("tracking %d clients, bound %d", len(l.clients), maxTrackedClients)
	}
	// One IPv4 address, or one IPv6 /64, is one client.
	if clientKey("192.0.2.7:4433") != "192.0.2.7" || clientKey("[2001:db8:1:2:aa::1]:443") != clientKey("[2001:db8:1:2:bb::9]:1") ||
		clientKey("[2001:db8:1:2::1]:443") == clientKey("[2001:db8:1:3::1]:443") {
		t.Error("client keys: want an IPv4 address or an IPv6 /64 each")
	}
	// Summaries and metric labels name a fixed set of routes.
	if limitedStage("/v1/enroll/challenge") != stageChallenge || limitedStage("/a/path/of/the/attacker's/choosing") != "other" {
		t.Error("rate-limited requests are not named by a fixed set of routes")
	}
}

// After a restore rolls the chain back (a genuine, older backup), the
// checkpoints of the restored chain are new heads: the sink must keep
// them, or whoever holds the CA key could rewrite that stretch with no
// head outside the appliance to contradict it. The same head again is
// written once.
func TestCheckpointSinkKeepsHeadsAfterRollback(t *testing.T) {
	var buf bytes.Buffer
	s := &checkpointSink{w: nopCloser{&buf}}
	head := func(seq uint64, hash string) cluster.AuditRange {
		return cluster.AuditRange{Kind: cluster.RangeCheckpoint, LastSeq: seq, LastHash: hash, Signature: "sig"}
	}
	for _, h := range []cluster.AuditRange{head(10, "a"), head(10, "a"), head(6, "b"), head(8, "c")} {
		if err := s.write(h); err != nil {
			t.Fatal(err)
		}
	}
	heads, err := cluster.ReadAuditHeads(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, h := range heads {
		got = append(got, h.LastSeq)
	}
	if len(got) != 3 || got[0] != 10 || got[1] != 6 || got[2] != 8 {
		t.Fatalf("sink holds heads at seqs %v, want [10 6 8]", got)
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// A 503 tells the device when to come back (overload and elections are
// answered with 429 or 503 plus Retry-After, never a bare refusal), later
// the longer the node has had no leader; a Retry-After already set (the
// rate limiter's) is kept.
func TestUnavailableCarriesRetryAfter(t *testing.T) {
	w := httptest.NewRecorder()
	e := &Enroller{}
	writeProblem(w, e.commitFailed(fmt.Errorf("commit: %w", cluster.ErrNotLeader)))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != unavailableRetryAfter {
		t.Fatalf("no leader: %d Retry-After %q, want 503 with %q", w.Code, w.Header().Get("Retry-After"), unavailableRetryAfter)
	}
	w = httptest.NewRecorder()
	w.Header().Set("Retry-After", "9")
	writeProblem(w, e.commitFailed(cluster.ErrNotLeader))
	if got := w.Header().Get("Retry-After"); got != "9" {
		t.Fatalf("a set Retry-After became %q", got)
	}
	// The longer the node has been without a leader, the later the device
	// is told to come back (it follows Retry-After), up to maxRetryAfter.
	for _, tc := range []struct {
		leaderless time.Duration
		want       string
	}{{0, "2"}, {3 * time.Second, "2"}, {30 * time.Second, "15"}, {10 * time.Minute, "300"}, {5 * time.Hour, "300"}} {
		e.leaderless = func() time.Duration { return tc.leaderless }
		w = httptest.NewRecorder()
		writeProblem(w, e.commitFailed(cluster.ErrNotLeader))
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != tc.want {
			t.Errorf("no leader for %v: %d Retry-After %q, want 503 with %q", tc.leaderless, w.Code, w.Header().Get("Retry-After"), tc.want)
		}
	}
	w = httptest.NewRecorder()
	writeProblem(w, attest.ErrEKUntrusted)
	if w.Code == http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "" {
		t.Fatalf("a refusal: %d with Retry-After %q, want neither", w.Code, w.Header().Get("Retry-After"))
	}
}

// The work gate: at most limit starts and 2·limit requests in all; shed
// starts get return slots 1/rate apart in the order they were shed (the
// rate measured from completions finished while saturated), clamped to
// maxRetryAfter; a shed completion is told the minimum.
func TestWorkGate(t *testing.T) {
	now := time.Unix(1000, 0)
	g := newWorkGate(4, now)
	var held []func()
	for i := range 4 {
		rel, _ := g.acquire(workStart, now)
		if rel == nil {
			t.Fatalf("start %d within the limit shed", i)
		}
		held = append(held, rel)
	}
	var slots []time.Duration
	for range 8 {
		rel, wait := g.acquire(workStart, now)
		if rel != nil {
			t.Fatal("a start past the limit admitted")
		}
		slots = append(slots, wait)
	}
	// Assumed rate before any measurement: limit per second, so 8 shed
	// starts take the next 2 s, in whole seconds rounded up.
	for i, w := range slots {
		if want := time.Duration((i+4)/4) * time.Second; w != want {
			t.Fatalf("shed start %d: Retry-After %v, want %v (slots %v)", i, w, want, slots)
		}
	}
	for i := range 4 {
		rel, _ := g.acquire(workFinish, now)
		if rel == nil {
			t.Fatalf("completion %d within 2·limit shed", i)
		}
		held = append(held, rel)
	}
	if rel, wait := g.acquire(workFinish, now); rel != nil || wait != minRetryAfter {
		t.Fatalf("a completion past 2·limit: admitted %v, Retry-After %v, want shed with %v", rel != nil, wait, minRetryAfter)
	}
	if g.inFlight.Load() != 8 {
		t.Fatalf("%d in flight, want 8", g.inFlight.Load())
	}
	for _, rel := range held {
		rel()
	}
	if g.inFlight.Load() != 0 {
		t.Fatalf("%d in flight after every place was given back", g.inFlight.Load())
	}

	// Measured: a saturated node finishing 2 completions a second hands
	// out slots half a second apart (the estimate halves towards it).
	g = newWorkGate(1, now)
	for sec := 1; sec <= 12; sec++ {
		t0 := now.Add(time.Duration(sec) * time.Second)
		g.roll(t0)
		g.saturated = true
		g.finished = 2
	}
	g.roll(now.Add(13 * time.Second))
	if g.rate < 1.9 || g.rate > 2.1 {
		t.Fatalf("measured rate %.2f/s, want about 2", g.rate)
	}
	// Saturated seconds without a finished completion (a herd's first
	// completions still on their way) leave the estimate alone.
	g2 := newWorkGate(64, now)
	for sec := 1; sec <= 5; sec++ {
		g2.saturated = true
		g2.roll(now.Add(time.Duration(sec) * time.Second))
	}
	if g2.rate != 64 {
		t.Fatalf("after 5 saturated seconds without a completion the rate is %.2f/s, want the assumed 64", g2.rate)
	}
	hold, _ := g.acquire(workStart, now.Add(13*time.Second))
	at := now.Add(13 * time.Second)
	for i := range 20 {
		_, wait := g.acquire(workStart, at)
		want := time.Duration(math.Ceil(float64(i+1)/g.rate)) * time.Second // slot i+1, rounded up
		if d := wait - want; d < -time.Second || d > time.Second {
			t.Fatalf("shed start %d at 2/s: Retry-After %v, want about %v", i, wait, want)
		}
	}
	hold()
	// A flood does not push slots past maxRetryAfter.
	g = newWorkGate(1, now)
	hold, _ = g.acquire(workStart, now)
	var last time.Duration
	for range 2000 {
		_, last = g.acquire(workStart, now)
	}
	if last != maxRetryAfter {
		t.Fatalf("after 2000 shed starts at 1/s: Retry-After %v, want the bound %v", last, maxRetryAfter)
	}
	hold()
}
