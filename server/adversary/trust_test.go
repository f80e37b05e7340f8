package adversary_test

// Issue 10's attacks ("Trust, part 2"): identities across namespaces over
// mTLS (forged with the appliance's own intermediate key, so only the
// identity checks can refuse them), revoked admins, wrong media types,
// policies whose templates could name an identity, join-token guessing and
// a forwarded command under a lagging clock, refusal floods (no write
// before possession, a bounded audit log, per-client rate limiting),
// audit export tampering (judged by the offline verification an auditor
// runs), the revoke race as far as it is deterministic over the wire, and
// backup tampering (judged by the restore route). A second node, of
// another cluster and with the rate limit on, serves the rate-limit row
// and lends its keys as "another cluster's".

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

const (
	catIdentity = "identity"
	catAdmin    = "admin"
	catJoin     = "join"
	catAudit    = "audit"
	catBackup   = "backup"
	catRevoke   = "revocation"
	catRate     = "rate-limit"
)

// trustState is what the issue-10 rows share.
type trustState struct {
	signer      crypto.Signer               // the appliance's intermediate key (forging)
	inter       *x509.Certificate           // its certificate
	admins      map[string]*tls.Certificate // role → a genuine admin certificate (admin path)
	node        *tls.Certificate            // a genuine node certificate (node path)
	fresh       *tls.Certificate            // a control's fresh operator, revoked by its attack
	freshSer    string
	export      []byte // the control's untouched audit export
	sinceExport []byte // an export --since that starts after oldHead
	oldHead     cluster.AuditRange
	backup      []byte            // the control's untouched backup
	throttled   *server.Appliance // a second node (another cluster), rate limit on
	gated       *server.Appliance // a third node (another cluster), one enrollment at a time
	token       server.JoinToken  // a genuine join token, unspent
	otherDir    string
	crlDev      *Enrolled
	gwDev       *Enrolled
	reDev       *Enrolled
	foreignRoot []byte
}

func (h *Harness) trust() *trustState {
	if h.trustSt == nil {
		h.trustSt = &trustState{}
	}
	return h.trustSt
}

// ---- certificates ----

// intermediate loads the appliance's intermediate key: an in-process
// stand-in for an issuance path that went wrong (the certificates it
// forges chain to the appliance's root, so only the identity checks can
// refuse them).
func (h *Harness) intermediate() (crypto.Signer, *x509.Certificate, error) {
	st := h.trust()
	if st.signer != nil {
		return st.signer, st.inter, nil
	}
	dir := filepath.Join(h.Env.Dir, "ca")
	keyPEM, err := os.ReadFile(filepath.Join(dir, "intermediate.key"))
	if err != nil {
		return nil, nil, err
	}
	k, err := pemutil.Parse(keyPEM, pemutil.WithPassword(servertest.Password))
	if err != nil {
		return nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("intermediate key is not a signer")
	}
	interPEM, err := os.ReadFile(filepath.Join(dir, ca.IntermediateCertFile))
	if err != nil {
		return nil, nil, err
	}
	inter, err := pemutil.ParseCertificate(interPEM)
	if err != nil {
		return nil, nil, err
	}
	st.signer, st.inter = signer, inter
	return signer, inter, nil
}

// forged is a client certificate signed by the appliance's intermediate
// key outside every issuance function, with uris and the issuance-path
// marks given.
func (h *Harness) forged(uris []string, marks ...ca.Path) (*tls.Certificate, error) {
	signer, inter, err := h.intermediate()
	if err != nil {
		return nil, err
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: new(big.Int).SetBytes(randomBytes(16)), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			return nil, err
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	for _, p := range marks {
		oid, ok := ca.PathOID(p)
		if !ok {
			return nil, fmt.Errorf("no OID for path %s", p)
		}
		tmpl.Policies = append(tmpl.Policies, oid)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, key.Public(), signer)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, inter.Raw}, PrivateKey: key}, nil
}

// adminCert has the appliance issue an admin certificate for a fresh key
// through its admin socket (what `gatehouse admin-cert issue` does), and
// returns it with its serial (hex).
func (h *Harness) adminCert(role, name string) (*tls.Certificate, string, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, "", err
	}
	resp, err := server.NewAdminClient(h.Env.Dir).IssueAdminCert(h.Ctx, role, name, csr, time.Hour)
	if err != nil {
		return nil, "", fmt.Errorf("issue %s certificate: %w", role, err)
	}
	cert := &tls.Certificate{PrivateKey: key}
	for rest := resp.Chain; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, blk.Bytes)
	}
	if len(cert.Certificate) == 0 {
		return nil, "", errors.New("empty admin certificate chain")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, "", err
	}
	return cert, leaf.SerialNumber.Text(16), nil
}

func (h *Harness) operator() (*tls.Certificate, error) { return h.admin(ca.RoleOperator) }
func (h *Harness) auditor() (*tls.Certificate, error)  { return h.admin(ca.RoleAuditor) }

// admin is a genuine admin certificate of role, issued once.
func (h *Harness) admin(role string) (*tls.Certificate, error) {
	st := h.trust()
	if c, ok := st.admins[role]; ok {
		return c, nil
	}
	c, _, err := h.adminCert(role, "adversary-"+role)
	if err != nil {
		return nil, err
	}
	if st.admins == nil {
		st.admins = map[string]*tls.Certificate{}
	}
	st.admins[role] = c
	return c, nil
}

// nodeCert is a genuine node certificate (the node issuance path).
func (h *Harness) nodeCert() (*tls.Certificate, error) {
	st := h.trust()
	if st.node == nil {
		c, err := ca.Open(filepath.Join(h.Env.Dir, "ca"), servertest.Password)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		cert, err := c.IssueNode("adversary-node", servertest.TrustDomain, []string{"localhost"}, time.Hour)
		if err != nil {
			return nil, err
		}
		st.node = &cert
	}
	return st.node, nil
}

// ---- requests ----

// call is one request an identity row plays.
type call struct {
	method, path, contentType string
	body                      []byte
}

var denials = map[string]bool{api.CodeUnauthenticated: true, api.CodeForbidden: true, api.CodeCertificateRevoked: true}

// allDenied plays calls with cert and returns the last answer when every
// one was refused as a caller denial (401/403); a call that reached its
// handler (any other answer, even a 4xx about its body) is a violation.
func (h *Harness) allDenied(cert *tls.Certificate, calls []call) Result {
	hc := h.tlsClient(cert)
	defer hc.CloseIdleConnections()
	var last Result
	for _, c := range calls {
		last = h.send(hc, c.method, c.path, c.contentType, c.body).Result
		if last.Harness != nil || last.Err != nil || last.Status >= 500 {
			return last
		}
		if last.Problem == nil || !denials[last.Problem.Code] {
			last.Violation = fmt.Sprintf("%s %s reached its handler: %s", c.method, c.path, last)
			return last
		}
	}
	return last
}

// allAllowed is a control: every call answers 2xx.
func (h *Harness) allAllowed(cert *tls.Certificate, calls []call) error {
	hc := h.tlsClient(cert)
	defer hc.CloseIdleConnections()
	for _, c := range calls {
		if r := h.send(hc, c.method, c.path, c.contentType, c.body).Result; r.Status/100 != 2 {
			return fmt.Errorf("%s %s: %v", c.method, c.path, r)
		}
	}
	return nil
}

// adminCalls are admin routes an attacker wants: a read, a read with
// ?stale=true, and a write (a join token).
func adminCalls() []call {
	return []call{
		{method: http.MethodGet, path: "/admin/v1/status"},
		{method: http.MethodGet, path: "/admin/v1/devices?stale=true"},
		{method: http.MethodPost, path: "/admin/v1/cluster/tokens", contentType: "application/json", body: []byte(`{"ttl":"1m"}`)},
	}
}

// labelCommand is a Raft command, as a follower forwards it, that sets a
// label on the peer device: what a forged node identity would write.
func (h *Harness) labelCommand(value string) []byte {
	payload, _ := json.Marshal(map[string]any{"device_id": h.peer().ID.DeviceID, "set": map[string]string{"adversary": value}, "actor": "adversary"})
	b, _ := json.Marshal(map[string]any{"type": "device.labels", "version": 1, "time": time.Now().UTC(), "payload": json.RawMessage(payload)})
	return b
}

func (h *Harness) clusterCalls(value string) []call {
	return []call{
		{method: http.MethodPost, path: "/cluster/v1/read-index", contentType: "application/json", body: []byte(`{}`)},
		{method: http.MethodPost, path: "/cluster/v1/apply", contentType: "application/json", body: h.labelCommand(value)},
	}
}

// peerLabel is the peer device's "adversary" label.
func (h *Harness) peerLabel() string {
	d, err := h.Env.App.Node().Device(h.peer().ID.DeviceID)
	if err != nil {
		return ""
	}
	return d.Labels["adversary"]
}

// Route sets an identity row plays.
const (
	onAdmin   = "admin"
	onCluster = "cluster"
	onDevice  = "device"
	// onInfo is GET /cluster/v1/info (ops_test.go): node certificates only.
	onInfo = "cluster-info"
)

