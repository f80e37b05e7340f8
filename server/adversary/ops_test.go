package adversary_test

// Issue 11's attacks ("Run it like a product"): the unauthenticated probes
// and OpenAPI document (a flood must not write to Raft, hold memory or
// show a secret; their exemption from the rate limit must not carry over
// to other routes by path or method tricks), the metrics' label set under
// a flood of random paths and methods, the node-only GET /cluster/v1/info,
// and the admin routes of the replicated EK roots, the cluster settings
// and individual enrollments (every identity but an operator refused,
// invalid input refused, and nothing written either way; an import's dry
// run writes nothing; a removed EK root refuses its devices).

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

const (
	catProbe   = "probe"
	catMetrics = "metrics"
	catOps     = "ops-admin"
)

// Routes of issue 11 (the server keeps its own constants unexported).
const (
	pathHealthz     = "/healthz"
	pathReadyz      = "/readyz"
	pathMetrics     = "/metrics"
	pathClusterInfo = "/cluster/v1/info"
	pathEKRoots     = "/admin/v1/ekroots"
	pathSettings    = "/admin/v1/settings"
	pathAdminCerts  = "/admin/v1/admin-certs"
	pathEnrollments = "/admin/v1/enrollments"
	pathImport      = pathEnrollments + "/import"
)

// opsState is what the issue-11 rows share.
type opsState struct {
	decoy   []byte // a CA (PEM) the controls keep in the EK root set and the attacks try to remove
	decoyFP string
	kept    string // an EK public hash the controls keep imported and the attacks try to delete
	mfr     *swtpm.Manufacturer
	mfrFPs  []string // mfr's root and intermediate in the set (the removal row)
}

func (h *Harness) ops() *opsState {
	if h.opsSt == nil {
		der := selfSignedCA("Adversary Decoy Manufacturer CA", 1)
		sum := sha256.Sum256(der)
		h.opsSt = &opsState{decoy: pemCert(der), decoyFP: hex.EncodeToString(sum[:]), kept: hex.EncodeToString(randomBytes(32))}
	}
	return h.opsSt
}

// selfSignedCA is a CA certificate (DER) named cn, for the EK root set.
func selfSignedCA(cn string, serial int64) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return selfSignedCAWith(key, cn, serial)
}

