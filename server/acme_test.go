package server_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	goattest "github.com/google/go-attestation/attest"
	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"
	"go.step.sm/crypto/x509util"
	xacme "golang.org/x/crypto/acme"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// testAKCA stands in for the AK CA (the attestation CA's issuer of AK
// certificates): the ACME provisioner's only attestation root.
type testAKCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestAKCA(t testing.TB) *testAKCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test AK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testAKCA{cert: cert, key: key}
}

func (a *testAKCA) option() server.Option {
	return server.WithACMEAttestationRoots(func(*ca.CA) []*x509.Certificate { return []*x509.Certificate{a.cert} })
}

var oidTCGAIK = asn1.ObjectIdentifier{2, 23, 133, 8, 3}

// issueAK certifies ak with an empty subject, the TPM directoryName and the
// permanent identifier, as step-ca's device-attest-01 expects.
func (a *testAKCA) issueAK(t testing.TB, ak crypto.PublicKey, permanentID string) *x509.Certificate {
	t.Helper()
	tpmName := []byte(`{"extraNames":[{"type":"2.23.133.2.1","value":"id:53574D20"},{"type":"2.23.133.2.2","value":"swtpm"},{"type":"2.23.133.2.3","value":"id:00020000"}]}`)
	sans := []x509util.SubjectAlternativeName{
		{Type: x509util.PermanentIdentifierType, Value: permanentID},
		{Type: x509util.DirectoryNameType, ASN1Value: tpmName},
	}
	var seq []byte
	for _, s := range sans {
		rv, err := s.RawValue()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := asn1.Marshal(rv)
		seq = append(seq, b...)
	}
	san, _ := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: seq})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidTCGAIK}, BasicConstraintsValid: true,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, ak, a.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// acmeDevice is a device enrolled natively (so the registry knows it,
// active) whose swtpm is then driven by go.step.sm/crypto/tpm, the library
// the step CLI uses, with an RSA AK certified by the test AK CA.
type acmeDevice struct {
	id    string
	tpm   *tpm.TPM
	akDER []byte
	ca    *testAKCA
}

type noLogChannel struct{ io.ReadWriteCloser }

func (noLogChannel) MeasurementLog() ([]byte, error) { return nil, nil }

// Close keeps the connection: go.step.sm/crypto/tpm opens and closes its
// channel around every operation; the test closes it at the end.
func (noLogChannel) Close() error { return nil }

func newACMEDevice(t *testing.T, e *env, aca *testAKCA, akNames string) *acmeDevice {
	t.Helper()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	d.TPM.Close() // one client at a time on swtpm's data port
	ch, err := fwclient.OpenTransport(d.Proc.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	st, err := tpm.New(tpm.WithCommandChannel(noLogChannel{ch}), tpm.WithStore(storage.NewDirstore(t.TempDir())), tpm.WithDisableDownload())
	if err != nil {
		t.Fatal(err)
	}
	ak, err := st.CreateAK(context.Background(), "ak")
	if err != nil {
		t.Fatal(err)
	}
	if akNames == "" {
		akNames = id.DeviceID
	}
	ap, err := ak.AttestationParameters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := goattest.ParseAKPublic(ap.Public)
	if err != nil {
		t.Fatal(err)
	}
	return &acmeDevice{id: id.DeviceID, tpm: st, akDER: aca.issueAK(t, akPub.Public, akNames).Raw, ca: aca}
}

var keyCount int

// attest makes a TPM key attested by the AK over keyAuth (the
// device-attest-01 payload) and returns the payload and the key.
func (d *acmeDevice) attest(t *testing.T, keyAuth string) ([]byte, crypto.Signer) {
	t.Helper()
	sum := sha256.Sum256([]byte(keyAuth))
	keyCount++
	k, err := d.tpm.AttestKey(context.Background(), "ak", "key"+string(rune('a'+keyCount)), tpm.AttestKeyConfig{Algorithm: "ECDSA", Size: 256, QualifyingData: sum[:]})
	if err != nil {
		t.Fatal(err)
	}
	params, err := k.CertificationParameters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := k.Signer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	obj, err := cbor.Marshal(struct {
		Format string         `json:"fmt"`
		Stmt   map[string]any `json:"attStmt"`
	}{"tpm", map[string]any{"ver": "2.0", "x5c": []any{d.akDER}, "alg": int64(-257),
		"sig": params.CreateSignature, "certInfo": params.CreateAttestation, "pubArea": params.Public}})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString(obj)})
	return payload, signer
}

