package adversary_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"sort"
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

// Expect is how an attack must be refused.
type Expect int

const (
	// ExpectProblem: a 4xx answer, application/problem+json with a code.
	ExpectProblem Expect = iota
	// ExpectTLSRefused: the TLS handshake (client certificate) is refused.
	ExpectTLSRefused
	// ExpectClosed: the server gives up on the connection (slowloris).
	ExpectClosed
	// ExpectFinding: a check on the client's side (audit verify offline,
	// a joining node's checks) refuses what the attacker changed or
	// offered; Result.Finding says what.
	ExpectFinding
	// ExpectHeld: the route serves anyone (a probe, the metrics, the
	// OpenAPI document) or the caller may use it (an operator's dry run),
	// so the attack is on what serving it costs, shows or writes: it is
	// refused when it was answered below 500 and every invariant the
	// attack checks held (Result.Violation empty).
	ExpectHeld
	// ExpectShed: overload is the point (a node past its bound on work in
	// progress): refused when answered 503 with a problem code and a
	// Retry-After, every invariant the attack checks held; any other 5xx
	// is still a crash.
	ExpectShed
)

// Attack is one row of the suite. Control plays the same flow untampered
// (on a fresh session, or a fresh device where the attack spends one) and
// must succeed; Attack plays the tampered flow and returns what the wire
// answered. The harness snapshots the registry's certificate serials
// before Attack (re-snapshot with h.Arm right before the hostile request
// when the attack needs successful setup requests first).
type Attack struct {
	Name     string
	Category string
	Expect   Expect
	Control  func(h *Harness) error
	Attack   func(h *Harness) Result
}

// Result is what one hostile request got.
type Result struct {
	Status      int
	ContentType string
	Problem     *api.Problem
	Certificate bool // a certificate came back
	CertDER     []byte
	Err         error // no HTTP answer
	TLSRefused  bool  // the handshake was refused
	Closed      bool  // the server closed the connection (ExpectClosed)
	RetryAfter  string
	// Finding is what a client-side check reported (ExpectFinding).
	Finding string
	// Violation is an invariant the attack itself checks (a victim's
	// flags, the data directory's growth): set, the attack got through.
	Violation string
	// Harness is a failure of the attack's own setup: the suite fails.
	Harness error
}

func (r Result) String() string {
	switch {
	case r.Harness != nil:
		return "harness error: " + r.Harness.Error()
	case r.Violation != "":
		return r.Violation
	case r.TLSRefused:
		return "TLS refused: " + r.Err.Error()
	case r.Closed:
		return "connection closed by the server"
	case r.Finding != "":
		return "client-side check: " + r.Finding
	case r.Err != nil:
		return "no answer: " + r.Err.Error()
	case r.Problem != nil:
		return fmt.Sprintf("%d %s", r.Status, r.Problem.Code)
	case r.Certificate:
		return fmt.Sprintf("%d with a certificate (%s)", r.Status, describeCert(r.CertDER))
	}
	return fmt.Sprintf("%d %s", r.Status, r.ContentType)
}

func harnessErr(format string, args ...any) Result {
	return Result{Harness: fmt.Errorf(format, args...)}
}

// Dev is a swtpm device the harness keeps.
type Dev struct {
	*servertest.Device
	ID string // device ID derived from the EK
}

// Harness is one live appliance node plus swtpm devices and boot logs.
type Harness struct {
	T   *testing.T
	Env *servertest.Env
	Ctx context.Context

	// Boot logs: the reference (good) log; the same with the shim's
	// digest changed (a tampered bootloader); a log whose S-CRTM version
	// event says "EVL Virtual Firmware v0" (what the evil device booted);
	// and the forged log that keeps the evil digests but the good text.
	Log, ShimLog, EvilFWLog, ForgedFWLog []byte
	// Golden are the reference log's SHA-256 PCR values.
	Golden map[int][]byte

	devs   map[string]*Dev
	armed  map[string]bool
	client *http.Client

	// State some attacks share with their control.
	peerDev, victim, replayDev *Enrolled
	// restoreClock, set by an attack that moved the clock, runs after it.
	restoreClock func()
	// NoRetry makes a 429 an answer like any other (see send).
	NoRetry bool
	// trustSt is what the issue-10 rows share (trust_test.go).
	trustSt *trustState
	// opsSt is what the issue-11 rows share (ops_test.go).
	opsSt *opsState
}