// deviceCalls are the routes only a device identity may call.
func deviceCalls() []call {
	return []call{
		{method: http.MethodGet, path: api.PathWhoAmI},
		{method: http.MethodGet, path: api.PathConfig},
		{method: http.MethodPost, path: api.PathRenewChallenge, contentType: "application/json", body: []byte(`{}`)},
	}
}

// identityAttack is a row presenting a certificate made by forge on the
// admin, cluster or device routes (on); the control presents a genuine
// certificate of the namespace those routes belong to (an operator, a
// node, the peer device).
func identityAttack(name, on string, forge func(h *Harness) (*tls.Certificate, error)) Attack {
	return Attack{Name: name, Category: catIdentity, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			switch on {
			case onInfo:
				return h.nodeInfoOK()
			case onCluster:
				c, err := h.nodeCert()
				if err != nil {
					return err
				}
				if err := h.allAllowed(c, h.clusterCalls("control")); err != nil {
					return err
				}
				return mustf(h.peerLabel() == "control", "the node's command was not applied (label %q)", h.peerLabel())
			case onDevice:
				e := h.peer()
				cert, key, err := e.ID.TLSCertificate(e.TPM)
				if err != nil {
					return err
				}
				defer key.Close()
				return h.allAllowed(&cert, deviceCalls())
			}
			c, err := h.operator()
			if err != nil {
				return err
			}
			return h.allAllowed(c, adminCalls())
		},
		Attack: func(h *Harness) Result {
			c, err := forge(h)
			if err != nil {
				return harnessErr("forge: %v", err)
			}
			h.Arm() // a genuine certificate issued for the attack (the first operator's) is not its doing
			switch on {
			case onInfo:
				return h.allDenied(c, infoCalls())
			case onCluster:
				tag := "attack-" + hex.EncodeToString(randomBytes(4))
				r := h.allDenied(c, h.clusterCalls(tag))
				if got := h.peerLabel(); got == tag && r.Violation == "" {
					r.Violation = "the forged node's command was applied (the peer's label is " + got + ")"
				}
				return r
			case onDevice:
				return h.allDenied(c, deviceCalls())
			}
			return h.allDenied(c, adminCalls())
		}}
}

// ---- audit ----

func (h *Harness) auditorGet(path string) (answered, error) {
	c, err := h.auditor()
	if err != nil {
		return answered{}, err
	}
	hc := h.tlsClient(c)
	defer hc.CloseIdleConnections()
	a := h.send(hc, http.MethodGet, path, "", nil)
	if a.Status != http.StatusOK {
		return a, fmt.Errorf("GET %s: %v", path, a.Result)
	}
	return a, nil
}

// exportAudit is `gatehouse audit export` by an auditor over HTTPS.
func (h *Harness) exportAudit() ([]byte, error) {
	a, err := h.auditorGet("/admin/v1/audit?format=jsonl")
	return a.Body, err
}

// auditHead is `gatehouse audit head`: the live head, signed.
func (h *Harness) auditHead() (cluster.AuditRange, error) {
	var r cluster.AuditRange
	a, err := h.auditorGet("/admin/v1/audit/head")
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(a.Body, &r)
}

// verifyExport is `gatehouse audit verify --root ROOT [--expect-head]`:
// the key certificate in the export must chain to the root the auditor
// trusts, then every hash, link, checkpoint and the signed range are
// checked. It returns what was found (nothing: the export verifies).
func (h *Harness) verifyExport(raw []byte, heads ...cluster.AuditRange) []string {
	hdr, lines, err := cluster.ReadAudit(bytes.NewReader(raw))
	if err != nil {
		return []string{"unreadable: " + err.Error()}
	}
	keyCert := []byte(hdr.KeyCertificate)
	if len(keyCert) == 0 { // CSV: the auditor fetches it (`gatehouse audit key`, --key-cert)
		a, err := h.auditorGet("/admin/v1/audit/key")
		if err != nil {
			return []string{"harness: " + err.Error()}
		}
		keyCert = a.Body
	}
	chain, err := pemutil.ParseCertificateBundle(keyCert)
	if err != nil {
		return []string{"audit key certificate: " + err.Error()}
	}
	key, err := ca.VerifyAuditKey(chain, h.Env.App.Root())
	if err != nil {
		return []string{"audit key not certified by the trusted root: " + err.Error()}
	}
	rep := cluster.VerifyAudit(lines, key, cluster.ExpectHeads(heads...))
	var out []string
	for _, p := range rep.Problems {
		out = append(out, p.String())
	}
	return out
}

// export is a parsed JSONL export: header, entries, range line.
type export struct {
	header  []byte
	entries []cluster.AuditEntry
	rng     []byte
}

func parseExport(raw []byte) (*export, error) {
	lines := bytes.Split(bytes.TrimSpace(raw), []byte("\n"))
	if len(lines) < 3 || !bytes.HasPrefix(lines[len(lines)-1], []byte(`{"range":`)) {
		return nil, fmt.Errorf("export of %d lines without a range line", len(lines))
	}
	x := &export{header: lines[0], rng: lines[len(lines)-1]}
	for _, l := range lines[1 : len(lines)-1] {
		var e cluster.AuditEntry
		if err := json.Unmarshal(l, &e); err != nil {
			return nil, err
		}
		x.entries = append(x.entries, e)
	}
	return x, nil
}

func (x *export) bytes() []byte {
	var b bytes.Buffer
	b.Write(x.header)
	b.WriteByte('\n')
	for i := range x.entries {
		l, _ := json.Marshal(&x.entries[i])
		b.Write(l)
		b.WriteByte('\n')
	}
	if x.rng != nil {
		b.Write(x.rng)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// rechain recomputes every hash and link from entry i on, as an attacker
// who edited entry i would; with key set, checkpoints and the range are
// signed again with it (a key that is not the appliance's).
func (x *export) rechain(i int, key ed25519.PrivateKey) {
	for j := i; j < len(x.entries); j++ {
		e := &x.entries[j]
		if j > 0 {
			e.Prev = x.entries[j-1].Hash
		}
		if key != nil && e.Type == cluster.AuditCheckpoint && j > 0 {
			p := x.entries[j-1]
			d, _ := json.Marshal(cluster.CheckpointDetail{Seq: p.Seq, Hash: p.Hash, KeyID: cluster.KeyID(key.Public().(ed25519.PublicKey)),
				Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, cluster.CheckpointMessage(p.Seq, p.Hash)))})
			e.Detail = string(d)
		}
		e.Hash = e.ComputeHash()
	}
	if key != nil {
		r := cluster.SignRange(key, cluster.RangeExport, servertest.TrustDomain, time.Time{}, time.Now(), x.entries)
		x.rng, _ = json.Marshal(map[string]any{"range": r})
	}
}

// auditedWrite is an operator's change that appends an audit entry (a
// label on the peer device), so the chain moves on.
func (h *Harness) auditedWrite() error {
	body := []byte(`{"set":{"audit-marker":"` + hex.EncodeToString(randomBytes(4)) + `"}}`)
	a, err := h.operatorSend(http.MethodPost, "/admin/v1/devices/"+h.peer().ID.DeviceID+"/labels", "application/json", body)
	if err != nil {
		return err
	}
	return mustf(a.Status == http.StatusOK, "label change: %v", a.Result)
}

// auditAttack is a row tampering with an export the auditor took: the
// control exports and verifies it untouched (no finding), the attack
// tampers with that export and verifies it offline: a finding refuses it.
// Each control first adds an entry, so its export ends on a checkpoint of
// its own (the one before it is then an earlier checkpoint to cut back to).
func auditAttack(name string, tamper func(h *Harness, x *export) error) Attack {
	return Attack{Name: name, Category: catAudit, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			if err := h.auditedWrite(); err != nil {
				return err
			}
			raw, err := h.exportAudit()
			if err != nil {
				return err
			}
			if f := h.verifyExport(raw); len(f) > 0 {
				return fmt.Errorf("the untouched export does not verify: %s", strings.Join(f, "; "))
			}
			h.trust().export = raw
			return nil
		},
		Attack: func(h *Harness) Result {
			x, err := parseExport(h.trust().export)
			if err != nil {
				return harnessErr("%v", err)
			}
			if err := tamper(h, x); err != nil {
				return harnessErr("tamper: %v", err)
			}
			return findings(h.verifyExport(x.bytes()))
		}}
}

func findings(f []string) Result {
	if len(f) == 0 {
		return Result{Violation: "offline verification reported nothing"}
	}
	if len(f) > 2 {
		f = append(f[:2:2], fmt.Sprintf("and %d more", len(f)-2))
	}
	return Result{Finding: strings.Join(f, "; ")}
}

// checkpoints are the indexes of the checkpoint entries.
func (x *export) checkpoints() []int {
	var out []int
	for i, e := range x.entries {
		if e.Type == cluster.AuditCheckpoint {
			out = append(out, i)
		}
	}
	return out
}

// ---- backups ----