func acmeClient(t *testing.T, app *server.Appliance) *xacme.Client {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	c := &xacme.Client{Key: key, DirectoryURL: "https://" + app.Addr() + "/acme/" + ca.ACMEProvisionerName + "/directory",
		HTTPClient: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	if _, err := c.Register(context.Background(), &xacme.Account{}, xacme.AcceptTOS); err != nil {
		t.Fatalf("new-account: %v", err)
	}
	return c
}

// orderAndProve runs new-order and the device-attest-01 challenge; it
// returns the order URL, finalize URL and the attested key.
func orderAndProve(t *testing.T, c *xacme.Client, d *acmeDevice, identifier string) (*xacme.Order, crypto.Signer, error) {
	t.Helper()
	ctx := context.Background()
	o, err := c.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: identifier}})
	if err != nil {
		return nil, nil, err
	}
	az, err := c.GetAuthorization(ctx, o.AuthzURLs[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(az.Challenges) != 1 || az.Challenges[0].Type != "device-attest-01" {
		t.Fatalf("challenges %+v, want exactly device-attest-01", az.Challenges)
	}
	chal := az.Challenges[0]
	keyAuth, err := c.HTTP01ChallengeResponse(chal.Token)
	if err != nil {
		t.Fatal(err)
	}
	payload, key := d.attest(t, keyAuth)
	chal.Payload = payload
	if _, err := c.Accept(ctx, chal); err != nil {
		return o, key, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	o, err = c.WaitOrder(wctx, o.URI)
	return o, key, err
}

func finalize(c *xacme.Client, o *xacme.Order, key crypto.Signer, cn string) ([]*x509.Certificate, error) {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return nil, err
	}
	ders, _, err := c.CreateOrderCert(context.Background(), o.FinalizeURL, csr, true)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, d := range ders {
		crt, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, crt)
	}
	return out, nil
}

func acmeProblem(err error) string {
	var ae *xacme.Error
	if errors.As(err, &ae) {
		return ae.ProblemType
	}
	return ""
}

// newACMEEnv starts an appliance with ACME enabled (the test AK CA as the
// attestation root).
func newACMEEnv(t *testing.T) (*env, *testAKCA) {
	e := newEnv(t)
	aca := newTestAKCA(t)
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}
	e.Start(aca.option())
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
	d := newACMEDevice(t, e, aca, "")
	c := acmeClient(t, e.App)

	o, key, err := orderAndProve(t, c, d, d.id)
	if err != nil {
		t.Fatalf("order and prove: %v", err)
	}
	if o.Status != xacme.StatusReady {
		t.Fatalf("order status %s after the proof, want ready", o.Status)
	}
	// A CSR for another key than the attested one is refused at finalize.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := finalize(c, o, other, ""); err == nil {
		t.Fatal("finalize with a CSR for a key the TPM did not attest succeeded")
	}
	chain, err := finalize(c, o, key, d.id)
	if err != nil {
		t.Fatalf("finalize: %v", err)
	}
	leaf := chain[0]
	if leaf.Subject.CommonName != d.id {
		t.Errorf("CN %q, want the device ID %q", leaf.Subject.CommonName, d.id)
	}
	if got, err := ca.ParseIdentity(leaf, servertest.TrustDomain); err != nil || got.Path != ca.PathDevice || got.ID != d.id {
		t.Errorf("identity %+v %v, want device %s", got, err, d.id)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("the certificate's key is not the attested TPM key")
	}
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != d.id {
		t.Errorf("permanent identifiers %+v %v, want [%s]", sans.PermanentIdentifiers, err, d.id)
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
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < settingsValidity || got > settingsValidity+2*time.Minute {
		t.Errorf("validity %v, want the cluster setting %v", got, settingsValidity)
	}

	// The record came first, with the certificate's serial.
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id})
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
	dev, _ := e.App.Node().Device(d.id)
	if dev.CertificateSerial != leaf.SerialNumber.Text(16) {
		t.Errorf("device's current serial %s, want the ACME certificate's %x", dev.CertificateSerial, leaf.SerialNumber)
	}

	// Finalizing the same order again issues nothing new.
	before := lastLogIndex(t, e.App)
	if again, err := finalize(c, o, key, d.id); err == nil && again[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("a second certificate %x for one order", again[0].SerialNumber)
	}
	recs, _ = e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id})
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
	if _, err := e.App.RevokeDevice(context.Background(), d.id, "alice", "stolen"); err != nil {
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
	if _, err := c.AuthorizeOrder(context.Background(), []xacme.AuthzID{{Type: "permanent-identifier", Value: d.id}}); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("new-order for a revoked device: %v, want a refusal naming the state", err)
	}
}

