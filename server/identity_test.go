package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"go.step.sm/crypto/pemutil"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

const td = servertest.TrustDomain

// forgedCert signs a client certificate with the appliance's own
// intermediate key but outside every issuance function: a stand-in for a
// path that went wrong. marks are the issuance-path policy OIDs it carries.
func forgedCert(t *testing.T, e *env, uris []string, marks ...ca.Path) tls.Certificate {
	t.Helper()
	caDir := filepath.Join(e.Dir, "ca")
	keyPEM, err := os.ReadFile(filepath.Join(caDir, "intermediate.key"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pemutil.Parse(keyPEM, pemutil.WithPassword(servertest.Password))
	if err != nil {
		t.Fatal(err)
	}
	interPEM, err := os.ReadFile(filepath.Join(caDir, ca.IntermediateCertFile))
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pemutil.ParseCertificate(interPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	for _, p := range marks {
		oid, ok := ca.PathOID(p)
		if !ok {
			t.Fatalf("no OID for %s", p)
		}
		tmpl.Policies = append(tmpl.Policies, oid)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, inter.Raw}, PrivateKey: key}
}

// nodeCert is a genuine node certificate from the appliance's CA.
func nodeCert(t *testing.T, e *env, nodeID string) tls.Certificate {
	t.Helper()
	c, err := ca.Open(filepath.Join(e.Dir, "ca"), servertest.Password)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cert, err := c.IssueNode(nodeID, td, []string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// mtlsClient always presents cert (nil: none).
func mtlsClient(e *env, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: api.WrapTransport(&http.Transport{TLSClientConfig: cfg})}
}

// call sends a JSON body (nil: none) and returns the status and problem code.
func call(t *testing.T, hc *http.Client, method, u string, body []byte) (int, string) {
	t.Helper()
	var r io.Reader = http.NoBody
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, u, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "tls: " + err.Error()
	}
	defer resp.Body.Close()
	var p api.Problem
	_ = json.NewDecoder(resp.Body).Decode(&p)
	return resp.StatusCode, p.Code
}

// Device claims never become admin or node identities: a policy whose
// templates could produce one is refused at apply; claimed values are
// escaped in URIs and refused where they would add DNS labels or
// wildcards; and the certificate a hostile claim does get passes neither
// admin nor cluster routes.
func TestClaimsNeverBecomeIdentities(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	adm := server.NewAdminClient(e.Dir)
	for _, cert := range []string{
		`"uris":["spiffe://` + td + `/{{.Serial}}"]`,
		`"uris":["spiffe://` + td + `/admin/operator/{{.Model}}"]`,
		`"uris":["spiffe://` + td + `/node/x"]`,
		`"uris":["https://{{.Serial}}/x"]`,
		`"dns_names":["{{.Serial}}"]`,
		`"dns_names":["*.devices.example.com"]`,
		`"dns_names":["{{.Serial}}.0.0.1"]`, // could name the node's 127.0.0.1
	} {
		doc := `{"groups":[{"name":"g","mode":"auto","certificate":{` + cert + `}}]}`
		var p *api.Problem
		if _, err := adm.ApplyPolicy(ctx, "test", []byte(doc)); !errors.As(err, &p) || p.Status != http.StatusBadRequest {
			t.Errorf("policy %s applied: %v", cert, err)
		}
	}
	applyPolicy(t, e, `{"groups":[
		{"name":"uri","mode":"auto","match":{"models":["u"]},"certificate":{"uris":["https://inventory.example.com/devices/{{.Serial}}"]}},
		{"name":"dns","mode":"auto","match":{"models":["d"]},"certificate":{"dns_names":["{{.Serial}}.devices.example.com"]}}]}`)

	// A serial naming the admin namespace: escaped into one path segment.
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithClaims(api.Claims{Serial: "admin/operator/x", Model: "u"}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range id.Certificate.URIs {
		got = append(got, u.String())
	}
	want := []string{"spiffe://" + td + "/device/" + id.DeviceID, "https://inventory.example.com/devices/admin%2Foperator%2Fx"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("URIs %v, want %v", got, want)
	}
	cert, key, err := id.TLSCertificate(d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	hc := mtlsClient(e, &cert)
	if st, code := call(t, hc, http.MethodGet, e.URL()+"/admin/v1/devices?stale=true", nil); st != http.StatusForbidden || code != api.CodeForbidden {
		t.Errorf("admin route: %d %s", st, code)
	}
	if st, code := call(t, hc, http.MethodPost, e.URL()+"/cluster/v1/read-index", []byte("{}")); st != http.StatusUnauthorized || code != api.CodeUnauthenticated {
		t.Errorf("cluster route: %d %s", st, code)
	}
	if st, _ := call(t, hc, http.MethodGet, e.URL()+api.PathWhoAmI, nil); st != http.StatusOK {
		t.Errorf("its own device route: %d", st)
	}

	// Serials that would add a label or a wildcard to a DNS name: refused
	// with their own code, and no certificate.
	for _, serial := range []string{"*", "node.x", "a.b.c"} {
		d := servertest.NewDevice(t, e.Mfr)
		var p *api.Problem
		if id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithClaims(api.Claims{Serial: serial, Model: "d"})); !errors.As(err, &p) || p.Code != api.CodeClaimInvalid || p.Status != http.StatusForbidden {
			t.Errorf("serial %q: %v (identity %v)", serial, err, id)
		}
	}
	d2 := servertest.NewDevice(t, e.Mfr)
	id2, err := e.Client.Enroll(ctx, d2.TPM, fwclient.WithClaims(api.Claims{Serial: "SN-7", Model: "d"}))
	if err != nil || len(id2.Certificate.DNSNames) != 1 || id2.Certificate.DNSNames[0] != "SN-7.devices.example.com" {
		t.Fatalf("plain serial: %v %v", err, id2)
	}
}

// Renewal with an AK that is not the device's enrolled one is a refusal
// with its own code, not an internal error.
func TestRenewalWithAnotherDevicesAK(t *testing.T) {
	e := newEnv(t)
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	m := e.mtlsDevice(t, d, id)
	otherAK := servertest.NewDevice(t, e.Mfr).NewAK(t, goattest.ECDSA)
	p := m.post(api.PathRenew, renewalWithAK(m.renewChallenge().SessionToken, otherAK), nil)
	if p == nil || p.Status != http.StatusForbidden || p.Code != api.CodeRenewalIdentity {
		t.Fatalf("renewal with another device's AK: %+v", p)
	}
}

// renewalWithAK is a renewal request naming ak, with placeholder evidence:
// the AK check refuses it before the evidence is read.
func renewalWithAK(token string, ak *goattest.AK) api.RenewRequest {
	return api.RenewRequest{SessionToken: token, AKPublic: ak.AttestationParameters().Public,
		Quote: api.Quote{Quote: []byte{1}, Signature: []byte{2}}, PCRs: []api.PCR{{Index: 0, Bank: "sha256", Digest: make([]byte, 32)}}, CSR: []byte{3}}
}

// Every JSON endpoint refuses a body not declared application/json.
func TestJSONEndpointsRefuseOtherMediaTypes(t *testing.T) {
	e := newEnv(t)
	op := adminCert(t, e, ca.RoleOperator, "olga")
	node := nodeCert(t, e, "node-x")
	for _, tc := range []struct {
		cert *tls.Certificate
		path string
	}{
		{nil, api.PathChallenge},
		{nil, api.PathComplete},
		{nil, "/cluster/v1/join"},
		{&node, "/cluster/v1/apply"},
		{&node, "/cluster/v1/members"},
		{&node, "/cluster/v1/leader-op"},
		{&op, "/admin/v1/devices/x/disable"},
		{&op, "/admin/v1/policy/test"},
		{&op, "/admin/v1/cluster/tokens"},
	} {
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", ""} {
			req, _ := http.NewRequest(http.MethodPost, e.URL()+tc.path, strings.NewReader(`{}`))
			if ct != "" {
				req.Header.Set("Content-Type", ct)
			}
			resp, err := mtlsClient(e, tc.cert).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var p api.Problem
			_ = json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnsupportedMediaType || p.Code != api.CodeUnsupportedMediaType {
				t.Errorf("POST %s as %q: %d %s", tc.path, ct, resp.StatusCode, p.Code)
			}
		}
	}
}

// A revoked admin certificate gets nothing from a follower that cannot
// confirm the committed state, ?stale=true or not: revocation is judged
// linearizably.
func TestRevokedAdminOnStaleFollower(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	follower, _ := e.Join(t, "node-2")
	servertest.WaitFor(t, "two voters", 20*time.Second, func() bool { return voters(e.App) == 2 })
	aud := adminCert(t, e, ca.RoleAuditor, "audrey")
	viaFollower := server.NewRemoteAdminClient("https://"+follower.Addr(), aud, e.App.Root())
	viaFollower.StaleReads = true
	if _, err := viaFollower.Devices(ctx, ""); err != nil {
		t.Fatalf("stale read before revocation: %v", err)
	}
	leaf, _ := x509.ParseCertificate(aud.Certificate[0])
	if err := server.NewAdminClient(e.Dir).RevokeAdminCert(ctx, leaf.SerialNumber.Text(16), "olga", "left"); err != nil {
		t.Fatal(err)
	}
	var p *api.Problem
	if _, err := viaFollower.Devices(ctx, ""); !errors.As(err, &p) || p.Code != api.CodeCertificateRevoked {
		t.Fatalf("revoked, stale read on the follower: %v", err)
	}
	// The leader goes away: the follower cannot know what was revoked
	// since, so an admin certificate gets no stale read either.
	aud2 := adminCert(t, e, ca.RoleAuditor, "bert")
	viaFollower2 := server.NewRemoteAdminClient("https://"+follower.Addr(), aud2, e.App.Root())
	viaFollower2.StaleReads = true
	if _, err := viaFollower2.Devices(ctx, ""); err != nil {
		t.Fatalf("stale read: %v", err)
	}
	e.App.Close()
	servertest.WaitFor(t, "the follower to lose its leader", 10*time.Second, func() bool { return !follower.Node().IsLeader() && follower.Node().LeaderID() == "" })
	if _, err := viaFollower2.Devices(ctx, ""); !errors.As(err, &p) || p.Code != api.CodeUnavailable {
		t.Fatalf("stale read with an admin certificate on a leaderless follower: %v", err)
	}
}

// One device certificate cannot make the cluster write without end: a
// renewal refused before its evidence is judged (a bad token) is counted,
// not committed, and leaves the device's flags alone; a refusal that judged
// the evidence (another device's AK) is committed and quarantines the
// device, so those are bounded.
func TestDeviceCannotFloodRenewalRefusals(t *testing.T) {
	e := newEnv(t)
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	m := e.mtlsDevice(t, d, id)
	// The first linearizable read of a term appends Raft's barrier: take it
	// before counting.
	m.post(api.PathRenew, api.RenewRequest{SessionToken: "x"}, nil)
	before := lastLogIndex(t, e.App)
	for range 50 {
		if p := m.post(api.PathRenew, api.RenewRequest{SessionToken: "x"}, nil); p == nil || p.Code != api.CodeTokenInvalid || p.AttestationID != 0 {
			t.Fatalf("bad renewal token: %+v, want an unrecorded %s", p, api.CodeTokenInvalid)
		}
	}
	if after := lastLogIndex(t, e.App); after != before {
		t.Fatalf("50 refused renewal tokens grew the Raft log from %d to %d", before, after)
	}
	dev, err := e.App.Node().Device(id.DeviceID)
	if err != nil || dev.Status != cluster.DeviceActive || len(dev.Flags) != 0 {
		t.Fatalf("device after the flood: %+v, %v", dev, err)
	}

	// Control: a judged refusal is recorded and quarantines the device.
	otherAK := servertest.NewDevice(t, e.Mfr).NewAK(t, goattest.ECDSA)
	p := m.post(api.PathRenew, renewalWithAK(m.renewChallenge().SessionToken, otherAK), nil)
	if p == nil || p.Code != api.CodeRenewalIdentity || p.AttestationID == 0 {
		t.Fatalf("renewal with another device's AK: %+v, want a recorded %s", p, api.CodeRenewalIdentity)
	}
	if dev, err := e.App.Node().Device(id.DeviceID); err != nil || dev.Status != cluster.DeviceQuarantined {
		t.Fatalf("device after a judged refusal: %+v, %v", dev.Status, err)
	}
}
