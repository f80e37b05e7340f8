package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// Requests without a client certificate are rate-limited per client
// address on every route, with 429, Retry-After and a problem code; a
// device authenticating with its certificate is not.
func TestAdmissionRateLimit(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	app := reopenThrottled(t, e) // 3 at once, then 1 per second
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + app.Addr()
	do := func(method, path string) (*http.Response, api.Problem) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var p api.Problem
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &p)
		return resp, p
	}
	for i := 0; i < 3; i++ {
		if resp, p := do(http.MethodPost, api.PathChallenge); resp.StatusCode != http.StatusBadRequest || p.Code != api.CodeMalformed {
			t.Fatalf("request %d within the burst: %d %s", i, resp.StatusCode, p.Code)
		}
	}
	for _, r := range []struct{ method, path string }{
		{http.MethodPost, api.PathChallenge}, {http.MethodPost, api.PathComplete}, {http.MethodGet, api.PathCRL},
		{http.MethodPost, "/cluster/v1/join"}, {http.MethodGet, "/metrics"},
	} {
		resp, p := do(r.method, r.path)
		if resp.StatusCode != http.StatusTooManyRequests || p.Code != api.CodeRateLimited || p.Status != http.StatusTooManyRequests {
			t.Fatalf("%s %s past the burst: %d %+v", r.method, r.path, resp.StatusCode, p)
		}
		if ra := resp.Header.Get("Retry-After"); ra != "1" {
			t.Fatalf("%s %s: Retry-After %q, want 1", r.method, r.path, ra)
		}
	}
	// An enrolled device authenticates with its certificate: not limited.
	client := fwclient.NewClient(base, app.Root())
	if _, err := client.Config(ctx, d.TPM, id); err != nil {
		t.Fatalf("device with a certificate was limited: %v", err)
	}
	time.Sleep(1100 * time.Millisecond)
	if resp, p := do(http.MethodPost, api.PathChallenge); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("after a second the bucket did not refill: %d %s", resp.StatusCode, p.Code)
	}
}

// diskUsage sums the bytes allocated to the files under dir (bbolt grows
// its files sparsely, so apparent sizes overstate what was written).
func diskUsage(t *testing.T, dir string) (allocated, apparent int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		apparent += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			allocated += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return allocated, apparent
}