// newOrder is refused for anything but one permanent identifier naming a
// known, active device; an AK certificate for one device cannot prove
// another's identifier.
func TestACMEOrderRefusals(t *testing.T) {
	e, aca := newACMEEnv(t)
	ctx := context.Background()
	victim, err := e.Client.Enroll(ctx, servertest.NewDevice(t, e.Mfr).TPM)
	if err != nil {
		t.Fatal(err)
	}
	c := acmeClient(t, e.App)
	for _, ids := range [][]xacme.AuthzID{
		{{Type: "permanent-identifier", Value: strings.Repeat("0", 32)}},                                                       // unknown device
		{{Type: "dns", Value: "example.com"}},                                                                                  // not a permanent identifier
		{{Type: "permanent-identifier", Value: victim.DeviceID}, {Type: "permanent-identifier", Value: victim.DeviceID + "x"}}, // two
	} {
		if _, err := c.AuthorizeOrder(ctx, ids); err == nil || acmeProblem(err) != "urn:ietf:params:acme:error:rejectedIdentifier" {
			t.Errorf("new-order %+v: %v, want rejectedIdentifier", ids, err)
		}
	}
	// Positive control and the identity check: an AK certificate naming
	// the attacker's own device proves nothing about the victim.
	atk := newACMEDevice(t, e, aca, "")
	if _, _, err := orderAndProve(t, c, atk, victim.DeviceID); err == nil {
		t.Fatal("an AK certificate for another device validated the victim's identifier")
	}
	o, key, err := orderAndProve(t, c, atk, atk.id)
	if err != nil {
		t.Fatalf("positive control: %v", err)
	}
	if _, err := finalize(c, o, key, atk.id); err != nil {
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
	// Positive controls: the provisioner list and the ACME directory.
	resp, err := e.HTTP.Get(e.URL() + "/provisioners")
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
	resp, err = acmeClient(t, e.App).HTTPClient.Get(e.URL() + "/acme/" + ca.ACMEProvisionerName + "/directory")
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
// new-order and failed device-attest-01 challenges writes nothing to Raft,
// and the node-local state stays bounded; one proof then writes (positive
// control).
func TestACMEUnprovenFloodIsBounded(t *testing.T) {
	const n = 30
	e, aca := newACMEEnv(t)
	ctx := context.Background()
	d := newACMEDevice(t, e, aca, "")
	c := acmeClient(t, e.App)
	junk, _ := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString([]byte("junk"))})
	nonceURL := "https://" + e.App.Addr() + "/acme/" + ca.ACMEProvisionerName + "/new-nonce"
	idxBefore := lastLogIndex(t, e.App)
	for i := 0; i < n; i++ {
		resp, err := c.HTTPClient.Head(nonceURL)
		if err != nil || resp.Header.Get("Replay-Nonce") == "" {
			t.Fatalf("new-nonce: %v", err)
		}
		resp.Body.Close()
		atk := acmeClient(t, e.App) // new-account
		if _, err := atk.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: strings.Repeat("ab", 16)}}); err == nil {
			t.Fatal("new-order for an unknown device accepted")
		}
		o, err := atk.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: d.id}})
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
	if _, _, err := orderAndProve(t, c, d, d.id); err != nil {
		t.Fatal(err)
	}
	if lastLogIndex(t, e.App) == idxBefore {
		t.Fatal("a proven challenge wrote nothing: the flood check proves nothing")
	}
}