func (h *Harness) operatorSend(method, path, contentType string, body []byte) (answered, error) {
	c, err := h.operator()
	if err != nil {
		return answered{}, err
	}
	hc := h.tlsClient(c)
	defer hc.CloseIdleConnections()
	return h.send(hc, method, path, contentType, body), nil
}

// backupFiles splits an archive into its files, in order.
func backupFiles(raw []byte) ([]string, map[string][]byte, error) {
	var names []string
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return names, files, nil
		}
		if err != nil {
			return nil, nil, err
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, nil, err
		}
		names = append(names, hd.Name)
		files[hd.Name] = b
	}
}

// resum recomputes SHA256SUMS over every file but itself and SIGNATURE, as
// an attacker with write access to backup storage would.
func resum(names []string, files map[string][]byte) {
	var sums strings.Builder
	for _, n := range names {
		if n == "SHA256SUMS" || n == "SIGNATURE" {
			continue
		}
		if _, ok := files[n]; ok {
			fmt.Fprintf(&sums, "%x  %s\n", sha256.Sum256(files[n]), n)
		}
	}
	files["SHA256SUMS"] = []byte(sums.String())
}

func writeBackup(names []string, files map[string][]byte) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, n := range names {
		f, ok := files[n]
		if !ok {
			continue
		}
		_ = tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(f)), Typeflag: tar.TypeReg, ModTime: time.Now()})
		_, _ = tw.Write(f)
	}
	_ = tw.Close()
	return b.Bytes()
}

// unrevoke edits the registry in place so a revoked device reads active
// (same length, still valid JSON): what an attacker wants from a restore.
func unrevoke(state []byte) ([]byte, error) {
	from, to := `"status":"revoked"`, `"status":"active"  `
	i := bytes.Index(state, []byte(from))
	if i < 0 {
		return nil, errors.New("no revoked device in the backup's registry")
	}
	s := bytes.Clone(state)
	copy(s[i:], to)
	return s, nil
}

// revokedCount is how many devices the registry holds revoked.
func (h *Harness) revokedCount() int {
	devs, err := h.Env.App.Node().Devices()
	if err != nil {
		return -1
	}
	n := 0
	for _, d := range devs {
		if d.Status == "revoked" {
			n++
		}
	}
	return n
}

// backupAttack is a row restoring a tampered backup through the admin
// restore route (operator, HTTPS): the control takes a backup and restores
// it untouched; the attack tampers with it and must get a refusal that
// names why (want), with the registry's revoked devices unchanged.
func backupAttack(name, want string, tamper func(h *Harness, names *[]string, files map[string][]byte) error) Attack {
	return Attack{Name: name, Category: catBackup, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			a, err := h.operatorSend(http.MethodGet, "/admin/v1/cluster/backup", "", nil)
			if err != nil {
				return err
			}
			if a.Status != http.StatusOK {
				return fmt.Errorf("backup: %v", a.Result)
			}
			h.trust().backup = a.Body
			if r, err := h.operatorSend(http.MethodPost, "/admin/v1/cluster/restore", "application/x-tar", a.Body); err != nil || r.Status != http.StatusOK {
				return fmt.Errorf("untouched backup: %v %v", r.Result, err)
			}
			return nil
		},
		Attack: func(h *Harness) Result {
			names, files, err := backupFiles(h.trust().backup)
			if err != nil {
				return harnessErr("%v", err)
			}
			if err := tamper(h, &names, files); err != nil {
				return harnessErr("tamper: %v", err)
			}
			before := h.revokedCount()
			a, err := h.operatorSend(http.MethodPost, "/admin/v1/cluster/restore", "application/x-tar", writeBackup(names, files))
			if err != nil {
				return harnessErr("%v", err)
			}
			if after := h.revokedCount(); after != before {
				a.Violation = fmt.Sprintf("revoked devices went from %d to %d", before, after)
			} else if a.Problem != nil && !strings.Contains(a.Problem.Detail, want) {
				a.Violation = fmt.Sprintf("refused, but not for the tampering (want %q): %s", want, a.Problem.Detail)
			}
			return a.Result
		}}
}

// ---- a second node ----

// other is a second appliance, of another cluster, with the admission
// rate limit on (one request every 2 s, burst 3): the rate-limit row plays against
// it, and its audit key is "another cluster's key".
func (h *Harness) other() (*server.Appliance, error) {
	st := h.trust()
	if st.throttled != nil {
		return st.throttled, nil
	}
	dir := h.T.TempDir()
	cfg := server.DefaultConfig()
	cfg.TrustDomain = "other.gatehouse.internal"
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = servertest.FreeAddr(h.T)
	if err := server.Init(dir, servertest.Password, cfg, servertest.EKRoots(h.Env.Mfr)); err != nil {
		return nil, err
	}
	app, err := server.Open(dir, servertest.Password, server.WithRateLimit(0.5, 3),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		return nil, err
	}
	h.T.Cleanup(func() { app.Close() })
	ctx, cancel := context.WithTimeout(h.Ctx, 10*time.Second)
	defer cancel()
	if err := app.WaitReady(ctx); err != nil {
		return nil, err
	}
	st.throttled, st.otherDir = app, dir
	return app, nil
}

// gated is an appliance of another cluster that works on one anonymous
// enrollment request at a time (server.WithMaxInFlight(1)): the overload
// row plays against it.
func (h *Harness) gated() (*server.Appliance, error) {
	st := h.trust()
	if st.gated != nil {
		return st.gated, nil
	}
	dir := h.T.TempDir()
	cfg := server.DefaultConfig()
	cfg.TrustDomain = "gated.gatehouse.internal"
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = servertest.FreeAddr(h.T)
	if err := server.Init(dir, servertest.Password, cfg, servertest.EKRoots(h.Env.Mfr)); err != nil {
		return nil, err
	}
	app, err := server.Open(dir, servertest.Password, server.WithMaxInFlight(1),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		return nil, err
	}
	h.T.Cleanup(func() { app.Close() })
	ctx, cancel := context.WithTimeout(h.Ctx, 10*time.Second)
	defer cancel()
	if err := app.WaitReady(ctx); err != nil {
		return nil, err
	}
	st.gated = app
	return app, nil
}