func selfSignedCAWith(key crypto.Signer, cn string, serial int64) []byte {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	return der
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// ---- what must not change ----

// benignAudit are the audit entries a refused request, or the node's own
// loops, may write: nothing an attacker asked for.
var benignAudit = map[string]bool{cluster.AuditAdminDenied: true, cluster.AuditTLSRefused: true,
	cluster.AuditAdmissionRefused: true, cluster.AuditCheckpoint: true}

// opsSnapshot is the state the issue-11 admin routes write.
type opsSnapshot struct {
	roots    []string // EK root fingerprints
	settings server.SettingsView
	enrolled []string // individual enrollments' EK hashes
	audit    uint64   // audit head
	index    uint64   // Raft last index
}

func (h *Harness) opsSnap() (opsSnapshot, error) {
	var s opsSnapshot
	app, node := h.Env.App, h.Env.App.Node()
	roots, err := app.EKRoots()
	if err != nil {
		return s, err
	}
	for _, r := range roots {
		s.roots = append(s.roots, r.SHA256)
	}
	slices.Sort(s.roots)
	s.settings = app.Settings()
	ies, err := node.IndividualEnrollments()
	if err != nil {
		return s, err
	}
	for _, e := range ies {
		s.enrolled = append(s.enrolled, e.EKPublicSHA256)
	}
	slices.Sort(s.enrolled)
	head, err := node.AuditHead()
	if err != nil {
		return s, err
	}
	s.audit = head.Seq
	s.index, err = h.lastIndex()
	return s, err
}

// unchanged sets r.Violation when anything an operator's write changes
// moved since before: the EK roots, the settings (version and values), the
// individual enrollments, or an audit entry other than a refusal's or the
// node's own (every write of these routes is audited). With maxIndex >= 0
// the Raft log may also grow by at most maxIndex entries (background
// loops); -1 leaves it (a refused admin request is audited, and a stale
// settings change is refused by the FSM, after its entry committed).
func (h *Harness) unchanged(before opsSnapshot, maxIndex int, r Result) Result {
	if r.Violation != "" || r.Harness != nil {
		return r
	}
	after, err := h.opsSnap()
	if err != nil {
		return harnessErr("%v", err)
	}
	var what []string
	if !slices.Equal(before.roots, after.roots) {
		what = append(what, fmt.Sprintf("the EK roots went from %d to %d", len(before.roots), len(after.roots)))
	}
	if before.settings.Version != after.settings.Version || before.settings.Settings != after.settings.Settings {
		what = append(what, fmt.Sprintf("the settings went from version %d %+v to %d %+v", before.settings.Version, before.settings.Settings, after.settings.Version, after.settings.Settings))
	}
	if !slices.Equal(before.enrolled, after.enrolled) {
		what = append(what, fmt.Sprintf("the individual enrollments went from %d to %d", len(before.enrolled), len(after.enrolled)))
	}
	for seq := before.audit + 1; seq <= after.audit; seq++ {
		e, err := h.Env.App.Node().AuditEntry(seq)
		if err != nil {
			return harnessErr("audit entry %d: %v", seq, err)
		}
		if !benignAudit[e.Type] {
			what = append(what, fmt.Sprintf("audit entry %d %s by %s on %s", seq, e.Type, e.Actor, e.Subject))
		}
	}
	if maxIndex >= 0 && after.index-before.index > uint64(maxIndex) {
		what = append(what, fmt.Sprintf("the Raft log grew by %d entries (at most %d from background loops)", after.index-before.index, maxIndex))
	}
	if len(what) > 0 {
		r.Violation = strings.Join(what, "; ")
	}
	return r
}

// ---- probes, metrics, the OpenAPI document ----

// secrets are values no unauthenticated answer may contain: the CA
// password, any private key, a live join token (ID and secret).
func (h *Harness) secrets() ([]string, error) {
	tok, err := h.joinToken()
	if err != nil {
		return nil, err
	}
	return []string{string(servertest.Password), "PRIVATE KEY", tok.String(), tok.ID, hex.EncodeToString(tok.Secret),
		base64.RawURLEncoding.EncodeToString(tok.Secret), base64.StdEncoding.EncodeToString(tok.Secret)}, nil
}

type probeReq struct{ method, path string }

// probeFlood sends n requests made by req, eight at a time, as anyone, and
// checks what serving them cost and showed: every status is in want, no
// answer took 5 s, no body holds a secret, the heap (after a collection)
// grew by under 32 MiB, and the Raft log by at most two entries (the
// node's own loops). It returns the last answer.
func (h *Harness) probeFlood(n int, want map[int]bool, req func(i int) probeReq) Result {
	secrets, err := h.secrets()
	if err != nil {
		return harnessErr("%v", err)
	}
	before, err := h.opsSnap()
	if err != nil {
		return harnessErr("%v", err)
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	var (
		mu        sync.Mutex
		last      Result
		crash     *Result // a 5xx or a dropped connection: the judge counts it
		violation string
		slowest   time.Duration
		next      = make(chan int)
		wg        sync.WaitGroup
	)
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for i := range next {
				q := req(i)
				start := time.Now()
				a := h.send(nil, q.method, q.path, "", nil)
				d := time.Since(start)
				mu.Lock()
				slowest = max(slowest, d)
				last = a.Result
				switch {
				case violation != "":
				case a.Err != nil || a.Harness != nil || a.Status >= 500:
					violation = fmt.Sprintf("%s %s: %v", q.method, q.path, a.Result)
					r := a.Result
					crash = &r
				case !want[a.Status]:
					violation = fmt.Sprintf("%s %s answered %v", q.method, q.path, a.Result)
				case d > 5*time.Second:
					violation = fmt.Sprintf("%s %s took %v", q.method, q.path, d)
				}
				for _, s := range secrets {
					if violation == "" && bytes.Contains(a.Body, []byte(s)) {
						violation = fmt.Sprintf("%s %s shows a secret (%.12q…)", q.method, q.path, s)
					}
				}
				mu.Unlock()
			}
		})
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	h.T.Logf("probe flood: %d requests, slowest %v, heap %d -> %d KiB", n, slowest.Round(time.Millisecond), m0.HeapAlloc>>10, m1.HeapAlloc>>10)
	if crash != nil {
		return *crash
	}
	if violation == "" && m1.HeapAlloc > m0.HeapAlloc+32<<20 {
		violation = fmt.Sprintf("the heap grew by %d MiB over %d probes", (m1.HeapAlloc-m0.HeapAlloc)>>20, n)
	}
	last.Violation = violation
	return h.unchanged(before, 2, last)
}

// probeOK is a probe's control: GET path answers 200 JSON holding want.
func (h *Harness) probeOK(path, want string) error {
	a := h.send(nil, http.MethodGet, path, "", nil)
	return mustf(a.Status == http.StatusOK && strings.HasPrefix(a.ContentType, "application/json") && bytes.Contains(a.Body, []byte(want)),
		"GET %s: %v %.200s", path, a.Result, a.Body)
}

// otherNode is the rate-limited second node's URL and client (trust_test.go).
func (h *Harness) otherNode() (string, *http.Client, error) {
	o, err := h.other()
	if err != nil {
		return "", nil, err
	}
	return "https://" + o.Addr(), clientFor(o), nil
}

// drain spends the rate-limited node's bucket for this address: GET /crl
// until it answers 429.
func (h *Harness) drain(base string, hc *http.Client) error {
	for i := 0; i < 20; i++ {
		if r := h.sendTo(hc, base, http.MethodGet, api.PathCRL, "", nil).Result; r.Status == http.StatusTooManyRequests {
			return nil
		} else if r.Status != http.StatusOK {
			return fmt.Errorf("GET /crl: %v", r)
		}
	}
	return fmt.Errorf("20 requests and no 429")
}

