package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A revoked certificate authenticates no one: it must not exempt its holder
// from the per-client rate limit. Otherwise every request of a revoked
// admin (or device) costs the node a linearizable read, and, on admin
// routes, a refusal that is audited (up to the per-second limit), at the
// attacker's rate. A live operator certificate stays unlimited (control).
func TestRevokedCertificateIsRateLimited(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	opCert := adminCert(t, e, ca.RoleOperator, "olga")
	revCert := adminCert(t, e, ca.RoleAuditor, "mallory")
	leaf, _ := x509.ParseCertificate(revCert.Certificate[0])
	if err := server.NewAdminClient(e.Dir).RevokeAdminCert(ctx, leaf.SerialNumber.Text(16), "test", "key stolen"); err != nil {
		t.Fatal(err)
	}
	app := reopenThrottled(t, e.Env) // 3 at once, then 1 per second
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	statuses := func(cert tls.Certificate, n int) map[int]int {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
		out := map[int]int{}
		for range n {
			resp, err := hc.Get("https://" + app.Addr() + "/admin/v1/devices")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			out[resp.StatusCode]++
		}
		return out
	}
	if got := statuses(opCert, 8); got[http.StatusOK] != 8 {
		t.Fatalf("live operator certificate: %v, want 8 × 200", got)
	}
	got := statuses(revCert, 8)
	if got[http.StatusTooManyRequests] == 0 {
		t.Fatalf("revoked certificate: %v; none was rate-limited (a revoked certificate bypasses admission control)", got)
	}
	if got[http.StatusTooManyRequests]+got[http.StatusUnauthorized] != 8 {
		t.Fatalf("revoked certificate: %v, want only 401 and 429", got)
	}
}

// A device certificate must not carry the host name of any node of the
// cluster, not only of the node that applies the policy or issues: a
// policy on node-1 whose DNS template could produce node-2's name is
// refused, whichever node it is applied on.
func TestPolicyCannotNamePeerNode(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Applied before node-2 exists: it names no node yet.
	doc := `{"groups":[{"name":"g","mode":"auto","certificate":{"dns_names":["{{.Serial}}.nodes.example.com"]}}]}`
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.NodeID = "node-2"
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = servertest.FreeAddr(t)
	cfg.Hostnames = []string{"gh2.nodes.example.com", "127.0.0.1"}
	servertest.Unthrottled(&cfg)
	if err := server.Join(ctx, dir, servertest.Password, e.App.Addr(), tok.String(), cfg); err != nil {
		t.Fatal(err)
	}
	servertest.StartNode(t, dir)
	// Wait until node-2 has registered itself.
	for {
		ms, err := e.App.Node().Members()
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 2 && ms[0].APIAddr != "" && ms[1].APIAddr != "" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("node-2 did not register")
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Issuance on node-1 under the policy already in force: a device
	// claiming serial gh2 gets no certificate for node-2's name.
	d := servertest.NewDevice(t, e.Mfr)
	if id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithClaims(api.Claims{Serial: "gh2"})); err == nil {
		t.Fatalf("device certificate issued with DNS names %v", id.Certificate.DNSNames)
	} else if p := (*api.Problem)(nil); !errors.As(err, &p) || p.Code != api.CodePolicyDenied {
		t.Fatalf("enrollment naming node-2: %v, want %s", err, api.CodePolicyDenied)
	}
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(doc)); err == nil {
		t.Fatal("node-1 applied a policy whose DNS template could produce node-2's host name gh2.nodes.example.com")
	}
	// Control: a template that cannot produce any node's name.
	ok := `{"groups":[{"name":"g","mode":"auto","certificate":{"dns_names":["{{.Serial}}.devices.example.com"]}}]}`
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(ok)); err != nil {
		t.Fatalf("a policy naming no node: %v", err)
	}
}

// The TLS layer checks a client certificate's validity once, at the
// handshake; a kept-alive connection serves requests long after. An admin
// certificate that has expired must authorize nothing, even on a
// connection opened while it was valid.
func TestExpiredAdminCertOnKeptAliveConnection(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	resp, err := server.NewAdminClient(e.Dir).IssueAdminCert(ctx, ca.RoleOperator, "shortlived", csr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var cert tls.Certificate
	for rest := resp.Chain; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, blk.Bytes)
	}
	cert.PrivateKey = key
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	handshakes := 0
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { handshakes++; return &cert, nil }}}}
	get := func() int {
		resp, err := hc.Get(e.URL() + "/admin/v1/devices")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != http.StatusOK {
		t.Fatalf("valid operator certificate: %d", code)
	}
	for time.Now().Before(leaf.NotAfter.Add(500 * time.Millisecond)) {
		get() // keep the connection alive past the certificate's expiry
		time.Sleep(200 * time.Millisecond)
	}
	code := get()
	if handshakes != 1 {
		t.Fatalf("%d handshakes: the connection was not kept alive, the test proves nothing", handshakes)
	}
	if code != http.StatusUnauthorized {
		t.Fatalf("certificate expired at %s, request at %s on the kept-alive connection: %d, want 401", leaf.NotAfter.Format(time.RFC3339), time.Now().Format(time.RFC3339), code)
	}
}

// Deleting a device is final (it can never enroll or authenticate again),
// so its certificates must not stay valid for relying parties that check
// the CRL: delete revokes them as revoke does.
func TestDeleteRevokesCertificates(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, id.DeviceID, cluster.OpDelete, "test", "decommissioned"); err != nil {
		t.Fatal(err)
	}
	revoked, err := e.App.IsRevoked(id.Certificate.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	if !revoked {
		t.Fatalf("device %s deleted, its certificate %s is not revoked", id.DeviceID, id.Certificate.SerialNumber.Text(16))
	}
}
