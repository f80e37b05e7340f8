package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/x509util"
	xacme "golang.org/x/crypto/acme"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// newACMEEnv starts an appliance with ACME enabled (the test AK CA as the
// attestation root).
func newACMEEnv(t *testing.T, opts ...server.Option) (*env, *servertest.TestAKCA) {
	e := newEnv(t)
	aca := servertest.NewTestAKCA(t)
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}
	e.Start(append([]server.Option{aca.Option()}, opts...)...)
	applyPolicy(t, e, acmePolicy)
	return e, aca
}

// A device enrolled in Gatehouse gets a certificate through ACME
// device-attest-01: the registry records it (stage acme, its serial) before
// it exists, it is a device certificate (CN, SPIFFE ID, path mark, CRL DP,
// the permanent identifier), for the attested key; the order gets no second
// certificate; a CSR for another key is refused; after `devices revoke`
// the certificate is revoked and in the CRL, and the device cannot order.
func TestACMEDeviceAttest(t *testing.T) {
	e, aca := newACMEEnv(t)
	d := servertest.NewACMEDevice(t, e.Env, aca, "")
	c := servertest.ACMEClient(t, e.App)

	o, key, err := servertest.OrderAndProve(t, c, d, d.ID)
	if err != nil {
		t.Fatalf("order and prove: %v", err)
	}
	if o.Status != xacme.StatusReady {
		t.Fatalf("order status %s after the proof, want ready", o.Status)
	}
	// A CSR for another key than the attested one is refused at finalize.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := servertest.Finalize(c, o, other, ""); err == nil {
		t.Fatal("finalize with a CSR for a key the TPM did not attest succeeded")
	}
	chain, err := servertest.Finalize(c, o, key, d.ID)
	if err != nil {
		t.Fatalf("finalize: %v", err)
	}
	leaf := chain[0]
	if leaf.Subject.CommonName != d.ID {
		t.Errorf("CN %q, want the device ID %q", leaf.Subject.CommonName, d.ID)
	}
	if got, err := ca.ParseIdentity(leaf, servertest.TrustDomain); err != nil || got.Path != ca.PathDevice || got.ID != d.ID {
		t.Errorf("identity %+v %v, want device %s", got, err, d.ID)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("the certificate's key is not the attested TPM key")
	}
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != d.ID {
		t.Errorf("permanent identifiers %+v %v, want [%s]", sans.PermanentIdentifiers, err, d.ID)
	}
	if len(leaf.CRLDistributionPoints) != 1 || !strings.HasSuffix(leaf.CRLDistributionPoints[0], "/crl") {
		t.Errorf("CRL distribution points %v", leaf.CRLDistributionPoints)
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify against the Gatehouse root: %v", err)
	}
	settingsValidity := server.DefaultConfig().CertValidity.Duration
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < settingsValidity || got > settingsValidity+ca.MaxClockSkew+2*time.Minute {
		t.Errorf("validity %v, want the cluster setting %v", got, settingsValidity)
	}

	// The record came first, with the certificate's serial.
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.ID})
	if err != nil {
		t.Fatal(err)
	}
	var acmeRecs []cluster.AttestationRecord
	for _, r := range recs {
		if r.Stage == "acme" {
			acmeRecs = append(acmeRecs, r)
		}
	}
	if len(acmeRecs) != 1 || acmeRecs[0].Outcome != cluster.OutcomeAccepted || acmeRecs[0].CertificateSerial != leaf.SerialNumber.Text(16) {
		t.Fatalf("acme records %+v, want one accepted with serial %x", acmeRecs, leaf.SerialNumber)
	}
	if r := acmeRecs[0]; !r.CertificateNotBefore.Equal(leaf.NotBefore) || !r.CertificateNotAfter.Equal(leaf.NotAfter) {
		t.Errorf("record's validity %v..%v, certificate's %v..%v", r.CertificateNotBefore, r.CertificateNotAfter, leaf.NotBefore, leaf.NotAfter)
	}
	dev, _ := e.App.Node().Device(d.ID)
	if dev.CertificateSerial != leaf.SerialNumber.Text(16) {
		t.Errorf("device's current serial %s, want the ACME certificate's %x", dev.CertificateSerial, leaf.SerialNumber)
	}

	// Finalizing the same order again issues nothing new.
	before := lastLogIndex(t, e.App)
	if again, err := servertest.Finalize(c, o, key, d.ID); err == nil && again[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("a second certificate %x for one order", again[0].SerialNumber)
	}
	recs, _ = e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.ID})
	n := 0
	for _, r := range recs {
		if r.Stage == "acme" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d acme records after finalizing twice (log %d -> %d)", n, before, lastLogIndex(t, e.App))
	}

	// Revoking the device revokes the ACME certificate and bars new orders.
	if _, err := e.App.RevokeDevice(context.Background(), d.ID, "alice", "stolen"); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.App.IsRevoked(leaf.SerialNumber); err != nil || !ok {
		t.Fatalf("ACME certificate not revoked after devices revoke (%v)", err)
	}
	resp, err := e.HTTP.Get(e.URL() + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, r := range crl.RevokedCertificateEntries {
		listed = listed || r.SerialNumber.Cmp(leaf.SerialNumber) == 0
	}
	if !listed {
		t.Error("the CRL does not list the revoked ACME certificate")
	}
	if _, err := c.AuthorizeOrder(context.Background(), []xacme.AuthzID{{Type: "permanent-identifier", Value: d.ID}}); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("new-order for a revoked device: %v, want a refusal naming the state", err)
	}
}