// refill waits until the rate-limited node's bucket is full again (one
// token every 2 s, burst 3): the issue-10 rate-limit row counts on it.
func refill() { time.Sleep(7 * time.Second) }

// exemptTricks are requests that look like a probe to a careless check
// (a prefix, an unclean or encoded path, another method) but are not GET
// or HEAD of /healthz or /readyz: each must be rate-limited like any
// request once the address's bucket is empty.
var exemptTricks = []probeReq{
	{http.MethodPost, "/readyz/../v1/enroll/challenge"},
	{http.MethodGet, "/readyz/../crl"},
	{http.MethodGet, "//readyz"},
	{http.MethodGet, "/./healthz"},
	{http.MethodGet, "/readyz%2f..%2fcrl"},
	{http.MethodGet, "/healthz/"},
	{http.MethodGet, "/healthz;/../crl"},
	{http.MethodGet, "/HEALTHZ"},
	{http.MethodGet, "/openapi.json/../healthz"},
	{http.MethodPost, "/healthz"},
	{http.MethodPut, "/readyz"},
	{http.MethodOptions, "/readyz"},
	{http.MethodHead, api.PathCRL},
	{http.MethodGet, api.PathCRL + "?x=/healthz"},
}

// ---- GET /cluster/v1/info ----

func infoCalls() []call { return []call{{method: http.MethodGet, path: pathClusterInfo}} }

// nodeInfoOK: a genuine node certificate gets this node's ID and build.
func (h *Harness) nodeInfoOK() error {
	c, err := h.nodeCert()
	if err != nil {
		return err
	}
	hc := h.tlsClient(c)
	defer hc.CloseIdleConnections()
	a := h.send(hc, http.MethodGet, pathClusterInfo, "", nil)
	var info server.NodeInfo
	if a.Status != http.StatusOK || json.Unmarshal(a.Body, &info) != nil {
		return fmt.Errorf("GET %s as a node: %v", pathClusterInfo, a.Result)
	}
	return mustf(info.NodeID != "" && info.Version.GoVersion != "", "GET %s: %+v", pathClusterInfo, info)
}

// otherNodeCert is a genuine node certificate of another cluster.
func (h *Harness) otherNodeCert() (*tls.Certificate, error) {
	if _, err := h.other(); err != nil {
		return nil, err
	}
	c, err := ca.Open(filepath.Join(h.trust().otherDir, "ca"), servertest.Password)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cert, err := c.IssueNode("node-1", "other.gatehouse.internal", []string{"localhost"}, time.Hour)
	return &cert, err
}

// withPeerCert runs f with the peer device's certificate (its key loaded
// in the TPM for the while).
func (h *Harness) withPeerCert(f func(c *tls.Certificate) Result) Result {
	e := h.peer()
	cert, key, err := e.ID.TLSCertificate(e.TPM)
	if err != nil {
		return harnessErr("device certificate: %v", err)
	}
	defer key.Close()
	return f(&cert)
}

// ---- admin: EK roots, settings, enrollments ----

func (h *Harness) importBody(dryRun bool, eks ...string) []byte {
	req := server.ImportRequest{Source: "adversary", DryRun: dryRun}
	for i, ek := range eks {
		req.Rows = append(req.Rows, server.ImportRow{Row: i + 1, EKPublicSHA256: ek, Group: "open"})
	}
	return jsonBody(req)
}

func settingsBody(base int, change string) []byte {
	return jsonBody(server.SettingsChange{BaseVersion: base, Settings: json.RawMessage(change)})
}

// opsControlCalls are what an operator does with the issue-11 admin
// routes, leaving the decoy CA in the EK root set and the kept EK
// imported (both are removed and put back): every call must answer 2xx.
func (h *Harness) opsControlCalls() []call {
	st := h.ops()
	js := "application/json"
	return []call{
		{method: http.MethodGet, path: pathEKRoots},
		{method: http.MethodGet, path: pathSettings},
		{method: http.MethodGet, path: pathAdminCerts},
		{method: http.MethodPost, path: pathEKRoots, contentType: js, body: jsonBody(server.EKRootsAdd{PEM: string(st.decoy)})},
		{method: http.MethodDelete, path: pathEKRoots + "/" + st.decoyFP},
		{method: http.MethodPost, path: pathEKRoots, contentType: js, body: jsonBody(server.EKRootsAdd{PEM: string(st.decoy)})},
		{method: http.MethodPut, path: pathSettings, contentType: js, body: settingsBody(0, `{"approval_retry":"1s"}`)},
		{method: http.MethodPost, path: pathImport, contentType: js, body: h.importBody(true, hex.EncodeToString(randomBytes(32)))},
		{method: http.MethodPost, path: pathImport, contentType: js, body: h.importBody(false, st.kept)},
		{method: http.MethodDelete, path: pathEnrollments + "/" + st.kept},
		{method: http.MethodPost, path: pathImport, contentType: js, body: h.importBody(false, st.kept)},
	}
}