// Device kinds in the pool: each is started once and reused across
// sessions (an enrollment refusal changes nothing a later session needs).
const (
	devPlain  = "plain"  // unbooted swtpm: group "open"
	devOther  = "other"  // a second TPM of the same trusted manufacturer
	devGolden = "golden" // booted with the reference log
	devShim   = "shim"   // booted with a tampered shim
	devEvilFW = "evilfw" // booted with "EVL Virtual Firmware v0"
	// devVouched's EK is listed in group "vouched", after the catch-all,
	// whose golden PCR 0 no device meets.
	devVouched = "vouched"
)

// Claimed models pick the policy's groups.
const (
	modelPlain  = "plain"
	modelGolden = "golden"
	modelFacts  = "facts"
	modelClaims = "claims"
)

func newHarness(t *testing.T) *Harness {
	h := &Harness{T: t, Env: servertest.New(t), Ctx: context.Background(), devs: map[string]*Dev{}}
	h.client = h.Env.HTTP
	var err error
	if h.Log, err = os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin")); err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.ParseEventLog(h.Log)
	if err != nil {
		t.Fatal(err)
	}
	h.Golden = parsed.Replay("sha256")
	if h.ShimLog, err = testvectors.FlipDigest(h.Log, parsed.Facts.BootApps[0].Digests["sha256"]); err != nil {
		t.Fatal(err)
	}
	if h.EvilFWLog, h.ForgedFWLog, err = forgeFirmwareVersion(h.Log, "GCE Virtual Firmware v1", "EVL Virtual Firmware v0"); err != nil {
		t.Fatal(err)
	}
	h.setupPolicy()
	h.peer()
	return h
}

// dev returns the pool device of a kind, starting it on first use.
func (h *Harness) dev(kind string) *Dev {
	if d, ok := h.devs[kind]; ok {
		return d
	}
	var log []byte
	switch kind {
	case devGolden:
		log = h.Log
	case devShim:
		log = h.ShimLog
	case devEvilFW:
		log = h.EvilFWLog
	}
	d := h.newDev(log)
	h.devs[kind] = d
	return d
}

func (h *Harness) newDev(bootLog []byte) *Dev {
	d := servertest.NewBootedDevice(h.T, h.Env.Mfr, bootLog)
	id, err := attest.DeviceID(d.EK.Public)
	if err != nil {
		h.T.Fatal(err)
	}
	return &Dev{Device: d, ID: id}
}

// setupPolicy enrolls a reference device under the built-in default,
// captures its boot as group "golden", and applies a policy of four
// groups chosen by claimed model: golden (every captured rule), facts
// (only the firmware version from the log), claims (serial rendered into
// the certificate's names) and open (no requirements).
func (h *Harness) setupPolicy() {
	t := h.T
	ref := h.dev(devGolden)
	id, err := h.enroll(ref.TPM, fwclient.WithEventLog(h.Log), fwclient.WithClaims(api.Claims{Model: modelGolden}))
	if err != nil {
		t.Fatalf("reference enrollment: %v", err)
	}
	node := h.Env.App.Node()
	captured, err := server.CapturePolicy(node, id.DeviceID, "golden")
	if err != nil {
		t.Fatal(err)
	}
	golden := captured.Groups[0]
	golden.Match = attest.Match{Models: []string{modelGolden}}
	golden.Mode = attest.ModeAuto
	if len(golden.Require.PCRs["sha256"]) == 0 || len(golden.Require.FirmwareVersions) == 0 {
		t.Fatalf("captured group has no golden PCRs or firmware version: %+v", golden.Require)
	}
	facts := attest.Group{Name: "facts", Match: attest.Match{Models: []string{modelFacts}}, Mode: attest.ModeAuto,
		Require: attest.Requirements{EventLog: true, FirmwareVersions: golden.Require.FirmwareVersions}}
	claims := attest.Group{Name: "claims", Match: attest.Match{Models: []string{modelClaims}}, Mode: attest.ModeAuto,
		Certificate: attest.CertProfile{DNSNames: []string{"{{.Serial}}.devices.example.com"}, URIs: []string{"spiffe://" + servertest.TrustDomain + "/{{.Serial}}"}}}
	open := attest.Group{Name: "open", Mode: attest.ModeAuto, ACME: true} // ACME: the attestation CA's rows
	vouchedEK, err := attest.PublicKeySHA256(h.dev(devVouched).EK.Public)
	if err != nil {
		t.Fatal(err)
	}
	vouched := attest.Group{Name: "vouched", Match: attest.Match{EKPublicSHA256: []string{vouchedEK}}, Mode: attest.ModeAuto,
		Require: attest.Requirements{PCRs: map[string]map[string]string{"sha256": {"0": strings.Repeat("11", 32)}}}}
	apply := func(groups ...attest.Group) error {
		doc, err := json.Marshal(attest.Policy{Groups: groups})
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.Env.App.ApplyPolicy(h.Ctx, "adversary", doc)
		return err
	}
	// A template that renders a claim into a SPIFFE ID could mint an admin
	// or node identity: policy apply refuses it, and the claims group
	// renders the serial into DNS names only.
	if err := apply(golden, facts, claims, open, vouched); err == nil {
		t.Fatal("a policy rendering a claimed serial into a SPIFFE ID was applied")
	}
	claims.Certificate.URIs = nil
	if err := apply(golden, facts, claims, open, vouched); err != nil {
		t.Fatalf("apply policy: %v", err)
	}
}