// A nonce is accepted once: a replayed request is refused with badNonce
// on the node that saw it.
func TestACMENonceReplay(t *testing.T) {
	e, _ := newACMEEnv(t)
	base := "https://" + e.App.Addr() + "/acme/" + ca.ACMEProvisionerName
	hc := acmeClient(t, e.App).HTTPClient
	resp, err := hc.Head(base + "/new-nonce")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("Replay-Nonce")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	body := signJWS(t, key, nonce, base+"/new-account", `{"termsOfServiceAgreed":true}`)
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
}

// signJWS is an RFC 8555 JWS with an embedded JWK (new-account).
func signJWS(t *testing.T, key *ecdsa.PrivateKey, nonce, url, payload string) string {
	t.Helper()
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	jwk := map[string]string{"kty": "EC", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(pad(key.X.Bytes())), "y": base64.RawURLEncoding.EncodeToString(pad(key.Y.Bytes()))}
	prot, _ := json.Marshal(map[string]any{"alg": "ES256", "jwk": jwk, "nonce": nonce, "url": url})
	p64 := base64.RawURLEncoding.EncodeToString(prot)
	b64 := base64.RawURLEncoding.EncodeToString([]byte(payload))
	sum := sha256.Sum256([]byte(p64 + "." + b64))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := base64.RawURLEncoding.EncodeToString(append(pad(r.Bytes()), pad(s.Bytes())...))
	out, _ := json.Marshal(map[string]string{"protected": p64, "payload": b64, "signature": sig})
	return string(out)
}

// joinACME adds a node with ACME enabled (servertest.Join passes no server
// options).
func joinACME(t *testing.T, e *env, nodeID string, aca *testAKCA) *server.Appliance {
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
	app, err := server.Open(dir, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)), aca.option())
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
	d := newACMEDevice(t, e, aca, "")
	ctx := context.Background()
	cA := acmeClient(t, e.App)
	cB := &xacme.Client{Key: cA.Key, HTTPClient: cA.HTTPClient, DirectoryURL: onNode(cA.DirectoryURL, b)}
	if _, err := cB.Register(ctx, &xacme.Account{}, xacme.AcceptTOS); err != nil {
		t.Fatalf("new-account on node b: %v", err)
	}

	o, err := cA.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: d.id}})
	if err != nil {
		t.Fatal(err)
	}
	az, err := cB.GetAuthorization(ctx, onNode(o.AuthzURLs[0], b))
	if err != nil {
		t.Fatalf("node b reads node a's pending authorization: %v", err)
	}
	chal := az.Challenges[0]
	keyAuth, _ := cB.HTTP01ChallengeResponse(chal.Token)
	payload, key := d.attest(t, keyAuth)
	chal.Payload = payload
	if _, err := cB.Accept(ctx, chal); err != nil {
		t.Fatalf("prove on node b: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if o, err = cB.WaitOrder(wctx, onNode(o.URI, b)); err != nil || o.Status != xacme.StatusReady {
		t.Fatalf("order on node b: %+v %v", o, err)
	}
	chain, err := finalize(cA, &xacme.Order{FinalizeURL: onNode(o.FinalizeURL, e.App)}, key, d.id)
	if err != nil {
		t.Fatalf("finalize on node a: %v", err)
	}
	serial := chain[0].SerialNumber.Text(16)
	for _, app := range []*server.Appliance{e.App, b} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			dev, err := app.Node().Device(d.id)
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
	if again, err := finalize(cB, &xacme.Order{FinalizeURL: onNode(o.FinalizeURL, b)}, key, d.id); err == nil && again[0].SerialNumber.Text(16) != serial {
		t.Fatalf("node b issued a second certificate %s for the order", again[0].SerialNumber.Text(16))
	}
}