// opsControl: an operator succeeds at every call, and the writes hold.
func (h *Harness) opsControl() error {
	c, err := h.operator()
	if err != nil {
		return err
	}
	before, err := h.opsSnap()
	if err != nil {
		return err
	}
	if err := h.allAllowed(c, h.opsControlCalls()); err != nil {
		return err
	}
	after, err := h.opsSnap()
	if err != nil {
		return err
	}
	st := h.ops()
	return mustf(slices.Contains(after.roots, st.decoyFP) && slices.Contains(after.enrolled, st.kept) &&
		after.settings.Version > before.settings.Version && len(after.enrolled) == len(before.enrolled)+boolInt(!slices.Contains(before.enrolled, st.kept)),
		"after the operator's calls: decoy CA in the set %v, kept EK imported %v, settings version %d -> %d, enrollments %d -> %d (the dry run must add none)",
		slices.Contains(after.roots, st.decoyFP), slices.Contains(after.enrolled, st.kept), before.settings.Version, after.settings.Version, len(before.enrolled), len(after.enrolled))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// opsAttackCalls are the issue-11 admin routes as an attacker plays them
// (reads only when the identity may not even read): each write would
// change what the control left.
func (h *Harness) opsAttackCalls(reads bool) []call {
	st := h.ops()
	js := "application/json"
	var calls []call
	if reads {
		calls = []call{
			{method: http.MethodGet, path: pathEKRoots},
			{method: http.MethodGet, path: pathSettings},
			{method: http.MethodGet, path: pathAdminCerts},
		}
	}
	fresh := hex.EncodeToString(randomBytes(32))
	return append(calls,
		call{method: http.MethodPost, path: pathEKRoots, contentType: js, body: jsonBody(server.EKRootsAdd{PEM: string(h.foreignMfrRoot())})},
		call{method: http.MethodDelete, path: pathEKRoots + "/" + st.decoyFP},
		call{method: http.MethodPut, path: pathSettings, contentType: js, body: settingsBody(0, `{"approval_retry":"7s"}`)},
		call{method: http.MethodPost, path: pathImport, contentType: js, body: h.importBody(true, fresh)},
		call{method: http.MethodPost, path: pathImport, contentType: js, body: h.importBody(false, fresh)},
		call{method: http.MethodDelete, path: pathEnrollments + "/" + st.kept},
	)
}

// opsDenied is a row presenting a certificate (made by forge; forge nil:
// the peer device's; a forge that returns nil: none) on the
// issue-11 admin routes: every call refused as a caller denial, nothing
// written. The control is the operator's (opsControl).
func opsDenied(name string, reads bool, forge func(h *Harness) (*tls.Certificate, error)) Attack {
	return Attack{Name: name, Category: catOps, Expect: ExpectProblem,
		Control: (*Harness).opsControl,
		Attack: func(h *Harness) Result {
			deny := func(c *tls.Certificate) Result {
				h.Arm() // a certificate issued for the attack is not its doing
				before, err := h.opsSnap()
				if err != nil {
					return harnessErr("%v", err)
				}
				return h.unchanged(before, -1, h.allDenied(c, h.opsAttackCalls(reads)))
			}
			if forge == nil {
				return h.withPeerCert(deny)
			}
			c, err := forge(h)
			if err != nil {
				return harnessErr("%v", err)
			}
			return deny(c)
		}}
}

// opsInput is a row where an operator sends invalid input to an issue-11
// admin route (send): refused with code (when set), nothing written.
func opsInput(name, code string, control func(h *Harness) error, send func(h *Harness) (answered, error)) Attack {
	return Attack{Name: name, Category: catOps, Expect: ExpectProblem, Control: control,
		Attack: func(h *Harness) Result {
			before, err := h.opsSnap()
			if err != nil {
				return harnessErr("%v", err)
			}
			a, err := send(h)
			if err != nil {
				return harnessErr("%v", err)
			}
			r := h.unchanged(before, -1, a.Result)
			if r.Violation == "" && code != "" && r.Problem != nil && r.Problem.Code != code {
				r.Violation = fmt.Sprintf("refused, but as %s, not %s: %s", r.Problem.Code, code, r.Problem.Detail)
			}
			return r
		}}
}

// addDecoyOK is a control: an operator adds the decoy CA.
func (h *Harness) addDecoyOK() error {
	a, err := h.operatorSend(http.MethodPost, pathEKRoots, "application/json", jsonBody(server.EKRootsAdd{PEM: string(h.ops().decoy)}))
	if err != nil {
		return err
	}
	return mustf(a.Status == http.StatusOK, "ekroots add of a CA: %v", a.Result)
}

// removeDecoyOK is a control: an operator removes the decoy CA by its
// fingerprint, and adds it back.
func (h *Harness) removeDecoyOK() error {
	if err := h.addDecoyOK(); err != nil {
		return err
	}
	a, err := h.operatorSend(http.MethodDelete, pathEKRoots+"/"+h.ops().decoyFP, "", nil)
	if err != nil {
		return err
	}
	if a.Status != http.StatusOK {
		return fmt.Errorf("ekroots remove: %v", a.Result)
	}
	return h.addDecoyOK()
}

// settingsOK is a control: an operator sets approval_retry to what it is.
func (h *Harness) settingsOK() error {
	v := h.Env.App.Settings().Version
	a, err := h.operatorSend(http.MethodPut, pathSettings, "application/json", settingsBody(v, `{"approval_retry":"1s"}`))
	if err != nil {
		return err
	}
	return mustf(a.Status == http.StatusOK && h.Env.App.Settings().Version == v+1, "settings set: %v (version %d -> %d)", a.Result, v, h.Env.App.Settings().Version)
}

func addPEM(pemText string) func(h *Harness) (answered, error) {
	return func(h *Harness) (answered, error) {
		return h.operatorSend(http.MethodPost, pathEKRoots, "application/json", jsonBody(server.EKRootsAdd{PEM: pemText}))
	}
}

func setSettings(change string) func(h *Harness) (answered, error) {
	return func(h *Harness) (answered, error) {
		return h.operatorSend(http.MethodPut, pathSettings, "application/json", settingsBody(0, change))
	}
}

func removeRoot(fp func(h *Harness) string) func(h *Harness) (answered, error) {
	return func(h *Harness) (answered, error) {
		return h.operatorSend(http.MethodDelete, pathEKRoots+"/"+fp(h), "", nil)
	}
}

// manyCAs is a PEM bundle of n distinct CA certificates.
func manyCAs(n int) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.Write(pemCert(selfSignedCAWith(key, fmt.Sprintf("Adversary CA %d", i), int64(i+1))))
	}
	return b.String()
}