// new-order is refused for anything but one permanent identifier, and for
// a known device that is not active or whose group does not admit ACME; an
// unknown device's order is admitted but cannot be finalized; an AK
// certificate for one device cannot prove another's identifier.
func TestACMEOrderRefusals(t *testing.T) {
	e, aca := newACMEEnv(t)
	ctx := context.Background()
	victim, err := e.Client.Enroll(ctx, servertest.NewDevice(t, e.Mfr).TPM)
	if err != nil {
		t.Fatal(err)
	}
	c := servertest.ACMEClient(t, e.App)
	for _, ids := range [][]xacme.AuthzID{
		{{Type: "dns", Value: "example.com"}}, // not a permanent identifier
		{{Type: "permanent-identifier", Value: victim.DeviceID}, {Type: "permanent-identifier", Value: victim.DeviceID + "x"}}, // two
	} {
		if _, err := c.AuthorizeOrder(ctx, ids); err == nil || servertest.ACMEProblem(err) != "urn:ietf:params:acme:error:rejectedIdentifier" {
			t.Errorf("new-order %+v: %v, want rejectedIdentifier", ids, err)
		}
	}
	// A group that does not admit ACME: refused, with the reason; the
	// positive control below runs after the policy admits it again.
	applyPolicy(t, e, `{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{}}]}`)
	if _, err := c.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: victim.DeviceID}}); err == nil ||
		servertest.ACMEProblem(err) != "urn:ietf:params:acme:error:unauthorized" || !strings.Contains(err.Error(), "does not set") {
		t.Fatalf("new-order in a group without acme: %v", err)
	}
	applyPolicy(t, e, acmePolicy)

	// A device ID the registry does not know: the order is admitted (the
	// step CLI orders before the attestation CA registers a new device)
	// and costs nothing; even proven with an AK certificate for that ID,
	// finalize is refused and nothing is recorded.
	unknown := strings.Repeat("0", 32)
	ghost := servertest.NewACMEDevice(t, e.Env, aca, unknown)
	before := lastLogIndex(t, e.App)
	if _, err := c.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: unknown}}); err != nil {
		t.Fatalf("new-order for a device not registered yet: %v", err)
	}
	if after := lastLogIndex(t, e.App); after != before {
		t.Fatalf("new-order for an unknown device appended %d Raft entries", after-before)
	}
	o, key, err := servertest.OrderAndProve(t, c, ghost, unknown)
	if err != nil {
		t.Fatalf("proof for the unknown ID: %v", err)
	}
	if _, err := servertest.Finalize(c, o, key, unknown); err == nil || !strings.Contains(err.Error(), "no device") {
		t.Fatalf("finalize for a device the registry does not know: %v", err)
	}
	if recs, _ := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: unknown}); len(recs) != 0 {
		t.Fatalf("%d records for the unknown device", len(recs))
	}

	// Positive control and the identity check: an AK certificate naming
	// the attacker's own device proves nothing about the victim.
	atk := servertest.NewACMEDevice(t, e.Env, aca, "")
	if _, _, err := servertest.OrderAndProve(t, c, atk, victim.DeviceID); err == nil {
		t.Fatal("an AK certificate for another device validated the victim's identifier")
	}
	o, key, err = servertest.OrderAndProve(t, c, atk, atk.ID)
	if err != nil {
		t.Fatalf("positive control: %v", err)
	}
	if _, err := servertest.Finalize(c, o, key, atk.ID); err != nil {
		t.Fatalf("positive control finalize: %v", err)
	}
}