// lastLogIndex is a's Raft last index once settled (the same for 300 ms):
// a node's own writes (start-up records, leader duties) land when they
// land, and an operation that wrote late is counted at "after".
func lastLogIndex(t *testing.T, a *server.Appliance) uint64 {
	t.Helper()
	var last uint64
	for stable, deadline := time.Now(), time.Now().Add(10*time.Second); ; time.Sleep(20 * time.Millisecond) {
		idx, err := strconv.ParseUint(a.Node().Stats()["last_log_index"], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if idx != last {
			last, stable = idx, time.Now()
		}
		if time.Since(stable) >= 300*time.Millisecond {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Raft log never settled: last index %d", last)
		}
	}
}

// A flood of unauthenticated requests that fail before TPM possession is
// proven (challenges with a public EK certificate and a junk AK, completes
// with a valid token for a victim's EK but the wrong secret and a large
// event log, join attempts with bad tokens) writes nothing to Raft but one
// summary, grows the data directory by a bounded amount, and does not move
// the victim's flags.
func TestUnprovenFloodIsBounded(t *testing.T) {
	const n = 100
	e := newEnv(t)
	ctx := context.Background()
	victim := e.newDevice(e.Mfr)
	if _, err := e.Client.Enroll(ctx, victim.TPM); err != nil {
		t.Fatal(err)
	}
	victimID, _ := attest.DeviceID(victim.EK.Public)
	devBefore, err := e.App.Node().Device(victimID)
	if err != nil {
		t.Fatal(err)
	}

	// The attacker: its own TPM's AK with the victim's public EK
	// certificate gets a session token for the victim's device ID.
	atk := e.newDevice(e.Mfr)
	atkAK := atk.NewAK(t, goattest.ECDSA)
	stolen, err := fwclient.NewChallengeRequest(victim.EK, atkAK, api.Claims{Serial: "not-the-victim"})
	if err != nil {
		t.Fatal(err)
	}
	var ch api.ChallengeResponse
	if p := e.postJSON(api.PathChallenge, stolen, &ch); p != nil {
		t.Fatalf("challenge with a copied EK certificate: %v", p)
	}
	junk := make([]byte, 32)
	rand.Read(junk)
	complete := e.evidence(atk, atkAK, &ch, junk)
	complete.EventLog = make([]byte, 600<<10) // incompressible: as much as the body limit allows
	rand.Read(complete.EventLog)

	// A public EK certificate from the testvectors, with a junk AK.
	tv, err := os.ReadFile(testvectors.Path("ek-certs/leaf/keylime_stm_ecc_ek.der"))
	if err != nil {
		t.Fatal(err)
	}
	badChallenge := api.ChallengeRequest{EKCertificate: tv, AK: api.KeyParameters{Public: junk, CreateData: junk, CreateAttestation: junk, CreateSignature: junk}}

	tok, err := e.App.CreateJoinToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret := server.JoinToken{ID: tok.ID, Secret: junk, RootHash: tok.RootHash}.String()
	unknown := server.JoinToken{ID: "00112233aabbccdd", Secret: junk, RootHash: tok.RootHash}.String()
	join := func(token string) {
		t.Helper()
		b, _ := json.Marshal(map[string]string{"token": token, "node_id": "intruder"})
		if p := e.post("/cluster/v1/join", b, &struct{}{}); p == nil || p.Code != api.CodeJoinTokenInvalid {
			t.Fatalf("bad join: %+v", p)
		}
	}
	join(unknown) // the first linearizable read of the term appends Raft's barrier; not part of the flood
	if err := e.App.SummarizeRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	recsBefore, _ := e.App.Node().Attestations(cluster.AttestationQuery{Limit: 1})
	idxBefore := lastLogIndex(t, e.App)
	allocBefore, sizeBefore := diskUsage(t, e.Dir)

	for i := 0; i < n; i++ {
		var fresh api.ChallengeResponse
		if p := e.postJSON(api.PathChallenge, stolen, &fresh); p != nil {
			t.Fatalf("challenge %d: %v", i, p)
		}
		complete.SessionToken = fresh.SessionToken
		if p := e.postJSON(api.PathComplete, complete, &api.CompleteResponse{}); p == nil || p.Code != api.CodeActivationFailed || p.AttestationID != 0 {
			t.Fatalf("complete %d: %+v", i, p)
		}
		if p := e.postJSON(api.PathChallenge, badChallenge, &api.ChallengeResponse{}); p == nil || p.Status != http.StatusForbidden || p.AttestationID != 0 {
			t.Fatalf("bad challenge %d: %+v", i, p)
		}
		if i%2 == 0 {
			join(wrongSecret)
		} else {
			join(unknown)
		}
	}
	requests := 4 * n

	if err := e.App.SummarizeRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	allocAfter, sizeAfter := diskUsage(t, e.Dir)
	idxAfter := lastLogIndex(t, e.App)
	grew := allocAfter - allocBefore
	t.Logf("%d unauthenticated requests: data directory +%d bytes allocated (%.0f bytes/request), +%d bytes apparent; Raft log +%d entries",
		requests, grew, float64(grew)/float64(requests), sizeAfter-sizeBefore, idxAfter-idxBefore)
	// One summary, plus at most a periodic summary and a checkpoint that
	// happened to fall inside the flood.
	if idxAfter-idxBefore > 3 {
		t.Fatalf("the flood appended %d Raft entries", idxAfter-idxBefore)
	}
	if grew > 1<<20 {
		t.Fatalf("the flood grew the data directory by %d bytes (%d per request)", grew, grew/int64(requests))
	}
	if recs, _ := e.App.Node().Attestations(cluster.AttestationQuery{Limit: 1}); len(recs) != 1 || recs[0].ID != recsBefore[0].ID {
		t.Fatalf("the flood committed attestation records: newest %+v", recs)
	}

	// The victim's record did not move.
	dev, err := e.App.Node().Device(victimID)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Status != cluster.DeviceActive || len(dev.Flags) != len(devBefore.Flags) || dev.Enrollments != devBefore.Enrollments || dev.AKPublicSHA256 != devBefore.AKPublicSHA256 {
		t.Fatalf("victim changed: %+v\nwas %+v", dev, devBefore)
	}

	// The refusals are audited as one bounded summary, and counted.
	head, err := e.App.Node().AuditHead()
	if err != nil || head.Type != cluster.AuditAdmissionRefused {
		t.Fatalf("audit head %+v, %v", head, err)
	}
	var sum server.RefusalSummary
	if err := json.Unmarshal([]byte(head.Detail), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Counts["complete "+api.CodeActivationFailed] != n || sum.Counts["join "+api.CodeJoinTokenInvalid] != n || sum.Total < uint64(3*n) {
		t.Fatalf("summary %s", head.Detail)
	}
	resp, err := e.HTTP.Get(e.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `gatehouse_refusals_unrecorded_total{code="activation_failed",stage="complete"} 100`; !bytes.Contains(body, []byte(want)) {
		t.Fatalf("metrics lack %s", want)
	}
}

// Join-token and session expiry are judged by the leader's clock at apply,
// not by the clock of the follower that forwarded the command: a follower
// running two hours behind can stretch neither.
func TestFollowerClockDoesNotStretchExpiry(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	behind := func() time.Time { return time.Now().Add(-2 * time.Hour) }
	nodeCfg := func(id string) server.Config {
		cfg := server.DefaultConfig()
		cfg.NodeID, cfg.Listen, cfg.RaftAddr = id, "127.0.0.1:0", servertest.FreeAddr(t)
		servertest.Unthrottled(&cfg)
		return cfg
	}
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := server.Join(ctx, dir, servertest.Password, e.App.Addr(), tok.String(), nodeCfg("node-2")); err != nil {
		t.Fatal(err)
	}
	follower, err := server.Open(dir, servertest.Password, server.WithClock(behind),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft), cluster.WithClock(behind)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follower.Close() })
	servertest.WaitFor(t, "the follower to join", 20*time.Second, func() bool {
		_, err := follower.Node().Member(e.App.Node().LeaderID())
		return voters(e.App) == 2 && err == nil
	})

	// The follower's enroller thinks the session has five minutes left;
	// by the leader's clock it expired long ago.
	d := servertest.NewDevice(t, e.Mfr)
	_, err = fwclient.NewClient("https://"+follower.Addr(), follower.Root()).Enroll(ctx, d.TPM)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodeTokenExpired {
		t.Fatalf("enrollment through a follower with a slow clock: %v, want %s", err, api.CodeTokenExpired)
	}
	id, _ := attest.DeviceID(d.EK.Public)
	if dev, err := e.App.Node().Device(id); err == nil {
		t.Fatalf("the device was registered: %+v", dev)
	}

	// A join token that expired by the leader's clock is refused through
	// the follower too: made by the follower's clock, it is alive by that
	// clock, when the follower checks it, and long expired by the leader's.
	short, err := follower.CreateJoinToken(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = server.Join(ctx, t.TempDir(), servertest.Password, follower.Addr(), short.String(), nodeCfg("node-3"))
	if !errors.As(err, &p) || p.Code != api.CodeJoinTokenExpired {
		t.Fatalf("join with an expired token through a follower with a slow clock: %v, want %s", err, api.CodeJoinTokenExpired)
	}
}

// The CRL comes from the node's own replica through a cache: serving it
// needs no leader (here the follower is cut off from the only other node,
// so no leader can confirm itself), and costs no Raft round trip.
func TestCRLServedWithoutLeader(t *testing.T) {
	f := &cluster.Faults{}
	e := servertest.New(t)
	follower, _ := e.Join(t, "node-2", cluster.WithFaults(f))
	servertest.WaitFor(t, "two voters", 20*time.Second, func() bool { return voters(e.App) == 2 })
	pool := x509.NewCertPool()
	pool.AddCert(follower.Root())
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func() (int, []byte) {
		t.Helper()
		resp, err := hc.Get("https://" + follower.Addr() + api.PathCRL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := get(); code != http.StatusOK {
		t.Fatalf("GET /crl: %d %s", code, b)
	}
	f.Isolate()
	defer f.Heal()
	for range 3 {
		code, der := get()
		if code != http.StatusOK {
			t.Fatalf("GET /crl on a follower without a reachable quorum: %d %s", code, der)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := crl.CheckSignatureFrom(follower.Intermediates()[0]); err != nil {
			t.Fatal(err)
		}
	}
}

// Admin refusals of requests without a certificate, and refused TLS client
// certificates past a small per-minute budget, are counted in the node's
// refusal summary instead of one audit entry each: their entries are
// bounded by time, not by an attacker's traffic.
func TestUnauthenticatedAdminRefusalsSummarized(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.App.SummarizeRefusals(ctx); err != nil { // start from empty counts
		t.Fatal(err)
	}
	countType := func(typ string) int {
		entries, err := e.App.Node().AuditEntries(time.Time{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, en := range entries {
			if en.Type == typ {
				n++
			}
		}
		return n
	}
	deniedBefore := countType(cluster.AuditAdminDenied)
	const anon, foreign = 20, 25
	for range anon {
		resp, err := e.HTTP.Get(e.URL() + "/admin/v1/devices")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("admin route without a certificate: %s", resp.Status)
		}
	}
	if got := countType(cluster.AuditAdminDenied); got != deniedBefore {
		t.Fatalf("%d anonymous admin refusals were audited one by one", got-deniedBefore)
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	self := selfSigned(t)
	for range foreign {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &self, nil }}}}
		if resp, err := hc.Get(e.URL() + "/admin/v1/devices"); err == nil {
			resp.Body.Close()
			t.Fatal("a self-signed certificate passed TLS")
		}
	}
	var sum server.RefusalSummary
	servertest.WaitFor(t, "every refused handshake counted or audited", 10*time.Second, func() bool {
		resp, err := e.HTTP.Get(e.URL() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return countType(cluster.AuditTLSRefused) == 10 &&
			bytes.Contains(body, []byte(`gatehouse_refusals_unrecorded_total{code="certificate_refused",stage="tls"} 15`))
	})
	if err := e.App.SummarizeRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	head, _ := e.App.Node().AuditHead()
	if err := json.Unmarshal([]byte(head.Detail), &sum); err != nil || head.Type != cluster.AuditAdmissionRefused {
		t.Fatalf("audit head %+v", head)
	}
	if sum.Counts["admin "+api.CodeUnauthenticated] != anon || sum.Counts["tls certificate_refused"] != foreign-10 {
		t.Fatalf("summary %s, want %d anonymous admin refusals and %d refused handshakes past the budget", head.Detail, anon, foreign-10)
	}
}

// reopenThrottled restarts e's node with the admission limit on (servertest
// lifts it): a burst of 3, then 1 request per second.
func reopenThrottled(t *testing.T, e *servertest.Env) *server.Appliance {
	t.Helper()
	e.App.Close()
	e.Start(server.WithRateLimit(1, 3))
	return e.App
}

// Past its bound on anonymous enrollment work in progress, a node sheds a
// new request with 503 overloaded, a Retry-After and Connection: close
// before it reads the body (the shed request's body is never sent) and
// without a Raft entry; a completion still has room a new challenge has
// not; a place given back admits the next request.
func TestWorkGateShedsBeforeWork(t *testing.T) {
	e := servertest.New(t)
	e.App.Close()
	e.Start(server.WithMaxInFlight(1))
	app := e.App
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + app.Addr()
	type answer struct {
		resp *http.Response
		p    api.Problem
		err  error
	}
	// post sends a request whose body comes from the returned pipe.
	post := func(path string) (*io.PipeWriter, chan answer) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(http.MethodPost, base+path, pr)
		req.Header.Set("Content-Type", "application/json")
		ch := make(chan answer, 1)
		go func() {
			resp, err := hc.Do(req)
			a := answer{resp: resp, err: err}
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				_ = json.Unmarshal(b, &a.p)
			}
			ch <- a
		}()
		return pw, ch
	}
	wait := func(ch chan answer) answer {
		t.Helper()
		select {
		case a := <-ch:
			if a.err != nil {
				t.Fatal(a.err)
			}
			return a
		case <-time.After(15 * time.Second):
			t.Fatal("no answer")
		}
		return answer{}
	}
	// hold starts a request and returns once its handler reads the body:
	// it is past the gate and in progress until the pipe closes.
	// The pipe write returns once the transport has the byte, not once
	// the handler does: the gate's own count says when it is past.
	hold := func(path string) (*io.PipeWriter, chan answer) {
		t.Helper()
		before := app.WorkInFlightForTest()
		pw, ch := post(path)
		if _, err := pw.Write([]byte(`{`)); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(15 * time.Second); app.WorkInFlightForTest() <= before; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s held: the gate never counted it", path)
			}
		}
		return pw, ch
	}
	shed := func(path string) {
		t.Helper()
		before := app.Node().Stats()["last_log_index"]
		pw, ch := post(path) // its body is never written
		a := wait(ch)
		pw.Close()
		if a.resp.StatusCode != http.StatusServiceUnavailable || a.p.Code != api.CodeOverloaded {
			t.Fatalf("%s past the bound: %d %+v, want 503 %s", path, a.resp.StatusCode, a.p, api.CodeOverloaded)
		}
		if ra, err := strconv.Atoi(a.resp.Header.Get("Retry-After")); err != nil || ra < 1 {
			t.Fatalf("%s shed with Retry-After %q, want whole seconds ≥ 1", path, a.resp.Header.Get("Retry-After"))
		}
		if !a.resp.Close {
			t.Fatalf("%s shed without Connection: close", path)
		}
		if after := app.Node().Stats()["last_log_index"]; after != before {
			t.Fatalf("shedding %s wrote to Raft: last index %s → %s", path, before, after)
		}
	}
	// The reopened node's own writes (registration, leader duties) first.
	for last, stable := "", 0; stable < 10; time.Sleep(100 * time.Millisecond) {
		if idx := app.Node().Stats()["last_log_index"]; idx == last {
			stable++
		} else {
			last, stable = idx, 0
		}
	}
	challenge, chAnswer := hold(api.PathChallenge)
	shed(api.PathChallenge)
	complete, coAnswer := hold(api.PathComplete) // room for a completion
	shed(api.PathComplete)
	shed(api.PathChallenge)
	for _, h := range []struct {
		pw *io.PipeWriter
		ch chan answer
	}{{challenge, chAnswer}, {complete, coAnswer}} {
		h.pw.Close()
		if a := wait(h.ch); a.resp.StatusCode != http.StatusBadRequest || a.p.Code != api.CodeMalformed {
			t.Fatalf("held request: %d %+v, want 400 %s (it was admitted)", a.resp.StatusCode, a.p, api.CodeMalformed)
		}
	}
	pw, ch := post(api.PathChallenge)
	pw.Write([]byte(`{}`))
	pw.Close()
	if a := wait(ch); a.resp.StatusCode != http.StatusBadRequest || a.p.Code != api.CodeMalformed {
		t.Fatalf("after the places were given back: %d %+v, want 400 %s", a.resp.StatusCode, a.p, api.CodeMalformed)
	}
}