// ---- EK root removal ----

// opsMfr is a manufacturer the appliance does not trust until the
// removal row's control adds its CAs.
func (h *Harness) opsMfr() *swtpm.Manufacturer {
	st := h.ops()
	if st.mfr == nil {
		st.mfr = swtpm.NewTestManufacturer(h.T)
	}
	return st.mfr
}

// ---- the rows ----

func opsAttacks() []Attack {
	var as []Attack
	add := func(a ...Attack) { as = append(as, a...) }

	// ---- probes and the OpenAPI document: anyone's, so a flood must cost nothing ----
	for _, p := range []struct {
		name, path, want string
		status           []int
	}{
		{"flood of 240 GET /healthz with random queries", pathHealthz, `"status":"ok"`, []int{http.StatusOK}},
		{"flood of 240 GET /readyz (also ?noleader) with random queries", pathReadyz, `"ready":true`, []int{http.StatusOK}},
		{"flood of 240 GET /openapi.json with random queries", api.PathOpenAPI, `"openapi"`, []int{http.StatusOK}},
	} {
		add(Attack{Name: p.name + ": no Raft write, no secret, bounded heap and latency", Category: catProbe, Expect: ExpectHeld,
			Control: func(h *Harness) error { return h.probeOK(p.path, p.want) },
			Attack: func(h *Harness) Result {
				want := map[int]bool{}
				for _, s := range p.status {
					want[s] = true
				}
				return h.probeFlood(240, want, func(i int) probeReq {
					q := "?" + hex.EncodeToString(randomBytes(8)) + "=" + strings.Repeat("%2e%2e%2f", i%7)
					if p.path == pathReadyz && i%2 == 0 {
						q = "?noleader&x=" + hex.EncodeToString(randomBytes(4))
					}
					if i%5 == 0 {
						return probeReq{http.MethodHead, p.path + q}
					}
					return probeReq{http.MethodGet, p.path + q}
				})
			}})
	}
	add(Attack{Name: "probes with other methods (POST, PUT, DELETE, PATCH, OPTIONS, TRACE, PROPFIND): 405, nothing written, no secret", Category: catProbe, Expect: ExpectHeld,
		Control: func(h *Harness) error { return h.probeOK(pathHealthz, `"status":"ok"`) },
		Attack: func(h *Harness) Result {
			methods := []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, http.MethodTrace, "PROPFIND"}
			paths := []string{pathHealthz, pathReadyz, api.PathOpenAPI, pathMetrics}
			return h.probeFlood(len(methods)*len(paths)*2, map[int]bool{http.StatusMethodNotAllowed: true}, func(i int) probeReq {
				return probeReq{methods[i%len(methods)], paths[(i/len(methods))%len(paths)]}
			})
		}})
	add(Attack{Name: "probe exemption from the rate limit stretched by path and method tricks (/readyz/../v1/enroll/challenge, //readyz, %2f, POST /healthz, HEAD /crl)", Category: catRate, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			base, hc, err := h.otherNode()
			if err != nil {
				return err
			}
			defer hc.CloseIdleConnections()
			h.NoRetry = true
			defer func() { h.NoRetry = false }()
			if err := h.drain(base, hc); err != nil {
				return err
			}
			// The bucket is empty: the probes still answer (they are exempt).
			for _, q := range []probeReq{{http.MethodGet, pathHealthz}, {http.MethodHead, pathHealthz}, {http.MethodGet, pathReadyz + "?noleader"}, {http.MethodHead, pathReadyz}} {
				if r := h.sendTo(hc, base, q.method, q.path, "", nil).Result; r.Status != http.StatusOK {
					return fmt.Errorf("%s %s with the bucket empty: %v", q.method, q.path, r)
				}
			}
			return nil
		},
		Attack: func(h *Harness) Result {
			base, hc, err := h.otherNode()
			if err != nil {
				return harnessErr("%v", err)
			}
			defer hc.CloseIdleConnections()
			h.NoRetry = true
			defer func() { h.NoRetry = false }()
			defer refill()
			var last Result
			for _, q := range exemptTricks {
				if err := h.drain(base, hc); err != nil {
					return harnessErr("%v", err)
				}
				r := h.sendTo(hc, base, q.method, q.path, "", nil).Result
				if r.Status != http.StatusTooManyRequests {
					r.Violation = fmt.Sprintf("%s %s passed the rate limit with the bucket empty: %v", q.method, q.path, r)
					return r
				}
				if q.method != http.MethodHead {
					last = r
				}
			}
			if last.Problem == nil || last.Problem.Code != api.CodeRateLimited {
				last.Violation = "429 without the rate_limited code"
			}
			return last
		}})

	// ---- metrics: no request adds a label series ----
	add(Attack{Name: "flood of 200 random paths and methods, then /metrics: no new label series per path (cardinality bound)", Category: catMetrics, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			series, _, err := h.scrape()
			if err != nil {
				return err
			}
			return mustf(len(series["gatehouse_http_request_duration_seconds"]) > 0, "no request-duration series in /metrics")
		},
		Attack: func(h *Harness) Result {
			before, _, err := h.scrape()
			if err != nil {
				return harnessErr("%v", err)
			}
			methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, "PROPFIND", "X-ADV"}
			prefixes := []string{"/", "/v1/", "/admin/v1/", "/cluster/v1/", "/healthz/", "/admin/v1/ekroots/", "/admin/v1/devices/x/"}
			var markers []string
			var last Result
			for i := 0; i < 200; i++ {
				m := "zz" + hex.EncodeToString(randomBytes(6))
				markers = append(markers, m)
				method := methods[i%len(methods)]
				if i%13 == 0 {
					method = "ADVM" + strings.ToUpper(m[2:10]) // a method never seen
					markers = append(markers, method)
				}
				last = h.send(nil, method, prefixes[i%len(prefixes)]+m+"?"+m+"="+m, "", nil).Result
				if last.Err != nil || last.Status >= 500 {
					return last
				}
			}
			after, raw, err := h.scrape()
			if err != nil {
				return harnessErr("%v", err)
			}
			grown := 0
			for name, labels := range after {
				for l := range labels {
					if !before[name][l] {
						grown++
						h.T.Logf("metrics: new series %s{%s}", name, l)
					}
				}
			}
			for _, m := range markers {
				if strings.Contains(raw, m) {
					last.Violation = "a request's path or method became a label value: " + m
					return last
				}
			}
			if grown > 12 {
				last.Violation = fmt.Sprintf("%d new label series after 200 random requests (bound 12)", grown)
			}
			return last
		}})

	// ---- GET /cluster/v1/info: node certificates only ----
	td := "spiffe://" + servertest.TrustDomain
	add(Attack{Name: "GET /cluster/v1/info with a device certificate", Category: catIdentity, Expect: ExpectProblem,
		Control: (*Harness).nodeInfoOK,
		Attack: func(h *Harness) Result {
			return h.withPeerCert(func(c *tls.Certificate) Result { return h.allDenied(c, infoCalls()) })
		}})
	add(identityAttack("GET /cluster/v1/info with a genuine operator certificate", onInfo, func(h *Harness) (*tls.Certificate, error) {
		return h.operator()
	}))
	add(identityAttack("GET /cluster/v1/info without a client certificate", onInfo, func(h *Harness) (*tls.Certificate, error) {
		return nil, nil
	}))
	add(identityAttack("GET /cluster/v1/info with a node SPIFFE ID made by the device issuance path", onInfo, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{td + "/node/node-evil"}, ca.PathDevice)
	}))
	add(Attack{Name: "GET /cluster/v1/info with another cluster's genuine node certificate", Category: catIdentity, Expect: ExpectTLSRefused,
		Control: (*Harness).nodeInfoOK,
		Attack: func(h *Harness) Result {
			c, err := h.otherNodeCert()
			if err != nil {
				return harnessErr("%v", err)
			}
			return h.allDenied(c, infoCalls())
		}})

	// ---- admin routes of issue 11: operators only, nothing written otherwise ----
	add(opsDenied("ekroots, settings, admin-certs, enrollment import/delete with a device certificate: refused, nothing written", true, nil))
	add(opsDenied("ekroots, settings, admin-certs, enrollment import/delete with a genuine node certificate: refused, nothing written", true, (*Harness).nodeCert))
	add(opsDenied("ekroots add/remove, settings set, enrollment import (and dry run)/delete with an auditor certificate: refused, nothing written", false, (*Harness).auditor))
	add(opsDenied("ekroots, settings, admin-certs, enrollment import/delete without a client certificate: refused, nothing written", true,
		func(h *Harness) (*tls.Certificate, error) { return nil, nil }))

	// ---- ekroots add: CAs only, bounded ----
	add(opsInput("ekroots add of a leaf certificate (a device's)", api.CodeEKRootInvalid, (*Harness).addDecoyOK, func(h *Harness) (answered, error) {
		return addPEM(string(pemCert(h.peer().ID.Certificate.Raw)))(h)
	}))
	add(opsInput("ekroots add of a PEM CERTIFICATE block of garbage", api.CodeEKRootInvalid, (*Harness).addDecoyOK, func(h *Harness) (answered, error) {
		return addPEM(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: randomBytes(600)})))(h)
	}))
	add(opsInput("ekroots add of text that is no PEM", api.CodeEKRootInvalid, (*Harness).addDecoyOK, addPEM("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")))
	add(opsInput("ekroots add of a CA followed by a PRIVATE KEY block", api.CodeEKRootInvalid, (*Harness).addDecoyOK, func(h *Harness) (answered, error) {
		return addPEM(string(pemCert(selfSignedCA("Adversary CA with a key", 7))) + string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: randomBytes(64)})))(h)
	}))
	add(opsInput("ekroots add of a 3 MiB PEM body", "", (*Harness).addDecoyOK, func(h *Harness) (answered, error) {
		huge := string(pemCert(selfSignedCA("Adversary CA huge", 8))) + strings.Repeat("A", 3<<20)
		return addPEM(huge)(h)
	}))
	add(opsInput("ekroots add of 2001 CA certificates", api.CodeEKRootInvalid, (*Harness).addDecoyOK, func(h *Harness) (answered, error) {
		return addPEM(manyCAs(2001))(h)
	}))

	// ---- ekroots remove: a fingerprint, nothing else ----
	add(opsInput("ekroots remove with a path-traversal fingerprint (..%2f..%2fsettings)", api.CodeMalformed, (*Harness).removeDecoyOK,
		removeRoot(func(h *Harness) string { return "..%2f..%2fsettings" })))
	add(opsInput("ekroots remove with the fingerprint in upper case and a trailing %00", api.CodeMalformed, (*Harness).removeDecoyOK,
		removeRoot(func(h *Harness) string { return strings.ToUpper(h.ops().decoyFP) + "%00" })))
	add(opsInput("ekroots remove with a 63-digit prefix of a fingerprint", api.CodeMalformed, (*Harness).removeDecoyOK,
		removeRoot(func(h *Harness) string { return h.ops().decoyFP[:63] })))
	add(opsInput("ekroots remove of a fingerprint not in the set", api.CodeNotFound, (*Harness).removeDecoyOK,
		removeRoot(func(h *Harness) string { return hex.EncodeToString(randomBytes(32)) })))

	// ---- settings set: validated, versioned ----
	for _, c := range []struct{ name, change, code string }{
		{"settings set cert_validity 0s", `{"cert_validity":"0s"}`, api.CodeSettingsInvalid},
		{"settings set cert_validity 8761h (over a year)", `{"cert_validity":"8761h"}`, api.CodeSettingsInvalid},
		{"settings set session_ttl -1m", `{"session_ttl":"-1m"}`, api.CodeSettingsInvalid},
		{"settings set approval_retry 0s", `{"approval_retry":"0s"}`, api.CodeSettingsInvalid},
		{"settings set retain_refused -1h", `{"retain_refused":"-1h"}`, api.CodeSettingsInvalid},
		{"settings set trust_domain (fixed at creation)", `{"trust_domain":"evil.example"}`, api.CodeSettingsInvalid},
		{"settings set an unknown key (rate_limit is node-local)", `{"rate_limit":1000000}`, api.CodeSettingsInvalid},
		{"settings set cert_validity as a number of nanoseconds", `{"cert_validity":31536000000000000}`, api.CodeSettingsInvalid},
	} {
		add(opsInput(c.name, c.code, (*Harness).settingsOK, setSettings(c.change)))
	}
	add(opsInput("settings set based on a stale version", api.CodeSettingsConflict, (*Harness).settingsOK, func(h *Harness) (answered, error) {
		v := h.Env.App.Settings().Version
		return h.operatorSend(http.MethodPut, pathSettings, "application/json", settingsBody(v-1, `{"approval_retry":"3s"}`))
	}))

	// ---- enrollments: a dry run writes nothing; bounds ----
	add(Attack{Name: "enrollments import with dry_run (valid and invalid rows) by an operator: nothing written", Category: catOps, Expect: ExpectHeld,
		Control: (*Harness).opsControl,
		Attack: func(h *Harness) Result {
			before, err := h.opsSnap()
			if err != nil {
				return harnessErr("%v", err)
			}
			req := server.ImportRequest{Source: "adversary", DryRun: true, Rows: []server.ImportRow{
				{Row: 1, EKPublicSHA256: hex.EncodeToString(randomBytes(32)), Group: "open"},
				{Row: 2, EKPublicSHA256: h.ops().kept, Group: "open", Labels: map[string]string{"dry": "run"}},
				{Row: 3, EKPublicSHA256: "../" + h.ops().kept, Group: "open"},
				{Row: 4, EKPublicSHA256: hex.EncodeToString(randomBytes(32)), Group: "no-such-group"},
			}}
			a, err := h.operatorSend(http.MethodPost, pathImport, "application/json", jsonBody(req))
			if err != nil {
				return harnessErr("%v", err)
			}
			var res server.ImportResult
			if a.Status == http.StatusOK && (json.Unmarshal(a.Body, &res) != nil || len(res.Accepted) != 2 || len(res.Refused) != 2) {
				a.Violation = fmt.Sprintf("the dry run judged the rows wrong: %.300s", a.Body)
			}
			return h.unchanged(before, 2, a.Result)
		}})
	add(opsInput("enrollments import of 501 rows (over the batch bound)", api.CodeMalformed, (*Harness).opsControl, func(h *Harness) (answered, error) {
		eks := make([]string, 501)
		for i := range eks {
			eks[i] = hex.EncodeToString(randomBytes(32))
		}
		return h.operatorSend(http.MethodPost, pathImport, "application/json", h.importBody(false, eks...))
	}))
	add(opsInput("enrollments delete with a path-traversal EK (..%2f..%2fekroots)", api.CodeMalformed, (*Harness).opsControl, func(h *Harness) (answered, error) {
		return h.operatorSend(http.MethodDelete, pathEnrollments+"/..%2f..%2fekroots", "", nil)
	}))

	// ---- an EK root's removal is in force ----
	add(Attack{Name: "enrollment by a device whose manufacturer CA was removed (ekroots remove is in force)", Category: catEK, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			m := h.opsMfr()
			a, err := h.operatorSend(http.MethodPost, pathEKRoots, "application/json", jsonBody(server.EKRootsAdd{PEM: string(servertest.EKRoots(m))}))
			if err != nil {
				return err
			}
			var added server.EKRootsAdded
			if a.Status != http.StatusOK || json.Unmarshal(a.Body, &added) != nil || len(added.Roots) != 2 {
				return fmt.Errorf("ekroots add of the manufacturer's root and intermediate: %v %.200s", a.Result, a.Body)
			}
			st := h.ops()
			st.mfrFPs = nil
			for _, r := range added.Roots {
				st.mfrFPs = append(st.mfrFPs, r.SHA256)
			}
			d := servertest.NewDevice(h.T, m)
			return certified(h.run(Flow{Dev: &Dev{Device: d}, Model: modelPlain, Serial: "SN-EKROOT"}))
		},
		Attack: func(h *Harness) Result {
			st := h.ops()
			if len(st.mfrFPs) != 2 {
				return harnessErr("the manufacturer's CAs were not added (control failed)")
			}
			for _, fp := range st.mfrFPs {
				a, err := h.operatorSend(http.MethodDelete, pathEKRoots+"/"+fp, "", nil)
				if err != nil || a.Status != http.StatusOK {
					return harnessErr("ekroots remove %s: %v %v", fp, a.Result, err)
				}
			}
			h.Arm()
			r := h.run(Flow{Dev: &Dev{Device: servertest.NewDevice(h.T, h.opsMfr())}, Model: modelPlain, Serial: "SN-EKROOT"})
			if r.Problem != nil && r.Problem.Code != api.CodeEKUntrusted {
				r.Violation = "refused, but not as ek_untrusted: " + r.Problem.Code
			}
			return r
		}})
	return as
}

// scrape reads GET /metrics: series by metric name (histogram parts
// folded into their family), each as its label set without le; and the
// raw text.
func (h *Harness) scrape() (map[string]map[string]bool, string, error) {
	a := h.send(nil, http.MethodGet, pathMetrics, "", nil)
	if a.Status != http.StatusOK {
		return nil, "", fmt.Errorf("GET /metrics: %v", a.Result)
	}
	out := map[string]map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(a.Body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series := line[:max(strings.LastIndexByte(line, ' '), 0)] // label values may hold spaces (routes)
		name, labels, _ := strings.Cut(series, "{")
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			name = strings.TrimSuffix(name, suf)
		}
		var keep []string
		for _, l := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
			if l != "" && !strings.HasPrefix(l, "le=") {
				keep = append(keep, l)
			}
		}
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		out[name][strings.Join(keep, ",")] = true
	}
	return out, string(a.Body), sc.Err()
}
