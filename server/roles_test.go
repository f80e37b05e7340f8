package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// adminCert has the appliance issue an admin certificate for a fresh key.
func adminCert(t testing.TB, e *env, role, name string) tls.Certificate {
	t.Helper()
	return e.AdminCert(t, role, name)
}

// foreignCert is an operator-looking admin certificate from another CA.
func foreignCert(t *testing.T) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Evil CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := url.Parse("spiffe://" + servertest.TrustDomain + "/admin/operator/mallory")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "mallory"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

var denialCodes = map[string]bool{api.CodeUnauthenticated: true, api.CodeForbidden: true, api.CodeCertificateRevoked: true}

// Every admin endpoint × every kind of caller against the expected table,
// over HTTPS: no certificate, a device certificate, a certificate from a
// foreign CA carrying an admin URI, an auditor, an operator. A request is
// allowed when it reached its handler (any answer but a refusal of the
// caller); zero unexpected allows and zero unexpected denials.
func TestAdminAuthorizationMatrix(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	deviceCert, deviceKey, err := id.TLSCertificate(d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	defer deviceKey.Close()
	admin := "spiffe://" + servertest.TrustDomain + "/admin/operator/mallory"
	callers := []struct {
		name string
		cert *tls.Certificate
		role string // the role the caller should get; "" for none
	}{
		{"no certificate", nil, ""},
		{"device certificate", &deviceCert, ""},
		{"foreign CA", ptr(foreignCert(t)), ""},
		{"auditor", ptr(adminCert(t, e, ca.RoleAuditor, "audrey")), ca.RoleAuditor},
		{"operator", ptr(adminCert(t, e, ca.RoleOperator, "olga")), ca.RoleOperator},
		// Cross-namespace: this CA's signature, but not the admin path's.
		{"node certificate", ptr(nodeCert(t, e, "node-9")), ""},
		{"device path with an admin URI", ptr(forgedCert(t, e, []string{"spiffe://" + servertest.TrustDomain + "/device/" + id.DeviceID, admin}, ca.PathDevice)), ""},
		{"admin URI, device mark", ptr(forgedCert(t, e, []string{admin}, ca.PathDevice)), ""},
		{"admin URI, no mark", ptr(forgedCert(t, e, []string{admin})), ""},
		{"two admin SPIFFE IDs, admin mark", ptr(forgedCert(t, e, []string{admin, "spiffe://" + servertest.TrustDomain + "/admin/auditor/x"}, ca.PathAdmin)), ""},
	}
	routes := e.App.AdminRoutes()
	if len(routes) < 25 {
		t.Fatalf("only %d admin routes", len(routes))
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	var unexpected []string
	checked := 0
	for _, c := range callers {
		tlsCfg := &tls.Config{RootCAs: pool}
		if c.cert != nil {
			// Always send it: Go's client would otherwise keep quiet about a
			// certificate the server's CA list does not name.
			cert := c.cert
			tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		hc := &http.Client{Timeout: 30 * time.Second, Transport: api.WrapTransport(&http.Transport{TLSClientConfig: tlsCfg})}
		for _, r := range routes {
			method, path, _ := strings.Cut(r.Pattern, " ")
			path = strings.NewReplacer("{id}", "nonexistent", "{op}", "disable", "{name}", "nogroup").Replace(path)
			req, _ := http.NewRequestWithContext(ctx, method, e.URL()+path, strings.NewReader("{not json"))
			resp, err := hc.Do(req)
			allowed := false
			code := "tls: " + fmt.Sprint(err)
			if err == nil {
				var p api.Problem
				_ = json.NewDecoder(resp.Body).Decode(&p)
				resp.Body.Close()
				code = fmt.Sprintf("%d %s", resp.StatusCode, p.Code)
				allowed = !denialCodes[p.Code]
			}
			want := c.role == ca.RoleOperator || c.role == ca.RoleAuditor && r.Role == ca.RoleAuditor
			if allowed != want {
				unexpected = append(unexpected, fmt.Sprintf("%s: %s → %s (allowed=%v, want %v)", c.name, r.Pattern, code, allowed, want))
			}
			checked++
		}
		hc.CloseIdleConnections()
	}
	if len(unexpected) > 0 {
		t.Fatalf("%d of %d checks unexpected:\n%s", len(unexpected), checked, strings.Join(unexpected, "\n"))
	}
	// Refusals of callers the appliance could identify are audited.
	entries, err := e.App.Node().AuditEntries(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, en := range entries {
		if en.Type == cluster.AuditAdminDenied {
			denied++
		}
	}
	if denied == 0 {
		t.Fatal("no admin refusal reached the audit log")
	}
	// The foreign CA's certificate never got past TLS; that refusal is in
	// the log too (after a second, so the refusals above do not use up the
	// rate limit).
	time.Sleep(1100 * time.Millisecond)
	foreign := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return callers[2].cert, nil }}}}
	if _, err := foreign.Get(e.URL() + "/admin/v1/devices"); err == nil {
		t.Fatal("a foreign CA's certificate passed TLS")
	}
	servertest.WaitFor(t, "the refused TLS handshake in the audit log", 10*time.Second, func() bool {
		entries, _ := e.App.Node().AuditEntries(time.Time{}, 0)
		for _, en := range entries {
			if en.Type == cluster.AuditTLSRefused && strings.Contains(en.Detail, "certificate") {
				return true
			}
		}
		return false
	})
}

func ptr[T any](v T) *T { return &v }