// overloadAttack holds one challenge in progress on the gated node (its
// body half sent) and sends another, whose body is never sent: it must be
// shed with 503 overloaded, Retry-After and Connection: close, before its
// body is read, without a Raft entry.
func (h *Harness) overloadAttack() Result {
	g, err := h.gated()
	if err != nil {
		return harnessErr("%v", err)
	}
	hc := clientFor(g)
	defer hc.CloseIdleConnections()
	base := "https://" + g.Addr()
	post := func(body io.Reader) (*http.Response, error) {
		req, err := http.NewRequestWithContext(h.Ctx, http.MethodPost, base+api.PathChallenge, body)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		return hc.Do(req)
	}
	heldR, heldW := io.Pipe()
	held := make(chan error, 1)
	go func() {
		resp, err := post(heldR)
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	defer func() { heldW.Close(); <-held }()
	if _, err := heldW.Write([]byte(`{`)); err != nil { // read by its handler: in progress
		return harnessErr("holding a challenge: %v", err)
	}
	before := g.Node().Stats()["last_log_index"]
	unsent, unsentW := io.Pipe()
	defer unsentW.Close()
	resp, err := post(unsent)
	if err != nil {
		return harnessErr("second challenge: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	r := Result{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), RetryAfter: resp.Header.Get("Retry-After")}
	var p api.Problem
	if json.Unmarshal(b, &p) == nil && p.Code != "" {
		r.Problem = &p
	}
	ra, raErr := strconv.Atoi(r.RetryAfter)
	switch {
	case r.Status != http.StatusServiceUnavailable:
		r.Violation = fmt.Sprintf("a challenge past the bound was not shed: %d", r.Status)
	case r.Problem == nil || r.Problem.Code != api.CodeOverloaded:
		r.Violation = "503 without the overloaded code"
	case raErr != nil || ra < 1:
		r.Violation = fmt.Sprintf("shed without a Retry-After in whole seconds ≥ 1: %q", r.RetryAfter)
	case !resp.Close:
		r.Violation = "shed without Connection: close"
	case g.Node().Stats()["last_log_index"] != before:
		r.Violation = "shedding wrote to Raft"
	}
	return r
}

func clientFor(app *server.Appliance) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// ---- joins ----

// joinBody is what a joining node sends: a build of today's feature
// version, so a refusal is about the token, never the build.
type joinBody struct {
	Token          string `json:"token"`
	NodeID         string `json:"node_id"`
	FeatureVersion int    `json:"feature_version"`
}

func (h *Harness) joinToken() (server.JoinToken, error) {
	st := h.trust()
	if st.token.ID == "" {
		tok, err := h.Env.App.CreateJoinToken(h.Ctx, 10*time.Minute)
		if err != nil {
			return tok, err
		}
		st.token = tok
	}
	return st.token, nil
}

func (h *Harness) join(path, token string) Result {
	body, _ := json.Marshal(joinBody{Token: token, NodeID: "adversary-joiner", FeatureVersion: cluster.FeatureVersion})
	return h.post(nil, path, "application/json", body)
}

// joinCheckOK is a control: the genuine token's check (which does not
// spend it) answers the join's answer.
func (h *Harness) joinCheckOK() error {
	tok, err := h.joinToken()
	if err != nil {
		return err
	}
	if r := h.join("/cluster/v1/join/check", tok.String()); r.Status != http.StatusOK {
		return fmt.Errorf("join check with the genuine token: %v", r)
	}
	return nil
}

// wrongSecret is tok with its secret changed.
func wrongSecret(tok server.JoinToken) string {
	tok.Secret = randomBytes(len(tok.Secret))
	return tok.String()
}

// joinNode is `gatehouse serve --join` up to its first start: a new data
// directory joined through this node with token and password.
func (h *Harness) joinNode(token string, password []byte) error {
	cfg := server.DefaultConfig()
	cfg.NodeID = "adversary-joiner"
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = servertest.FreeAddr(h.T)
	ctx, cancel := context.WithTimeout(h.Ctx, 20*time.Second)
	defer cancel()
	return server.Join(ctx, h.T.TempDir(), password, h.Env.App.Addr(), token, cfg)
}

func (h *Harness) lastIndex() (uint64, error) {
	return strconv.ParseUint(h.Env.App.Node().Stats()["last_log_index"], 10, 64)
}

// forwardConsume creates a join token expiring at now+expiresIn, then,
// with a genuine node certificate, forwards to the leader a consume of it
// stamped two minutes ago (a follower whose clock lags). It returns the
// forward's answer and whether the token ended up used.
func (h *Harness) forwardConsume(expiresIn time.Duration) (Result, bool) {
	c, err := h.nodeCert()
	if err != nil {
		return harnessErr("%v", err), false
	}
	hc := h.tlsClient(c)
	defer hc.CloseIdleConnections()
	id, secret := hex.EncodeToString(randomBytes(8)), randomBytes(32)
	sum := sha256.Sum256(secret)
	cmd := func(typ string, at time.Time, payload any) []byte {
		p, _ := json.Marshal(payload)
		b, _ := json.Marshal(map[string]any{"type": typ, "version": 1, "time": at.UTC(), "payload": json.RawMessage(p)})
		return b
	}
	now := time.Now()
	if r := h.post(hc, "/cluster/v1/apply", "application/json", cmd("jointoken.create", now,
		map[string]any{"id": id, "secret_sha256": sum[:], "expires": now.Add(expiresIn).UTC()})); r.Status != http.StatusOK {
		return harnessErr("create the token: %v", r), false
	}
	r := h.post(hc, "/cluster/v1/apply", "application/json", cmd("jointoken.consume", now.Add(-2*time.Minute),
		map[string]any{"id": id, "secret_sha256": sum[:], "node_id": "adversary-late"}))
	err = h.Env.App.Node().CheckJoinToken(id, secret, now.Add(-2*time.Minute))
	return r, errors.Is(err, cluster.ErrJoinTokenUsed)
}

// regroup is a device that claims model "gw": group open under the suite's
// policy, group "gateways" once regroupControl applied a policy version
// that has one.
const modelGW = "gw"

// applyWithGateways applies the policy in force with a group "gateways"
// (model gw, configuration role=gateway) before the others; require
// tightens it.
func (h *Harness) applyWithGateways(require attest.Requirements) (restore func() error, err error) {
	rec, err := h.Env.App.Node().Policy(0)
	if err != nil {
		return nil, err
	}
	p, err := attest.ParsePolicy(rec.Document)
	if err != nil {
		return nil, err
	}
	gw := attest.Group{Name: "gateways", Match: attest.Match{Models: []string{modelGW}}, Mode: attest.ModeAuto,
		Require: require, Config: json.RawMessage(`{"role":"gateway"}`)}
	var groups []attest.Group
	for _, g := range p.Groups {
		if g.Name != gw.Name {
			groups = append(groups, g)
		}
	}
	doc, err := json.Marshal(attest.Policy{Groups: append([]attest.Group{gw}, groups...)})
	if err != nil {
		return nil, err
	}
	if _, err := h.Env.App.ApplyPolicy(h.Ctx, "adversary", doc); err != nil {
		return nil, err
	}
	return func() error { _, err := h.Env.App.ApplyPolicy(h.Ctx, "adversary", rec.Document); return err }, nil
}

// regroupControl: a device enrolled in group open renews under a newer
// policy that puts it in "gateways"; the renewal moves it there and it
// gets that group's configuration.
func (h *Harness) regroupControl() error {
	d := h.newDev(nil)
	id, err := h.enroll(d.TPM, fwclient.WithClaims(api.Claims{Model: modelGW}))
	if err != nil {
		return err
	}
	e := &Enrolled{Dev: d, ID: id}
	h.trust().gwDev = e
	restore, err := h.applyWithGateways(attest.Requirements{})
	if err != nil {
		return err
	}
	defer restore()
	if err := certified(h.renew(RenewFlow{E: e})); err != nil {
		return err
	}
	hc, done, err := h.mtls(e)
	if err != nil {
		return err
	}
	defer done()
	a := h.send(hc, http.MethodGet, api.PathConfig, "", nil)
	var cfg api.ConfigResponse
	if a.Status != http.StatusOK || json.Unmarshal(a.Body, &cfg) != nil {
		return fmt.Errorf("config: %v", a.Result)
	}
	dev, err := h.Env.App.Node().Device(e.ID.DeviceID)
	if err != nil {
		return err
	}
	return mustf(cfg.Group == "gateways" && strings.Contains(string(cfg.Configuration), "gateway") && dev.Group == "gateways",
		"after renewal under the new policy: config group %q %s, record group %q", cfg.Group, cfg.Configuration, dev.Group)
}

// regroupAttack: the policy now requires an event log for "gateways", and
// the device renews without one: refused.
func (h *Harness) regroupAttack() Result {
	e := h.trust().gwDev
	if e == nil {
		return harnessErr("no device (control failed)")
	}
	restore, err := h.applyWithGateways(attest.Requirements{EventLog: true})
	if err != nil {
		return harnessErr("apply: %v", err)
	}
	defer restore()
	return h.renew(RenewFlow{E: e})
}

// policyWith is the policy in force with the claims group's certificate
// profile changed by edit (nil: unchanged), as a document.
func (h *Harness) policyWith(edit func(p *attest.CertProfile)) ([]byte, int, error) {
	rec, err := h.Env.App.Node().Policy(0)
	if err != nil {
		return nil, 0, err
	}
	if edit == nil {
		return rec.Document, rec.Version, nil
	}
	p, err := attest.ParsePolicy(rec.Document)
	if err != nil {
		return nil, 0, err
	}
	found := false
	for i := range p.Groups {
		if p.Groups[i].Name == "claims" {
			edit(&p.Groups[i].Certificate)
			found = true
		}
	}
	if !found {
		return nil, 0, errors.New("no claims group in the policy")
	}
	doc, err := json.Marshal(p)
	return doc, rec.Version, err
}

// policyApplyAttack is a row where an operator applies (PUT
// /admin/v1/policy over HTTPS) a policy whose claims group renders a
// claim where it could name an identity: refused, the version unchanged.
// The control applies the policy in force again.
func policyApplyAttack(name string, edit func(p *attest.CertProfile)) Attack {
	apply := func(h *Harness, edit func(p *attest.CertProfile)) (answered, int, error) {
		doc, version, err := h.policyWith(edit)
		if err != nil {
			return answered{}, 0, err
		}
		body, _ := json.Marshal(server.PolicyApply{Document: doc})
		a, err := h.operatorSend(http.MethodPut, "/admin/v1/policy", "application/json", body)
		return a, version, err
	}
	return Attack{Name: name, Category: catClaims, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			a, _, err := apply(h, nil)
			if err != nil {
				return err
			}
			return mustf(a.Status == http.StatusOK, "the policy in force, applied again: %v", a.Result)
		},
		Attack: func(h *Harness) Result {
			a, before, err := apply(h, edit)
			if err != nil {
				return harnessErr("%v", err)
			}
			if _, after, err := h.policyWith(nil); err == nil && after != before {
				a.Violation = fmt.Sprintf("the policy went from version %d to %d", before, after)
			}
			return a.Result
		}}
}

// auditBounded runs flood and checks that the audit chain grew by at most
// perWindow entries for each of the limiter's windows it spanned, plus one
// for a background entry (a refusal summary).
func (h *Harness) auditBounded(perWindow int, window time.Duration, flood func() Result) Result {
	node := h.Env.App.Node()
	before, err := node.AuditHead()
	if err != nil {
		return harnessErr("%v", err)
	}
	start := time.Now()
	r := flood()
	if r.Violation != "" || r.Harness != nil {
		return r
	}
	time.Sleep(100 * time.Millisecond) // the TLS error log is read asynchronously
	after, err := node.AuditHead()
	if err != nil {
		return harnessErr("%v", err)
	}
	end := time.Now()
	windows := int(end.UnixNano()/int64(window)-start.UnixNano()/int64(window)) + 1 // the limiter's windows it spanned
	h.T.Logf("refusal flood: audit seq %d -> %d in %v", before.Seq, after.Seq, time.Since(start).Round(time.Millisecond))
	if bound := uint64(perWindow*windows + 1); after.Seq-before.Seq > bound {
		r.Violation = fmt.Sprintf("the audit log grew by %d entries (bound %d)", after.Seq-before.Seq, bound)
	}
	return r
}

// ---- the rows ----

func trustAttacks() []Attack {
	var as []Attack
	add := func(a ...Attack) { as = append(as, a...) }
	td := "spiffe://" + servertest.TrustDomain
	admin := td + "/admin/operator/mallory"
	node := td + "/node/node-evil"

	// ---- identity namespaces over mTLS ----
	add(identityAttack("admin SPIFFE ID made by the device issuance path, on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{admin}, ca.PathDevice)
	}))
	add(identityAttack("admin SPIFFE ID without an issuance mark, on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{admin})
	}))
	add(identityAttack("admin SPIFFE ID with the server path's mark, on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{admin}, ca.PathServer)
	}))
	add(identityAttack("device ID and admin ID in one certificate (device mark), on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{td + "/device/" + h.peer().ID.DeviceID, admin}, ca.PathDevice)
	}))
	add(identityAttack("two admin SPIFFE IDs (operator and auditor, admin mark), on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{admin, td + "/admin/auditor/x"}, ca.PathAdmin)
	}))
	add(identityAttack("admin ID with both the admin and the device mark, on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{admin}, ca.PathAdmin, ca.PathDevice)
	}))
	add(identityAttack("genuine node certificate on admin routes", onAdmin, func(h *Harness) (*tls.Certificate, error) {
		return h.nodeCert()
	}))
	add(identityAttack("node SPIFFE ID made by the device issuance path, on /cluster/v1/apply", onCluster, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{node}, ca.PathDevice)
	}))
	add(identityAttack("node SPIFFE ID without an issuance mark, on cluster routes", onCluster, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{node})
	}))
	add(identityAttack("device ID and node ID in one certificate (device mark), on cluster routes", onCluster, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{td + "/device/" + h.peer().ID.DeviceID, node}, ca.PathDevice)
	}))
	add(identityAttack("two node SPIFFE IDs (node mark), on cluster routes", onCluster, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{node, td + "/node/node-2"}, ca.PathNode)
	}))
	add(identityAttack("genuine operator certificate on cluster routes", onCluster, func(h *Harness) (*tls.Certificate, error) {
		return h.operator()
	}))

	add(identityAttack("genuine operator certificate on device routes", onDevice, func(h *Harness) (*tls.Certificate, error) {
		return h.operator()
	}))
	add(identityAttack("genuine node certificate on device routes", onDevice, func(h *Harness) (*tls.Certificate, error) {
		return h.nodeCert()
	}))
	add(identityAttack("the peer's device ID made by the admin issuance path, on device routes", onDevice, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{td + "/device/" + h.peer().ID.DeviceID}, ca.PathAdmin)
	}))
	add(identityAttack("the peer's device ID without an issuance mark, on device routes", onDevice, func(h *Harness) (*tls.Certificate, error) {
		return h.forged([]string{td + "/device/" + h.peer().ID.DeviceID})
	}))

	// A genuine node's apply, mislabelled: the control applies the same
	// command as JSON; the attack must be refused with want and apply nothing.
	applyAs := func(name, mediaType, label, want string) Attack {
		return Attack{Name: name, Category: catProtocol, Expect: ExpectProblem,
			Control: func(h *Harness) error {
				c, err := h.nodeCert()
				if err != nil {
					return err
				}
				hc := h.tlsClient(c)
				defer hc.CloseIdleConnections()
				r := h.post(hc, "/cluster/v1/apply", "application/json", h.labelCommand("json"))
				return mustf(r.Status == http.StatusOK && h.peerLabel() == "json", "apply as JSON: %v (label %q)", r, h.peerLabel())
			},
			Attack: func(h *Harness) Result {
				c, err := h.nodeCert()
				if err != nil {
					return harnessErr("%v", err)
				}
				hc := h.tlsClient(c)
				defer hc.CloseIdleConnections()
				r := h.post(hc, "/cluster/v1/apply", mediaType, h.labelCommand(label))
				if h.peerLabel() == label {
					r.Violation = "the command was applied"
				} else if r.Problem != nil && r.Problem.Code != want {
					r.Violation = "not refused as " + want + ": " + r.Problem.Code
				}
				return r
			}}
	}
	add(applyAs("cluster apply with Content-Type text/plain (genuine node certificate)", "text/plain", "text", api.CodeUnsupportedMediaType))
	add(applyAs("cluster apply: a JSON command declared as the binary envelope (genuine node certificate)", cluster.EnvelopeMediaType, "mislabelled", api.CodeMalformed))

	// ---- refusal floods: the audit log stays bounded ----
	add(Attack{Name: "flood of 40 admin requests with a forged admin certificate (audit growth bounded)", Category: catFlood, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			c, err := h.operator()
			if err != nil {
				return err
			}
			return h.allAllowed(c, adminCalls()[:1])
		},
		Attack: func(h *Harness) Result {
			c, err := h.forged([]string{admin}, ca.PathDevice)
			if err != nil {
				return harnessErr("%v", err)
			}
			return h.auditBounded(10, time.Second, func() Result {
				var last Result
				for i := 0; i < 40; i++ {
					if last = h.allDenied(c, adminCalls()[:1]); last.Violation != "" || last.Problem == nil {
						return last
					}
				}
				return last
			})
		}})
	add(Attack{Name: "flood of 40 handshakes with a foreign CA's admin certificate (audit growth bounded)", Category: catFlood, Expect: ExpectTLSRefused,
		Control: func(h *Harness) error {
			c, err := h.operator()
			if err != nil {
				return err
			}
			return h.allAllowed(c, adminCalls()[:1])
		},
		Attack: func(h *Harness) Result {
			cert, err := foreignClientCert(admin)
			if err != nil {
				return harnessErr("%v", err)
			}
			return h.auditBounded(10, time.Minute, func() Result {
				var last Result
				for i := 0; i < 40; i++ {
					hc := h.tlsClient(cert) // a new connection, a new handshake
					last = h.get(hc, "/admin/v1/status")
					hc.CloseIdleConnections()
					if !last.TLSRefused {
						return last
					}
				}
				return last
			})
		}})

	// ---- admin ----
	add(Attack{Name: "revoked operator certificate on admin routes (also ?stale=true)", Category: catAdmin, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			c, serial, err := h.adminCert(ca.RoleOperator, "adversary-revoked")
			if err != nil {
				return err
			}
			h.trust().fresh, h.trust().freshSer = c, serial
			return h.allAllowed(c, adminCalls())
		},
		Attack: func(h *Harness) Result {
			st := h.trust()
			if st.fresh == nil {
				return harnessErr("no certificate (control failed)")
			}
			if err := server.NewAdminClient(h.Env.Dir).RevokeAdminCert(h.Ctx, st.freshSer, "adversary", "test"); err != nil {
				return harnessErr("revoke: %v", err)
			}
			r := h.allDenied(st.fresh, adminCalls())
			if r.Violation == "" && r.Problem != nil && r.Problem.Code != api.CodeCertificateRevoked {
				r.Violation = "refused, but not as revoked: " + r.Problem.Code
			}
			return r
		}})
	for _, c := range []struct{ name, contentType string }{
		{"admin write with Content-Type text/plain", "text/plain"},
		{"admin write with a JSON body and no Content-Type", ""},
		{"admin write with Content-Type application/x-www-form-urlencoded", "application/x-www-form-urlencoded"},
	} {
		add(Attack{Name: c.name, Category: catAdmin, Expect: ExpectProblem,
			Control: func(h *Harness) error {
				a, err := h.operatorSend(http.MethodPost, "/admin/v1/devices/"+h.peer().ID.DeviceID+"/labels", "application/json", []byte(`{"set":{"media":"json"}}`))
				if err != nil {
					return err
				}
				return mustf(a.Status == http.StatusOK, "labels with application/json: %v", a.Result)
			},
			Attack: func(h *Harness) Result {
				a, err := h.operatorSend(http.MethodPost, "/admin/v1/devices/"+h.peer().ID.DeviceID+"/labels", c.contentType, []byte(`{"set":{"media":"other"}}`))
				if err != nil {
					return harnessErr("%v", err)
				}
				if a.Problem != nil && a.Problem.Code != api.CodeUnsupportedMediaType {
					a.Violation = "not refused for its media type: " + a.Problem.Code
				}
				if d, err := h.Env.App.Node().Device(h.peer().ID.DeviceID); err == nil && d.Labels["media"] != "json" {
					a.Violation = "the label was changed to " + d.Labels["media"]
				}
				return a.Result
			}})
	}
	add(Attack{Name: "restore route with Content-Type application/json", Category: catAdmin, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			a, err := h.operatorSend(http.MethodPost, "/admin/v1/cluster/tokens", "application/json", []byte(`{"ttl":"1m"}`))
			if err != nil {
				return err
			}
			return mustf(a.Status == http.StatusOK, "a JSON admin write: %v", a.Result)
		},
		Attack: func(h *Harness) Result {
			a, err := h.operatorSend(http.MethodPost, "/admin/v1/cluster/restore", "application/json", []byte(`{}`))
			if err != nil {
				return harnessErr("%v", err)
			}
			if a.Problem != nil && a.Problem.Code != api.CodeUnsupportedMediaType {
				a.Violation = "not refused for its media type: " + a.Problem.Code
			}
			return a.Result
		}})

	// ---- joins ----
	add(Attack{Name: "flood of 30 guessed join tokens (the Raft log must not grow)", Category: catJoin, Expect: ExpectProblem,
		Control: (*Harness).joinCheckOK,
		Attack: func(h *Harness) Result {
			const n = 30
			tok, err := h.joinToken()
			if err != nil {
				return harnessErr("%v", err)
			}
			before, err := h.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			var last Result
			for i := 0; i < n; i++ {
				guess := tok
				guess.ID = hex.EncodeToString(randomBytes(8))
				guess.Secret = randomBytes(32)
				if i%2 == 1 {
					guess.ID = tok.ID // the right ID, a guessed secret
				}
				last = h.join("/cluster/v1/join", guess.String())
				if last.Problem == nil || last.Status/100 != 4 {
					return last
				}
			}
			after, err := h.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			h.T.Logf("join flood: Raft last index %d -> %d after %d guessed tokens", before, after, n)
			// Background loops (a refusal summary, a checkpoint) may commit
			// one entry each meanwhile; a write per guess would be n.
			if after-before > 2 {
				last.Violation = fmt.Sprintf("the Raft log grew by %d entries for %d guessed tokens", after-before, n)
			}
			if err := h.joinCheckOK(); err != nil {
				last.Violation = "the genuine token no longer works after the guesses: " + err.Error()
			}
			return last
		}})
	for _, claim := range []int{0, -1} {
		add(Attack{Name: fmt.Sprintf("join with the genuine token from a build claiming feature version %d, below the cluster's (409 build_too_old, token unspent)", claim),
			Category: catJoin, Expect: ExpectProblem,
			Control: (*Harness).joinCheckOK,
			Attack: func(h *Harness) Result {
				tok, err := h.joinToken()
				if err != nil {
					return harnessErr("%v", err)
				}
				body, _ := json.Marshal(joinBody{Token: tok.String(), NodeID: "adversary-old-build", FeatureVersion: claim})
				r := h.post(nil, "/cluster/v1/join", "application/json", body)
				if r.Problem == nil || r.Problem.Code != api.CodeBuildTooOld || r.Status != http.StatusConflict {
					r.Violation = fmt.Sprintf("a joiner below the cluster's feature version got %v, want 409 build_too_old", r)
				}
				if err := h.joinCheckOK(); err != nil {
					r.Violation = "the genuine token was spent by a refused old build: " + err.Error()
				}
				return r
			}})
	}
	add(Attack{Name: "join with a real token ID and a wrong secret (token must stay unspent)", Category: catJoin, Expect: ExpectProblem,
		Control: (*Harness).joinCheckOK,
		Attack: func(h *Harness) Result {
			tok, err := h.joinToken()
			if err != nil {
				return harnessErr("%v", err)
			}
			r := h.join("/cluster/v1/join", wrongSecret(tok))
			if err := h.joinCheckOK(); err != nil {
				r.Violation = "the genuine token was spent by a wrong guess: " + err.Error()
			}
			return r
		}})
	add(Attack{Name: "join check with a wrong token", Category: catJoin, Expect: ExpectProblem,
		Control: (*Harness).joinCheckOK,
		Attack: func(h *Harness) Result {
			tok, err := h.joinToken()
			if err != nil {
				return harnessErr("%v", err)
			}
			return h.join("/cluster/v1/join/check", wrongSecret(tok))
		}})
	add(Attack{Name: "join with a malformed token", Category: catJoin, Expect: ExpectProblem,
		Control: (*Harness).joinCheckOK,
		Attack:  func(h *Harness) Result { return h.join("/cluster/v1/join", "gh1.../../admin") }})
	add(Attack{Name: "join with Content-Type text/plain", Category: catJoin, Expect: ExpectProblem,
		Control: (*Harness).joinCheckOK,
		Attack: func(h *Harness) Result {
			tok, err := h.joinToken()
			if err != nil {
				return harnessErr("%v", err)
			}
			body, _ := json.Marshal(joinBody{Token: tok.String(), NodeID: "adversary-joiner", FeatureVersion: cluster.FeatureVersion})
			r := h.post(nil, "/cluster/v1/join/check", "text/plain", body)
			if r.Problem != nil && r.Problem.Code != api.CodeUnsupportedMediaType {
				r.Violation = "not refused for its media type: " + r.Problem.Code
			}
			return r
		}})

	add(Attack{Name: "join with a wrong CA password (the token must stay unspent)", Category: catJoin, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			tok, err := h.Env.App.CreateJoinToken(h.Ctx, time.Minute)
			if err != nil {
				return err
			}
			return h.joinNode(tok.String(), servertest.Password)
		},
		Attack: func(h *Harness) Result {
			tok, err := h.Env.App.CreateJoinToken(h.Ctx, time.Minute)
			if err != nil {
				return harnessErr("%v", err)
			}
			err = h.joinNode(tok.String(), []byte("wrong horse battery staple"))
			r := Result{}
			if err != nil {
				r.Finding = err.Error()
			}
			if !errors.Is(err, ca.ErrBadPassword) {
				r.Violation = fmt.Sprintf("join answered %v, want %v", err, ca.ErrBadPassword)
			}
			if e := h.join("/cluster/v1/join/check", tok.String()); e.Status != http.StatusOK {
				r.Violation = fmt.Sprintf("the token was spent by a join that failed its password check: %v", e)
			}
			return r
		}})
	add(Attack{Name: "join through a seed whose root is not the token's pin (impostor)", Category: catJoin, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			tok, err := h.Env.App.CreateJoinToken(h.Ctx, time.Minute)
			if err != nil {
				return err
			}
			return h.joinNode(tok.String(), servertest.Password)
		},
		Attack: func(h *Harness) Result {
			o, err := h.other()
			if err != nil {
				return harnessErr("%v", err)
			}
			// A token of the other cluster, and this node posing as its seed.
			tok, err := o.CreateJoinToken(h.Ctx, time.Minute)
			if err != nil {
				return harnessErr("%v", err)
			}
			if err := h.joinNode(tok.String(), servertest.Password); err != nil {
				return Result{Finding: err.Error()}
			}
			return Result{Violation: "the joining node accepted a seed that is not its token's cluster"}
		}})

	// ---- audit export tampering (offline verification) ----
	add(auditAttack("audit export with its first 5 entries dropped", func(h *Harness, x *export) error {
		if len(x.entries) < 10 {
			return fmt.Errorf("only %d entries", len(x.entries))
		}
		x.entries = x.entries[5:]
		return nil
	}))
	add(auditAttack("audit export cut back to an earlier checkpoint", func(h *Harness, x *export) error {
		cps := x.checkpoints()
		if len(cps) < 2 {
			return fmt.Errorf("only %d checkpoints", len(cps))
		}
		x.entries = x.entries[:cps[len(cps)-2]+1]
		return nil
	}))
	add(auditAttack("audit export with one entry edited (its hash and every later link recomputed)", func(h *Harness, x *export) error {
		i := len(x.entries) / 2
		x.entries[i].Actor = "admin:nobody(operator)"
		x.rechain(i, nil)
		return nil
	}))
	add(auditAttack("audit export with one entry edited (hash left as it was)", func(h *Harness, x *export) error {
		x.entries[len(x.entries)/3].Subject = "someone-else"
		return nil
	}))
	add(auditAttack("audit export with one entry removed from the middle", func(h *Harness, x *export) error {
		i := len(x.entries) / 2
		x.entries = append(x.entries[:i:i], x.entries[i+1:]...)
		return nil
	}))
	add(auditAttack("audit export without its signed range line", func(h *Harness, x *export) error {
		x.rng = nil
		return nil
	}))
	add(auditAttack("audit export cut and its range re-signed with another cluster's key (genuine key certificate kept)", func(h *Harness, x *export) error {
		o, err := h.other()
		if err != nil {
			return err
		}
		key, _ := o.AuditKey()
		x.entries = x.entries[3:]
		x.entries[len(x.entries)/2].Actor = "admin:nobody(operator)"
		x.rechain(0, key)
		return nil
	}))
	add(auditAttack("audit export rewritten and re-signed with another cluster's key and key certificate", func(h *Harness, x *export) error {
		o, err := h.other()
		if err != nil {
			return err
		}
		key, chain := o.AuditKey()
		var hdr cluster.AuditHeader
		if err := json.Unmarshal(x.header, &hdr); err != nil {
			return err
		}
		var pemChain []byte
		for _, c := range chain {
			pemChain = append(pemChain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		hdr.KeyCertificate = string(pemChain)
		if x.header, err = json.Marshal(hdr); err != nil {
			return err
		}
		x.entries[len(x.entries)/2].Actor = "admin:nobody(operator)"
		x.rechain(0, key)
		return nil
	}))
	add(Attack{Name: "filtered audit export (--since) with its first entries dropped and the header's since moved", Category: catAudit, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			x, err := parseExport(h.trust().export)
			if err != nil {
				return err
			}
			// A filter that starts at an entry some seconds into the suite.
			since := x.entries[len(x.entries)/2].Time.Truncate(time.Second).Add(time.Second)
			a, err := h.auditorGet("/admin/v1/audit?format=jsonl&since=" + url.QueryEscape(since.UTC().Format(time.RFC3339)))
			if err != nil {
				return err
			}
			if f := h.verifyExport(a.Body); len(f) > 0 {
				return fmt.Errorf("the untouched filtered export does not verify: %s", strings.Join(f, "; "))
			}
			h.trust().export = a.Body
			return nil
		},
		Attack: func(h *Harness) Result {
			x, err := parseExport(h.trust().export)
			if err != nil || len(x.entries) < 4 {
				return harnessErr("filtered export: %v (%d entries)", err, len(x.entries))
			}
			x.entries = x.entries[3:]
			var hdr map[string]any
			if err := json.Unmarshal(x.header, &hdr); err != nil {
				return harnessErr("%v", err)
			}
			hdr["since"] = x.entries[0].Time
			x.header, _ = json.Marshal(hdr)
			return findings(h.verifyExport(x.bytes()))
		}})
	add(Attack{Name: "CSV audit export with its last 3 entries cut", Category: catAudit, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			if err := h.auditedWrite(); err != nil {
				return err
			}
			a, err := h.auditorGet("/admin/v1/audit?format=csv")
			if err != nil {
				return err
			}
			if f := h.verifyExport(a.Body); len(f) > 0 {
				return fmt.Errorf("the untouched CSV export does not verify: %s", strings.Join(f, "; "))
			}
			h.trust().export = a.Body
			return nil
		},
		Attack: func(h *Harness) Result {
			recs, err := csv.NewReader(bytes.NewReader(h.trust().export)).ReadAll()
			if err != nil || len(recs) < 6 || recs[len(recs)-1][0] != "range" {
				return harnessErr("CSV export: %v (%d records)", err, len(recs))
			}
			recs = append(recs[:len(recs)-4:len(recs)-4], recs[len(recs)-1])
			var b bytes.Buffer
			w := csv.NewWriter(&b)
			if err := w.WriteAll(recs); err != nil {
				return harnessErr("%v", err)
			}
			return findings(h.verifyExport(b.Bytes()))
		}})
	add(Attack{Name: "audit export older than a head the auditor kept (--expect-head)", Category: catAudit, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			head, err := h.auditHead()
			if err != nil {
				return err
			}
			raw, err := h.exportAudit()
			if err != nil {
				return err
			}
			if f := h.verifyExport(raw, head); len(f) > 0 {
				return fmt.Errorf("a fresh export against an earlier head: %s", strings.Join(f, "; "))
			}
			h.trust().export = raw
			return nil
		},
		Attack: func(h *Harness) Result {
			// The chain moves on (an operator's change, then a checkpoint);
			// the auditor keeps the new head; the attacker serves the older
			// export.
			if err := h.auditedWrite(); err != nil {
				return harnessErr("%v", err)
			}
			if a, err := h.operatorSend(http.MethodPost, "/admin/v1/audit/checkpoint", "application/json", []byte(`{}`)); err != nil || a.Status != http.StatusOK {
				return harnessErr("checkpoint: %v %v", a.Result, err)
			}
			head, err := h.auditHead()
			if err != nil {
				return harnessErr("%v", err)
			}
			return findings(h.verifyExport(h.trust().export, head))
		}})
	add(Attack{Name: "filtered audit export (--since) that starts after every head the auditor kept (--expect-head compares nothing)", Category: catAudit, Expect: ExpectFinding,
		Control: func(h *Harness) error {
			// The head the auditor keeps and an entry after it; then
			// entries a second later, exported --since that second (so
			// not from right after the head, whose hash the first prev
			// would name), with a head they reach.
			head, err := h.auditHead()
			if err != nil {
				return err
			}
			h.trust().oldHead = head
			if err := h.auditedWrite(); err != nil {
				return err
			}
			time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))
			since := time.Now().Truncate(time.Second)
			if err := h.auditedWrite(); err != nil {
				return err
			}
			now, err := h.auditHead()
			if err != nil {
				return err
			}
			a, err := h.auditorGet("/admin/v1/audit?format=jsonl&since=" + url.QueryEscape(since.UTC().Format(time.RFC3339)))
			if err != nil {
				return err
			}
			if f := h.verifyExport(a.Body, now); len(f) > 0 {
				return fmt.Errorf("a filtered export against a head it reaches: %s", strings.Join(f, "; "))
			}
			h.trust().sinceExport = a.Body
			return nil
		},
		Attack: func(h *Harness) Result {
			// Served to an auditor holding only the older head: nothing
			// in the export can be compared with it.
			return findings(h.verifyExport(h.trust().sinceExport, h.trust().oldHead))
		}})

	// ---- revocation race ----
	add(Attack{Name: "revoke while a renewal is in flight: refused, and every serial the device had is on /crl", Category: catRevoke, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			e, err := h.enrolled()
			if err != nil {
				return err
			}
			h.trust().crlDev = e
			return certified(h.renew(RenewFlow{E: e}))
		},
		Attack: func(h *Harness) Result {
			e := h.trust().crlDev
			if e == nil {
				return harnessErr("no enrolled device (control failed)")
			}
			r := h.renew(RenewFlow{E: e, BeforeRenew: func(h *Harness) error {
				_, err := h.Env.App.RevokeDevice(h.Ctx, e.ID.DeviceID, "adversary", "race")
				return err
			}})
			d, err := h.Env.App.Node().Device(e.ID.DeviceID)
			if err != nil {
				return harnessErr("%v", err)
			}
			a := h.send(nil, http.MethodGet, api.PathCRL, "", nil)
			crl, err := x509.ParseRevocationList(a.Body)
			if err != nil {
				return harnessErr("CRL: %v (%v)", err, a.Result)
			}
			on := map[string]bool{}
			for _, rc := range crl.RevokedCertificateEntries {
				on[rc.SerialNumber.Text(16)] = true
			}
			var missing []string
			for _, s := range append([]string{d.CertificateSerial}, d.Serials...) {
				if s != "" && !on[strings.ToLower(s)] {
					missing = append(missing, s)
				}
			}
			switch {
			case d.Status != "revoked":
				r.Violation = "the device is " + d.Status + " after revoke"
			case len(d.Serials) < 2:
				r.Harness = fmt.Errorf("the device has %d serials; the control's renewal should have made 2", len(d.Serials))
			case len(missing) > 0:
				r.Violation = fmt.Sprintf("serials of the revoked device missing from /crl: %v", missing)
			}
			return r
		}})

	add(Attack{Name: "re-enrollment of a revoked device (same EK, new AK)", Category: catRevoke, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			e, err := h.enrolled()
			if err != nil {
				return err
			}
			h.trust().reDev = e
			_, err = h.enroll(e.TPM, fwclient.WithClaims(api.Claims{Model: modelPlain}))
			return err
		},
		Attack: func(h *Harness) Result {
			e := h.trust().reDev
			if e == nil {
				return harnessErr("no enrolled device (control failed)")
			}
			if _, err := h.Env.App.RevokeDevice(h.Ctx, e.ID.DeviceID, "adversary", "test"); err != nil {
				return harnessErr("revoke: %v", err)
			}
			h.Arm()
			return h.run(Flow{Dev: e.Dev, Model: modelPlain})
		}})

	// ---- no write before possession ----
	add(Attack{Name: "completes with a victim's public EK, no activation and a 512 KiB log: nothing committed", Category: catFlood, Expect: ExpectProblem,
		Control: func(h *Harness) error { return certified(h.run(h.plainFlow())) },
		Attack: func(h *Harness) Result {
			victim := h.peer()
			node := h.Env.App.Node()
			recs, err := node.Attestations(cluster.AttestationQuery{DeviceID: victim.ID.DeviceID})
			if err != nil {
				return harnessErr("%v", err)
			}
			before, err := h.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			const n = 3
			var last Result
			for i := 0; i < n; i++ {
				f := h.plainFlow()
				f.Dev = h.dev(devOther)
				f.Log = randomBytes(512 << 10)
				f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
					v, err := fwclientChallenge(victim.Dev, s.AK)
					req.EKCertificate, req.EKPublic = v.EKCertificate, v.EKPublic
					return err
				}
				if last = h.run(f); last.Problem == nil || last.Status/100 != 4 {
					return last
				}
			}
			after, err := h.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			recsAfter, err := node.Attestations(cluster.AttestationQuery{DeviceID: victim.ID.DeviceID})
			if err != nil {
				return harnessErr("%v", err)
			}
			switch {
			case len(recsAfter) != len(recs):
				last.Violation = fmt.Sprintf("the victim's records went from %d to %d", len(recs), len(recsAfter))
			case after-before > 1: // a refusal summary may land meanwhile
				last.Violation = fmt.Sprintf("the Raft log grew by %d entries for %d unproven completes", after-before, n)
			}
			return last
		}})

	// One device certificate must not write without end: renewals refused
	// before their evidence is judged are counted, not committed.
	add(Attack{Name: "flood of 20 renewals with bad tokens from one device certificate: nothing committed", Category: catFlood, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			e, err := h.enrolled()
			if err != nil {
				return err
			}
			return certified(h.renew(RenewFlow{E: e}))
		},
		Attack: func(h *Harness) Result {
			e, err := h.enrolled()
			if err != nil {
				return harnessErr("%v", err)
			}
			badToken := func(*Harness) (string, error) { return "x", nil }
			h.renew(RenewFlow{E: e, Token: badToken}) // the term's first linearizable read may append a barrier
			before, err := h.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			const n = 20
			var last Result
			for i := 0; i < n; i++ {
				if last = h.renew(RenewFlow{E: e, Token: badToken}); last.Problem == nil || last.Status/100 != 4 {
					return last
				}
			}
			after, err := h.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			if after-before > 1 { // a refusal summary may land meanwhile
				last.Violation = fmt.Sprintf("the Raft log grew by %d entries for %d bad renewal tokens", after-before, n)
			}
			return last
		}})

	// ---- policy apply: templates that could name an identity ----
	add(policyApplyAttack("policy apply: URI template rendering the serial into a SPIFFE ID", func(p *attest.CertProfile) {
		p.URIs = []string{td + "/{{.Serial}}"}
	}))
	add(policyApplyAttack("policy apply: URI template for an admin SPIFFE ID", func(p *attest.CertProfile) {
		p.URIs = []string{td + "/admin/operator/{{.Model}}"}
	}))
	add(policyApplyAttack("policy apply: DNS template that is a bare placeholder", func(p *attest.CertProfile) {
		p.DNSNames = []string{"{{.Serial}}"}
	}))
	add(policyApplyAttack("policy apply: DNS template whose last label is a placeholder", func(p *attest.CertProfile) {
		p.DNSNames = []string{"devices.{{.Serial}}"}
	}))
	add(policyApplyAttack("policy apply: URI template with a placeholder in the authority", func(p *attest.CertProfile) {
		p.URIs = []string{"https://{{.Serial}}/inventory"}
	}))

	// ---- a follower's clock ----
	add(Attack{Name: "forwarded join-token consume stamped by a lagging follower's clock (expired by the leader's)", Category: catJoin, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			r, used := h.forwardConsume(time.Minute)
			if r.Status != http.StatusOK || !used {
				return fmt.Errorf("forwarded consume of a live token: %v (used: %v)", r, used)
			}
			return nil
		},
		Attack: func(h *Harness) Result {
			r, used := h.forwardConsume(-time.Minute)
			if used {
				r.Violation = "the expired token was consumed"
			}
			return r
		}})

	// ---- policy changes reach renewals ----
	add(Attack{Name: "renewal after a new policy tightened the device's group (event log now required)", Category: catRenew, Expect: ExpectProblem,
		Control: (*Harness).regroupControl,
		Attack:  (*Harness).regroupAttack})

	// ---- rate limiting ----
	add(Attack{Name: "one client past its rate limit (429 rate_limited with Retry-After)", Category: catRate, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			o, err := h.other()
			if err != nil {
				return err
			}
			hc := clientFor(o)
			defer hc.CloseIdleConnections()
			h.NoRetry = true
			defer func() { h.NoRetry = false }()
			r := h.sendTo(hc, "https://"+o.Addr(), http.MethodGet, api.PathCRL, "", nil).Result
			return mustf(r.Status == http.StatusOK, "GET /crl within the limit: %v", r)
		},
		Attack: func(h *Harness) Result {
			o, err := h.other()
			if err != nil {
				return harnessErr("%v", err)
			}
			hc := clientFor(o)
			defer hc.CloseIdleConnections()
			h.NoRetry = true
			defer func() { h.NoRetry = false }()
			var r Result
			for i := 0; i < 12; i++ {
				if r = h.sendTo(hc, "https://"+o.Addr(), http.MethodGet, api.PathCRL, "", nil).Result; r.Status != http.StatusOK {
					break
				}
			}
			switch {
			case r.Status != http.StatusTooManyRequests:
				r.Violation = fmt.Sprintf("12 requests at once from one client, none throttled (last: %v)", r)
			case r.Problem == nil || r.Problem.Code != api.CodeRateLimited:
				r.Violation = "429 without the rate_limited code"
			case r.RetryAfter == "":
				r.Violation = "429 without Retry-After"
			}
			return r
		}})

	add(Attack{Name: "a challenge past the node's bound on enrollments in progress (503 overloaded, Retry-After, body unread, no Raft entry)", Category: catRate, Expect: ExpectShed,
		Control: func(h *Harness) error {
			g, err := h.gated()
			if err != nil {
				return err
			}
			hc := clientFor(g)
			defer hc.CloseIdleConnections()
			h.NoRetry = true
			defer func() { h.NoRetry = false }()
			r := h.sendTo(hc, "https://"+g.Addr(), http.MethodPost, api.PathChallenge, "application/json", []byte(`{}`)).Result
			return mustf(r.Status == http.StatusBadRequest && r.Problem != nil && r.Problem.Code == api.CodeMalformed,
				"a challenge within the bound is handled (400 malformed_request): %v", r)
		},
		Attack: (*Harness).overloadAttack})

	// ---- backups (last: the controls restore the registry) ----
	add(backupAttack("backup with a revoked device edited to active in the registry", "does not match its checksum", func(h *Harness, names *[]string, f map[string][]byte) error {
		var err error
		f["state.db"], err = unrevoke(f["state.db"])
		return err
	}))
	add(backupAttack("backup with the registry edited and SHA256SUMS recomputed", "signature", func(h *Harness, names *[]string, f map[string][]byte) error {
		var err error
		f["state.db"], err = unrevoke(f["state.db"])
		resum(*names, f)
		return err
	}))
	add(backupAttack("backup with an EK root added and SHA256SUMS recomputed", "signature", func(h *Harness, names *[]string, f map[string][]byte) error {
		f["ek-roots.pem"] = append(bytes.Clone(f["ek-roots.pem"]), h.foreignMfrRoot()...)
		resum(*names, f)
		return nil
	}))
	add(backupAttack("backup without its SIGNATURE", "not signed", func(h *Harness, names *[]string, f map[string][]byte) error {
		var err error
		f["state.db"], err = unrevoke(f["state.db"])
		resum(*names, f)
		delete(f, "SIGNATURE")
		return err
	}))
	add(backupAttack("backup re-signed with another cluster's key (and its CA files)", "not certified by this cluster", func(h *Harness, names *[]string, f map[string][]byte) error {
		o, err := h.other()
		if err != nil {
			return err
		}
		if f["state.db"], err = unrevoke(f["state.db"]); err != nil {
			return err
		}
		pemOf := func(c *x509.Certificate) []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		f["ca/root.crt"] = pemOf(o.Root())
		key, chain := o.AuditKey()
		f["ca/intermediate.crt"] = pemOf(chain[len(chain)-1])
		resum(*names, f)
		var chainPEM []byte
		for _, c := range chain {
			chainPEM = append(chainPEM, pemOf(c)...)
		}
		sig, _ := json.Marshal(map[string]string{"key_certificate": string(chainPEM),
			"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(key, append([]byte("gatehouse-backup-signature/v1\n"), f["SHA256SUMS"]...)))})
		f["SIGNATURE"] = sig
		return nil
	}))
	add(backupAttack("another cluster's genuine backup", "not this cluster", func(h *Harness, names *[]string, f map[string][]byte) error {
		if _, err := h.other(); err != nil {
			return err
		}
		var b bytes.Buffer
		if err := server.NewAdminClient(h.trust().otherDir).Backup(h.Ctx, &b); err != nil {
			return err
		}
		n, files, err := backupFiles(b.Bytes())
		if err != nil {
			return err
		}
		*names = n
		clear(f)
		for k, v := range files {
			f[k] = v
		}
		return nil
	}))
	return as
}

// foreignMfrRoot is the root of a TPM manufacturer the appliance does not
// trust (PEM).
func (h *Harness) foreignMfrRoot() []byte {
	st := h.trust()
	if st.foreignRoot == nil {
		st.foreignRoot = swtpm.NewTestManufacturer(h.T).RootPEM()
	}
	return st.foreignRoot
}