// ---- registry ----

// serials is every certificate serial (hex) the registry knows: device
// records, attestation records and step-ca's certificate table.
func (h *Harness) serials() map[string]bool {
	node := h.Env.App.Node()
	out := map[string]bool{}
	devs, err := node.Devices()
	if err != nil {
		h.T.Fatal(err)
	}
	for _, d := range devs {
		if d.CertificateSerial != "" {
			out[d.CertificateSerial] = true
		}
		for _, s := range d.Serials {
			out[s] = true
		}
	}
	recs, err := node.Attestations(cluster.AttestationQuery{})
	if err != nil {
		h.T.Fatal(err)
	}
	for _, r := range recs {
		if r.CertificateSerial != "" {
			out[r.CertificateSerial] = true
		}
	}
	keys, _, err := node.KVList("x509_certs")
	if err != nil {
		h.T.Fatal(err)
	}
	for _, k := range keys {
		if n, ok := new(big.Int).SetString(string(k), 10); ok {
			out[n.Text(16)] = true
		} else {
			out[string(k)] = true
		}
	}
	return out
}

// Arm snapshots the registry's serials: the attack's hostile request
// comes next, and any serial that appears after it is the attack's.
func (h *Harness) Arm() { h.armed = h.serials() }

func (h *Harness) newSerials() []string {
	var out []string
	for s := range h.serials() {
		if !h.armed[s] {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// ---- wire ----

// post sends body to path and classifies the answer.
func (h *Harness) post(hc *http.Client, path, contentType string, body []byte) Result {
	return h.send(hc, http.MethodPost, path, contentType, body).Result
}

func (h *Harness) get(hc *http.Client, path string) Result {
	return h.send(hc, http.MethodGet, path, "", nil).Result
}

// answered is a Result with the answer's body (for flows that continue).
type answered struct {
	Result
	Body []byte
}

// send makes one request. A 429 (admission control) is no verdict on what
// an attack tried: the request is sent again after the server's
// Retry-After, unless NoRetry (an attack on admission itself) is set.
func (h *Harness) send(hc *http.Client, method, path, contentType string, body []byte) answered {
	return h.sendTo(hc, h.Env.URL(), method, path, contentType, body)
}

// sendTo is send to another node's base URL.
func (h *Harness) sendTo(hc *http.Client, base, method, path, contentType string, body []byte) answered {
	if hc == nil {
		hc = h.client
	}
	for try := 0; ; try++ {
		req, err := http.NewRequestWithContext(h.Ctx, method, base+path, bytes.NewReader(body))
		if err != nil {
			return answered{Result: harnessErr("request: %v", err)}
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		a, retry := h.doBody(hc, req)
		if a.Status != http.StatusTooManyRequests || h.NoRetry || try == 20 {
			return a
		}
		time.Sleep(retry)
	}
}

func (h *Harness) doBody(hc *http.Client, req *http.Request) (answered, time.Duration) {
	resp, err := hc.Do(req)
	if err != nil {
		return answered{Result: Result{Err: err, TLSRefused: isTLSRefusal(err)}}, 0
	}
	defer resp.Body.Close()
	retry := 500 * time.Millisecond
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retry = min(time.Duration(s)*time.Second, 3*time.Second)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	r := Result{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), RetryAfter: resp.Header.Get("Retry-After")}
	if err != nil {
		r.Err = err
		return answered{Result: r}, retry
	}
	if strings.HasPrefix(r.ContentType, api.ContentTypeProblem) {
		var p api.Problem
		if json.Unmarshal(b, &p) == nil && p.Code != "" {
			r.Problem = &p
		}
	}
	if resp.StatusCode/100 == 2 {
		var c struct {
			Certificate []byte `json:"certificate"`
		}
		if json.Unmarshal(b, &c) == nil && len(c.Certificate) > 0 {
			r.Certificate, r.CertDER = true, c.Certificate
		}
	}
	return answered{Result: r, Body: b}, retry
}

// isTLSRefusal tells a refused handshake (an alert about the client
// certificate) from a dropped connection.
func isTLSRefusal(err error) bool {
	s := err.Error()
	return strings.Contains(s, "tls: ") && !strings.Contains(s, "EOF") && !strings.Contains(s, "reset")
}

// ---- enrollment flows ----

// Flow is one enrollment, with hooks an attack uses to tamper with it.
// A control runs the same Flow with the hooks cleared.
type Flow struct {
	Dev    *Dev
	Model  string // claimed model: picks the group
	Serial string // claimed serial
	Log    []byte // event log sent (nil: none)
	AKAlg  goattest.Algorithm

	// Hooks.
	Challenge     func(h *Harness, s *Session, req *api.ChallengeRequest) error
	ChallengeBody func(body []byte) []byte
	Activate      func(h *Harness, s *Session) ([]byte, error)
	Complete      func(h *Harness, s *Session, req *api.CompleteRequest) error
	Body          func(body []byte) []byte
	ContentType   string // "" is application/json
}

// untampered is the control's flow: the same device, claims and log.
func (f Flow) untampered() Flow {
	return Flow{Dev: f.Dev, Model: f.Model, Serial: f.Serial, Log: f.Log, AKAlg: f.AKAlg}
}

// Session is an enrollment between its challenge and its completion.
type Session struct {
	Dev    *Dev
	AK     *goattest.AK
	Ch     *api.ChallengeResponse
	Secret []byte
	Key    *goattest.Key
	Req    *api.CompleteRequest

	akBlob, keyBlob []byte
}

func (s *Session) close() {
	if s.Key != nil {
		s.Key.Close()
		s.Key = nil
	}
	if s.AK != nil {
		s.AK.Close(s.Dev.TPM.TPM)
		s.AK = nil
	}
}

// unload frees the TPM's few object slots between the round trips (a
// hook may open a second session); ak and key load them again.
func (s *Session) unload() error {
	var err error
	if s.akBlob, err = s.AK.Marshal(); err != nil {
		return err
	}
	if s.Key != nil {
		if s.keyBlob, err = s.Key.Marshal(); err != nil {
			return err
		}
	}
	s.close()
	return nil
}

// ak is the session's AK, loaded into the TPM (panics into a harness
// error when it cannot be).
func (s *Session) ak() *goattest.AK {
	if s.AK == nil {
		ak, err := s.Dev.TPM.LoadAK(s.akBlob)
		if err != nil {
			panic(fmt.Sprintf("load AK: %v", err))
		}
		s.AK = ak
	}
	return s.AK
}

// key is the session's device key, loaded into the TPM.
func (s *Session) key() *goattest.Key {
	if s.Key == nil {
		k, err := s.Dev.TPM.LoadKey(s.keyBlob)
		if err != nil {
			panic(fmt.Sprintf("load device key: %v", err))
		}
		s.Key = k
	}
	return s.Key
}

// open runs the challenge and builds the evidence. A refused challenge
// returns its Result and no session.
func (h *Harness) open(f Flow) (*Session, Result) {
	if f.AKAlg == "" {
		f.AKAlg = goattest.ECDSA
	}
	ak, err := f.Dev.TPM.NewAK(&goattest.AKConfig{Algorithm: f.AKAlg})
	if err != nil {
		return nil, harnessErr("NewAK: %v", err)
	}
	s := &Session{Dev: f.Dev, AK: ak}
	creq, err := fwclient.NewChallengeRequest(f.Dev.EK, ak, api.Claims{Serial: f.Serial, Model: f.Model})
	if err != nil {
		s.close()
		return nil, harnessErr("challenge request: %v", err)
	}
	if f.Challenge != nil {
		if err := f.Challenge(h, s, creq); err != nil {
			s.close()
			return nil, harnessErr("tamper challenge: %v", err)
		}
	}
	body, _ := json.Marshal(creq)
	if f.ChallengeBody != nil {
		body = f.ChallengeBody(body)
	}
	a := h.send(nil, http.MethodPost, api.PathChallenge, "application/json", body)
	if a.Status != http.StatusOK || a.Err != nil {
		s.close()
		return nil, a.Result
	}
	var ch api.ChallengeResponse
	if err := json.Unmarshal(a.Body, &ch); err != nil {
		s.close()
		return nil, harnessErr("challenge answer: %v", err)
	}
	s.Ch = &ch
	if f.Activate != nil {
		s.Secret, err = f.Activate(h, s)
	} else {
		s.Secret, err = ak.ActivateCredentialWithEK(f.Dev.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, f.Dev.EK)
		if err != nil { // the credential is not for this TPM: an attacker guesses
			s.Secret, err = randomBytes(32), nil
		}
	}
	if err != nil {
		s.close()
		return nil, harnessErr("activate: %v", err)
	}
	log := f.Log
	if log == nil {
		log = []byte{} // swtpm has no firmware log; never read the host's
	}
	ev, key, err := fwclient.Evidence(f.Dev.TPM, ak, &ch, s.Secret, log)
	if err != nil {
		s.close()
		return nil, harnessErr("evidence: %v", err)
	}
	if len(ev.EventLog) == 0 {
		ev.EventLog = nil
	}
	s.Key, s.Req = key, ev
	if err := s.unload(); err != nil {
		s.close()
		return nil, harnessErr("unload: %v", err)
	}
	return s, Result{}
}

// run plays a whole enrollment and returns the completion's Result (or
// the challenge's, when that was refused).
func (h *Harness) run(f Flow) Result {
	s, r := h.open(f)
	if s == nil {
		return r
	}
	defer s.close()
	return h.complete(f, s)
}

func (h *Harness) complete(f Flow, s *Session) Result {
	if f.Complete != nil {
		if err := f.Complete(h, s, s.Req); err != nil {
			return harnessErr("tamper complete: %v", err)
		}
	}
	body, _ := json.Marshal(s.Req)
	if f.Body != nil {
		body = f.Body(body)
	}
	ct := f.ContentType
	if ct == "" {
		ct = "application/json"
	}
	return h.post(nil, api.PathComplete, ct, body)
}

// certified is a control's verdict: a certificate must come back.
func certified(r Result) error {
	if r.Harness != nil {
		return r.Harness
	}
	if r.Status != http.StatusOK || !r.Certificate {
		return fmt.Errorf("control got %v, want a certificate", r)
	}
	return nil
}

// enrollAttack is a row for a tampered enrollment: the control runs
// base's flow untampered, the attack runs it through tamper.
func enrollAttack(name, category string, base func(h *Harness) Flow, tamper func(h *Harness, f *Flow)) Attack {
	return Attack{Name: name, Category: category, Expect: ExpectProblem,
		Control: func(h *Harness) error { return certified(h.run(base(h).untampered())) },
		Attack: func(h *Harness) Result {
			f := base(h)
			tamper(h, &f)
			return h.run(f)
		}}
}

func (h *Harness) plainFlow() Flow {
	return Flow{Dev: h.dev(devPlain), Model: modelPlain, Serial: "SN-PLAIN"}
}
func (h *Harness) goldenFlow() Flow {
	return Flow{Dev: h.dev(devGolden), Model: modelGolden, Log: h.Log}
}
func (h *Harness) factsFlow() Flow { return Flow{Dev: h.dev(devGolden), Model: modelFacts, Log: h.Log} }
func (h *Harness) claimsFlow() Flow {
	return Flow{Dev: h.dev(devPlain), Model: modelClaims, Serial: "SN-1234"}
}

// ---- enrolled identities, mTLS, renewal ----

// Enrolled is a device with a certificate.
type Enrolled struct {
	*Dev
	ID *fwclient.Identity
}

// enrolled starts a fresh device and enrolls it (group open).
func (h *Harness) enrolled() (*Enrolled, error) {
	d := h.newDev(nil)
	id, err := h.enroll(d.TPM, fwclient.WithClaims(api.Claims{Model: modelPlain}))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return &Enrolled{Dev: d, ID: id}, nil
}

// mtls is an HTTPS client presenting e's certificate (key in its TPM).
func (h *Harness) mtls(e *Enrolled) (*http.Client, func(), error) {
	cert, key, err := e.ID.TLSCertificate(e.TPM)
	if err != nil {
		return nil, nil, err
	}
	hc := h.tlsClient(&cert)
	return hc, func() { hc.CloseIdleConnections(); key.Close() }, nil
}

func (h *Harness) tlsClient(cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(h.Env.App.Root())
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Always send it: Go's client otherwise sends no certificate when
		// its issuer is not among the server's acceptable CAs.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// RenewFlow is one renewal by an enrolled device, with hooks.
type RenewFlow struct {
	E *Enrolled
	// Client replaces the mTLS client of the renewal request (not of the
	// challenge).
	Client *http.Client
	// Token replaces the session token; BeforeRenew runs after the
	// challenge (e.g. revoke the device).
	Token       func(h *Harness) (string, error)
	BeforeRenew func(h *Harness) error
	Quote       func(h *Harness, rs *RenewSession) error
	Request     func(h *Harness, rs *RenewSession, req *api.RenewRequest) error
	Body        func(body []byte) []byte
	ContentType string
}

// RenewSession is a renewal between its challenge and its request.
type RenewSession struct {
	E     *Enrolled
	Ch    api.RenewChallengeResponse
	AK    *goattest.AK
	Key   *goattest.Key
	Quote *goattest.Quote
	PCRs  []api.PCR
	// otherAK is a foreign AK's public area an attack sends.
	otherAK []byte
}

// renewChallenge asks for a renewal nonce over e's mTLS.
func (h *Harness) renewChallenge(e *Enrolled) (*api.RenewChallengeResponse, answered) {
	hc, done, err := h.mtls(e)
	if err != nil {
		return nil, answered{Result: harnessErr("mTLS: %v", err)}
	}
	defer done()
	a := h.send(hc, http.MethodPost, api.PathRenewChallenge, "application/json", []byte("{}"))
	if a.Status != http.StatusOK || a.Err != nil {
		return nil, a
	}
	var ch api.RenewChallengeResponse
	if err := json.Unmarshal(a.Body, &ch); err != nil {
		return nil, answered{Result: harnessErr("renew challenge answer: %v", err)}
	}
	return &ch, a
}

func (h *Harness) renew(f RenewFlow) Result {
	e := f.E
	ch, a := h.renewChallenge(e)
	if ch == nil {
		return a.Result
	}
	cert, key, err := e.ID.TLSCertificate(e.TPM)
	if err != nil {
		return harnessErr("device key: %v", err)
	}
	defer key.Close()
	hc := f.Client
	if hc == nil {
		hc = h.tlsClient(&cert)
		defer hc.CloseIdleConnections()
	}
	ak, err := e.TPM.LoadAK(e.ID.AKBlob)
	if err != nil {
		return harnessErr("load AK: %v", err)
	}
	defer ak.Close(e.TPM.TPM)
	rs := &RenewSession{E: e, Ch: *ch, AK: ak, Key: key}
	if f.Quote != nil {
		if err := f.Quote(h, rs); err != nil {
			return harnessErr("tamper quote: %v", err)
		}
	} else if rs.Quote, err = ak.Quote(e.TPM.TPM, ch.Nonce, goattest.HashSHA256); err != nil {
		return harnessErr("quote: %v", err)
	}
	pcrs, err := e.TPM.PCRs(goattest.HashSHA256)
	if err != nil {
		return harnessErr("PCRs: %v", err)
	}
	for _, p := range pcrs {
		rs.PCRs = append(rs.PCRs, api.PCR{Index: p.Index, Bank: "sha256", Digest: p.Digest})
	}
	csr, err := fwclient.CSR(key)
	if err != nil {
		return harnessErr("CSR: %v", err)
	}
	req := &api.RenewRequest{SessionToken: ch.SessionToken, AKPublic: ak.AttestationParameters().Public,
		Quote: api.Quote{Quote: rs.Quote.Quote, Signature: rs.Quote.Signature}, PCRs: rs.PCRs, CSR: csr}
	if f.Token != nil {
		if req.SessionToken, err = f.Token(h); err != nil {
			return harnessErr("token: %v", err)
		}
	}
	if f.Request != nil {
		if err := f.Request(h, rs, req); err != nil {
			return harnessErr("tamper renewal: %v", err)
		}
	}
	if f.BeforeRenew != nil {
		if err := f.BeforeRenew(h); err != nil {
			return harnessErr("before renew: %v", err)
		}
	}
	body, _ := json.Marshal(req)
	if f.Body != nil {
		body = f.Body(body)
	}
	ct := f.ContentType
	if ct == "" {
		ct = "application/json"
	}
	h.Arm()
	return h.post(hc, api.PathRenew, ct, body)
}

// renewAttack is a row for a tampered renewal. Each attack spends its own
// freshly enrolled device (a refused renewal quarantines it); the control
// renews that device untampered first.
func renewAttack(name, category string, tamper func(h *Harness, f *RenewFlow) error) Attack {
	var e *Enrolled
	return Attack{Name: name, Category: category, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			var err error
			if e, err = h.enrolled(); err != nil {
				return err
			}
			return certified(h.renew(RenewFlow{E: e}))
		},
		Attack: func(h *Harness) Result {
			if e == nil {
				return harnessErr("no enrolled device (control failed)")
			}
			f := RenewFlow{E: e}
			if err := tamper(h, &f); err != nil {
				return harnessErr("%v", err)
			}
			return h.renew(f)
		}}
}

// ---- helpers ----

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// dirUsage is the disk space (allocated blocks) under dir: a file that
// only grew its mapping (bolt) counts what it stores.
func dirUsage(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

// forgeFirmwareVersion returns two logs from log: evil, whose S-CRTM
// version event says to (its digests measure that text), and forged,
// which keeps evil's digests but says from again. Both strings must have
// the same length (the event keeps its size).
func forgeFirmwareVersion(log []byte, from, to string) (evil, forged []byte, err error) {
	enc := func(s string) []byte {
		var b []byte
		for _, r := range s {
			b = append(b, byte(r), 0)
		}
		return b
	}
	old, repl := enc(from), enc(to)
	i := bytes.Index(log, old)
	if i < 0 || len(old) != len(repl) || bytes.Index(log[i+1:], old) >= 0 {
		return nil, nil, fmt.Errorf("%q not found exactly once", from)
	}
	// The event data: from the size field before it, to its end.
	size := int(log[i-4]) | int(log[i-3])<<8 | int(log[i-2])<<16 | int(log[i-1])<<24
	oldData := log[i : i+size]
	newData := bytes.Clone(oldData)
	copy(newData, repl)
	evil = bytes.Clone(log)
	copy(evil[i:], repl)
	for _, sum := range [][2][]byte{
		{sha1Sum(oldData), sha1Sum(newData)}, {sha256Sum(oldData), sha256Sum(newData)}, {sha384Sum(oldData), sha384Sum(newData)},
	} {
		j := bytes.Index(evil[:i], sum[0])
		if j < 0 {
			continue // bank not in the log
		}
		copy(evil[j:], sum[1])
	}
	if bytes.Equal(evil[:i], log[:i]) {
		return nil, nil, errors.New("no digest of the S-CRTM event found")
	}
	forged = bytes.Clone(evil)
	copy(forged[i:], old)
	return evil, forged, nil
}

// describeCert names what an issued certificate grants.
func describeCert(der []byte) string {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return "unparseable: " + err.Error()
	}
	var uris []string
	for _, u := range c.URIs {
		uris = append(uris, u.String())
	}
	return fmt.Sprintf("serial %s, CN %q, DNS %q, URIs %q, CA %v", c.SerialNumber.Text(16), c.Subject.CommonName, c.DNSNames, uris, c.IsCA)
}

// enroll is the agent's enrollment of d, sent again while admission
// control answers 429 (see send).
func (h *Harness) enroll(tpm *fwclient.TPM, opts ...fwclient.Option) (*fwclient.Identity, error) {
	for try := 0; ; try++ {
		id, err := h.Env.Client.Enroll(h.Ctx, tpm, opts...)
		var p *api.Problem
		if !errors.As(err, &p) || p.Status != http.StatusTooManyRequests || try == 20 {
			return id, err
		}
		time.Sleep(time.Second)
	}
}