// Each namespace's routes admit exactly the certificates its issuance path
// made: device mTLS (whoami), admin (status) and cluster (read-index), for
// genuine device, admin and node certificates and for certificates this
// CA's key signed with an identity outside the path that owns it (as a
// device profile with an admin or node URI used to produce).
func TestIdentityNamespacesMatrix(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	deviceCert, deviceKey, err := id.TLSCertificate(d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	defer deviceKey.Close()
	spiffe := "spiffe://" + servertest.TrustDomain
	dev, admin, node := spiffe+"/device/"+id.DeviceID, spiffe+"/admin/operator/mallory", spiffe+"/node/node-1"
	const (
		none = iota
		device
		adminNS
		cluster
	)
	callers := []struct {
		name  string
		cert  tls.Certificate
		admit int
	}{
		{"device", deviceCert, device},
		{"admin", adminCert(t, e, ca.RoleOperator, "olga"), adminNS},
		{"node", nodeCert(t, e, "node-9"), cluster},
		{"device path, admin URI second", forgedCert(t, e, []string{dev, admin}, ca.PathDevice), none},
		{"device path, node URI second", forgedCert(t, e, []string{dev, node}, ca.PathDevice), none},
		{"device path, node URI", forgedCert(t, e, []string{node}, ca.PathDevice), none},
		{"node URI, no mark", forgedCert(t, e, []string{node}), none},
		{"node URI, admin mark", forgedCert(t, e, []string{node}, ca.PathAdmin), none},
		{"node URI, node and device marks", forgedCert(t, e, []string{node}, ca.PathNode, ca.PathDevice), none},
		{"admin URI, server mark", forgedCert(t, e, []string{admin}, ca.PathServer), none},
		{"device URI, admin mark", forgedCert(t, e, []string{dev}, ca.PathAdmin), none},
		{"node URI twice", forgedCert(t, e, []string{node, spiffe + "/node/node-2"}, ca.PathNode), none},
		{"node URI, other trust domain", forgedCert(t, e, []string{"spiffe://other.example/node/node-1"}, ca.PathNode), none},
	}
	routes := []struct {
		ns           int
		method, path string
		body         []byte
	}{
		{device, http.MethodGet, api.PathWhoAmI, nil},
		{adminNS, http.MethodGet, "/admin/v1/status", nil},
		{cluster, http.MethodPost, "/cluster/v1/read-index", []byte("{}")},
	}
	var unexpected []string
	for _, c := range callers {
		hc := mtlsClient(e, &c.cert)
		for _, r := range routes {
			status, code := call(t, hc, r.method, e.URL()+r.path, r.body)
			allowed := status == http.StatusOK
			if allowed != (c.admit == r.ns) {
				unexpected = append(unexpected, fmt.Sprintf("%s: %s %s → %d %s", c.name, r.method, r.path, status, code))
			}
			if !allowed && !denialCodes[code] {
				unexpected = append(unexpected, fmt.Sprintf("%s: %s %s refused without a refusal code: %d %q", c.name, r.method, r.path, status, code))
			}
		}
		hc.CloseIdleConnections()
	}
	if len(unexpected) > 0 {
		t.Fatalf("%d unexpected:\n%s", len(unexpected), strings.Join(unexpected, "\n"))
	}
}

// The operator's certificate drives the CLI's remote client; its actor is
// the certificate's name, whatever the request claims.
func TestRemoteAdminActor(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	op := server.NewRemoteAdminClient(e.URL(), adminCert(t, e, ca.RoleOperator, "olga"), e.App.Root())
	dev, err := op.TransitionDevice(ctx, id.DeviceID, cluster.OpDisable, "someone-else", "maintenance")
	if err != nil {
		t.Fatal(err)
	}
	if got := dev.History[0].Actor; got != "admin:olga(operator)" {
		t.Fatalf("actor %q", got)
	}
	audCert := adminCert(t, e, ca.RoleAuditor, "audrey")
	aud := server.NewRemoteAdminClient(e.URL(), audCert, e.App.Root())
	if _, err := aud.Devices(ctx, ""); err != nil {
		t.Fatalf("auditor read: %v", err)
	}
	defer func() {
		// Revoked, the auditor's certificate gets nothing on any route.
		leaf, _ := x509.ParseCertificate(audCert.Certificate[0])
		if err := op.RevokeAdminCert(ctx, leaf.SerialNumber.Text(16), "olga", "left the company"); err != nil {
			t.Fatal(err)
		}
		var p *api.Problem
		if _, err := aud.Devices(ctx, ""); !errors.As(err, &p) || p.Code != api.CodeCertificateRevoked {
			t.Fatalf("revoked auditor: %v", err)
		}
	}()
	var p *api.Problem
	if _, err := aud.TransitionDevice(ctx, id.DeviceID, cluster.OpEnable, "audrey", "x"); !errors.As(err, &p) || p.Code != api.CodeForbidden {
		t.Fatalf("auditor write: %v", err)
	}
	var buf bytes.Buffer
	if err := aud.ExportAudit(ctx, time.Time{}, cluster.AuditJSONL, &buf); err != nil {
		t.Fatalf("auditor export: %v", err)
	}
	h, lines, err := cluster.ReadAudit(&buf)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := parsePEMChain([]byte(h.KeyCertificate))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.VerifyAuditKey(chain, e.App.Root())
	if err != nil {
		t.Fatal(err)
	}
	if rep := cluster.VerifyAudit(lines, key); !rep.OK() || rep.SignedUpTo != rep.LastSeq-1 {
		t.Fatalf("export does not verify: %+v", rep)
	}
}

func parsePEMChain(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