// Only step-ca's ACME API and the read-only provisioner list are served:
// the native signing routes, which would issue without attestation, are
// not.
func TestACMENativeRoutesNotServed(t *testing.T) {
	e, _ := newACMEEnv(t)
	for _, p := range []string{"/sign", "/renew", "/rekey", "/revoke", "/1.0/sign", "/1.0/renew", "/ssh/sign", "/roots", "/root/x", "/federation"} {
		resp, err := e.HTTP.Post(e.URL()+p, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 404", p, resp.StatusCode)
		}
	}
	// ACME revoke-cert would revoke outside the registry: refused.
	resp, err := servertest.ACMEClient(t, e.App).HTTPClient.Post(e.URL()+"/acme/"+ca.ACMEProvisionerName+"/revoke-cert", "application/jose+json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("revoke-cert: %d, want 401", resp.StatusCode)
	}
	// Positive controls: the provisioner list and the ACME directory.
	resp, err = e.HTTP.Get(e.URL() + "/provisioners")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Provisioners []struct{ Type, Name string } `json:"provisioners"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(list.Provisioners) != 1 || list.Provisioners[0].Name != ca.ACMEProvisionerName || list.Provisioners[0].Type != "ACME" {
		t.Fatalf("GET /provisioners: %d %+v", resp.StatusCode, list)
	}
	// (The openapi check cannot route /acme/{rest} over several segments:
	// a client that does not check exchanges.)
	resp, err = servertest.ACMEClient(t, e.App).HTTPClient.Get(e.URL() + "/acme/" + ca.ACMEProvisionerName + "/directory")
	if err != nil {
		t.Fatal(err)
	}
	var dir map[string]any
	json.NewDecoder(resp.Body).Decode(&dir)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || dir["newOrder"] == nil {
		t.Fatalf("directory: %d %v", resp.StatusCode, dir)
	}
}

// An anonymous flood of new-nonce, new-account, refused new-order, accepted
// new-order (a known device, an unknown one) and failed device-attest-01
// challenges writes nothing to Raft,
// and the node-local state stays bounded; one proof then writes (positive
// control).
func TestACMEUnprovenFloodIsBounded(t *testing.T) {
	const n = 30
	e, aca := newACMEEnv(t)
	ctx := context.Background()
	d := servertest.NewACMEDevice(t, e.Env, aca, "")
	c := servertest.ACMEClient(t, e.App)
	junk, _ := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString([]byte("junk"))})
	nonceURL := "https://" + e.App.Addr() + "/acme/" + ca.ACMEProvisionerName + "/new-nonce"
	idxBefore := lastLogIndex(t, e.App)
	for i := 0; i < n; i++ {
		resp, err := c.HTTPClient.Head(nonceURL)
		if err != nil || resp.Header.Get("Replay-Nonce") == "" {
			t.Fatalf("new-nonce: %v", err)
		}
		resp.Body.Close()
		atk := servertest.ACMEClient(t, e.App) // new-account
		if _, err := atk.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "dns", Value: "example.com"}}); err == nil {
			t.Fatal("new-order for a DNS name accepted")
		}
		if _, err := atk.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: strings.Repeat("ab", 16)}}); err != nil {
			t.Fatalf("new-order for a device not registered yet: %v", err)
		}
		o, err := atk.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: d.ID}})
		if err != nil {
			t.Fatalf("new-order: %v", err)
		}
		az, err := atk.GetAuthorization(ctx, o.AuthzURLs[0])
		if err != nil {
			t.Fatal(err)
		}
		chal := az.Challenges[0]
		chal.Payload = junk
		if _, err := atk.Accept(ctx, chal); err == nil {
			if az, err = atk.GetAuthorization(ctx, o.AuthzURLs[0]); err != nil || az.Status == xacme.StatusValid {
				t.Fatalf("a junk attestation validated: %+v %v", az, err)
			}
		}
	}
	if after := lastLogIndex(t, e.App); after != idxBefore {
		t.Fatalf("the unproven flood appended %d Raft entries", after-idxBefore)
	}
	used, pending := e.App.ACMESizesForTest()
	if used > 10*n || pending > 10*n {
		t.Fatalf("node-local state after %d rounds: %d used nonces, %d pending updates", n, used, pending)
	}
	// Positive control: a proof writes (challenge, authorization, order).
	if _, _, err := servertest.OrderAndProve(t, c, d, d.ID); err != nil {
		t.Fatal(err)
	}
	if lastLogIndex(t, e.App) == idxBefore {
		t.Fatal("a proven challenge wrote nothing: the flood check proves nothing")
	}
}

// A nonce is accepted once: a replayed request is refused with badNonce
// on the node that saw it.
func TestACMENonceReplay(t *testing.T) {
	var logs bytes.Buffer
	e, _ := newACMEEnv(t, server.WithLogger(slog.New(slog.NewJSONHandler(&syncWriter{w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	base := "https://" + e.App.Addr() + "/acme/" + ca.ACMEProvisionerName
	hc := servertest.ACMEClient(t, e.App).HTTPClient
	resp, err := hc.Head(base + "/new-nonce")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("Replay-Nonce")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	body := servertest.SignACMEJWS(key, nonce, base+"/new-account", `{"termsOfServiceAgreed":true}`)
	for i, want := range []int{http.StatusCreated, http.StatusBadRequest} {
		resp, err := hc.Post(base+"/new-account", "application/jose+json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (i == 1 && !strings.Contains(string(b), "badNonce")) {
			t.Fatalf("request %d with nonce %s: %d %s, want %d", i, nonce, resp.StatusCode, b, want)
		}
	}
	// The request log names the requests, never their JWS bodies.
	var jws struct{ Protected, Payload, Signature string }
	json.Unmarshal([]byte(body), &jws)
	out := logs.String()
	if !strings.Contains(out, "/new-account") {
		t.Fatalf("no request log: %s", out)
	}
	for _, part := range []string{jws.Protected[:20], jws.Payload, jws.Signature[:20]} {
		if strings.Contains(out, part) {
			t.Fatalf("the log carries the JWS body (%s): %s", part, out)
		}
	}
}

// syncWriter serializes the log handler's writes with the test's read.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// The ACME routes are anonymous routes: admission control limits them.
func TestACMERateLimited(t *testing.T) {
	e, _ := newACMEEnv(t, server.WithRateLimit(1, 3))
	url := "https://" + e.App.Addr() + "/acme/" + ca.ACMEProvisionerName + "/new-nonce"
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	// Not e.HTTP: the OpenAPI check cannot route /acme/{rest} over segments.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	limited := false
	for i := 0; i < 10 && !limited; i++ {
		resp, err := hc.Head(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		limited = resp.StatusCode == http.StatusTooManyRequests
	}
	if !limited {
		t.Fatal("10 new-nonce requests from one address at 1/s, burst 3: none refused 429")
	}
}

// joinACME adds a node with ACME enabled (servertest.Join passes no server
// options).
func joinACME(t *testing.T, e *env, nodeID string, aca *servertest.TestAKCA) *server.Appliance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = nodeID, "127.0.0.1:0", servertest.FreeAddr(t)
	servertest.Unthrottled(&cfg)
	if err := server.Join(ctx, dir, servertest.Password, e.App.Addr(), tok.String(), cfg); err != nil {
		t.Fatal(err)
	}
	app, err := server.Open(dir, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)), aca.Option())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	if err := app.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return app
}

func onNode(u string, app *server.Appliance) string {
	i := strings.Index(u[len("https://"):], "/") + len("https://")
	return "https://" + app.Addr() + u[i:]
}

// Any node serves any step once the proof is written: an order made on one
// node is proven on another and finalized on the first; the record is on
// both.
func TestACMEAnyNodeServesAnyStep(t *testing.T) {
	e, aca := newACMEEnv(t)
	b := joinACME(t, e, "node-b", aca)
	d := servertest.NewACMEDevice(t, e.Env, aca, "")
	ctx := context.Background()
	cA := servertest.ACMEClient(t, e.App)
	cB := &xacme.Client{Key: cA.Key, HTTPClient: cA.HTTPClient, DirectoryURL: onNode(cA.DirectoryURL, b)}
	if _, err := cB.Register(ctx, &xacme.Account{}, xacme.AcceptTOS); err != nil {
		t.Fatalf("new-account on node b: %v", err)
	}

	o, err := cA.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: d.ID}})
	if err != nil {
		t.Fatal(err)
	}
	az, err := cB.GetAuthorization(ctx, onNode(o.AuthzURLs[0], b))
	if err != nil {
		t.Fatalf("node b reads node a's pending authorization: %v", err)
	}
	chal := az.Challenges[0]
	keyAuth, _ := cB.HTTP01ChallengeResponse(chal.Token)
	payload, key := d.Attest(t, keyAuth)
	chal.Payload = payload
	if _, err := cB.Accept(ctx, chal); err != nil {
		t.Fatalf("prove on node b: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if o, err = cB.WaitOrder(wctx, onNode(o.URI, b)); err != nil || o.Status != xacme.StatusReady {
		t.Fatalf("order on node b: %+v %v", o, err)
	}
	chain, err := servertest.Finalize(cA, &xacme.Order{FinalizeURL: onNode(o.FinalizeURL, e.App)}, key, d.ID)
	if err != nil {
		t.Fatalf("finalize on node a: %v", err)
	}
	serial := chain[0].SerialNumber.Text(16)
	for _, app := range []*server.Appliance{e.App, b} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			dev, err := app.Node().Device(d.ID)
			if err == nil && dev.CertificateSerial == serial {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s: device %+v %v, want serial %s", app.Addr(), dev, err, serial)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The order has its certificate: finalizing it again on node b issues
	// no other.
	if again, err := servertest.Finalize(cB, &xacme.Order{FinalizeURL: onNode(o.FinalizeURL, b)}, key, d.ID); err == nil && again[0].SerialNumber.Text(16) != serial {
		t.Fatalf("node b issued a second certificate %s for the order", again[0].SerialNumber.Text(16))
	}
}

// With the real attestation CA: the step CLI's attestation client gets the
// AK certificate from /attestation, and with it device-attest-01 under the
// AK CA (the default attestation root) gives a device certificate; the
// ak_certificate and acme records are both there.
func TestACMEWithAttestationCA(t *testing.T) {
	e := newEnv(t)
	applyPolicy(t, e, acmePolicy)
	d := newStepDevice(t, e.Mfr)
	chain, err := d.attestWithClient(e.URL(), e.App.Root())
	if err != nil {
		t.Fatalf("attestation client: %v", err)
	}
	dev := servertest.ACMEDeviceFromAK(d.id, d.tpm, d.ak.Name(), chain[0])
	c := servertest.ACMEClient(t, e.App)
	o, key, err := servertest.OrderAndProve(t, c, dev, d.id)
	if err != nil {
		t.Fatalf("order and prove: %v", err)
	}
	certs, err := servertest.Finalize(c, o, key, d.id)
	if err != nil {
		t.Fatalf("finalize: %v", err)
	}
	if id, err := ca.ParseIdentity(certs[0], servertest.TrustDomain); err != nil || id.ID != d.id {
		t.Fatalf("identity %+v %v", id, err)
	}
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id})
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]string{}
	for _, r := range recs {
		if r.Outcome == cluster.OutcomeAccepted {
			stages[r.Stage] = r.CertificateSerial
		}
	}
	if _, ok := stages["ak_certificate"]; !ok || stages["acme"] != certs[0].SerialNumber.Text(16) {
		t.Fatalf("accepted records by stage %v, want ak_certificate and acme with serial %x", stages, certs[0].SerialNumber)
	}
}

// new-order admits a device ID the registry does not know only if it has
// the form of one (attest.DeviceID: 32 lowercase hex digits): anything
// else is no device, and would only make the stateless order, its
// authorization and challenge IDs, and a failed challenge this node
// remembers, as large as the identifier. Refused with rejectedIdentifier,
// nothing written; a well-formed unknown ID is still admitted.
func TestACMEOrderNeedsDeviceIDForm(t *testing.T) {
	e, _ := newACMEEnv(t)
	ctx := context.Background()
	c := servertest.ACMEClient(t, e.App)
	before := lastLogIndex(t, e.App)
	for _, id := range []string{"not-a-device", strings.Repeat("ab", 4000), strings.Repeat("AB", 16), strings.Repeat("a", 31), strings.Repeat("a", 33), strings.Repeat("g", 32)} {
		if _, err := c.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: id}}); err == nil ||
			servertest.ACMEProblem(err) != "urn:ietf:params:acme:error:rejectedIdentifier" {
			t.Errorf("new-order for %.40q (%d chars): %v, want rejectedIdentifier", id, len(id), err)
		}
	}
	if _, err := c.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: strings.Repeat("ab", 16)}}); err != nil {
		t.Fatalf("positive control, a well-formed device ID not registered yet: %v", err)
	}
	if after := lastLogIndex(t, e.App); after != before {
		t.Fatalf("new-order appended %d Raft entries", after-before)
	}
}

// An AK certificate (and an order proven with it) issued while the device
// was admitted gives nothing once it is not: finalize judges the device
// again, so a quarantined or disabled device, or one whose group no longer
// admits ACME, gets no certificate and no record from an order it proved
// before; once admitted again the same order finalizes (the control).
func TestACMEFinalizeRechecksDevice(t *testing.T) {
	e, aca := newACMEEnv(t)
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)
	d := servertest.NewACMEDevice(t, e.Env, aca, "")
	c := servertest.ACMEClient(t, e.App)
	o, key, err := servertest.OrderAndProve(t, c, d, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	records := func() int {
		recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.ID})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	op := func(name, reason string) func() {
		return func() {
			if _, err := admin.TransitionDevice(ctx, d.ID, name, "test", reason); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	before := records()
	for _, c2 := range []struct {
		name         string
		change, undo func()
	}{
		{"quarantined", op(cluster.OpQuarantine, "odd"), op(cluster.OpEnable, "ok")},
		{"disabled", op(cluster.OpDisable, "lost"), op(cluster.OpEnable, "found")},
		{"group without acme", func() { applyPolicy(t, e, `{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{}}]}`) }, func() { applyPolicy(t, e, acmePolicy) }},
	} {
		c2.change()
		if _, err := servertest.Finalize(c, o, key, d.ID); err == nil || servertest.ACMEProblem(err) != "urn:ietf:params:acme:error:unauthorized" {
			t.Errorf("finalize for a device %s: %v, want unauthorized", c2.name, err)
		}
		if n := records(); n != before {
			t.Errorf("finalize for a device %s committed %d records", c2.name, n-before)
		}
		c2.undo()
	}
	if _, err := servertest.Finalize(c, o, key, d.ID); err != nil {
		t.Fatalf("control: the device admitted again finalizes the same order: %v", err)
	}
	if records() != before+1 {
		t.Fatal("control: no acme record")
	}
}
