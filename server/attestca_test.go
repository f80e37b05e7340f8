package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	stepacme "github.com/smallstep/certificates/acme"
	acmenosql "github.com/smallstep/certificates/acme/db/nosql"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/x509util"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/ca/catest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// stepDevice is a servertest.StepTPM (a swtpm driven by
// go.step.sm/crypto/tpm, the library the step CLI runs) with the test.
type stepDevice struct {
	t   *testing.T
	tpm *tpm.TPM
	ek  *tpm.EK
	ak  *tpm.AK
	id  string // attest.DeviceID of the EK
	st  *servertest.StepTPM
}

func newStepDevice(t *testing.T, m *swtpm.Manufacturer) *stepDevice {
	t.Helper()
	st := servertest.NewStepTPM(t, m)
	return &stepDevice{t: t, tpm: st.TPM, ek: st.EK, ak: st.AK, id: st.ID, st: st}
}

// attestWithClient runs the whole protocol with the attestation client of
// go.step.sm/crypto/tpm/attestation (the CLI's copy speaks the same JSON).
func (d *stepDevice) attestWithClient(base string, root *x509.Certificate) ([]*x509.Certificate, error) {
	d.t.Helper()
	return d.st.AttestWithClient(d.t, base, root)
}

// attestRequest is the /attest body the step client builds.
func (d *stepDevice) attestRequest() acme.AttestRequest {
	d.t.Helper()
	ctx := context.Background()
	info, err := d.tpm.Info(ctx)
	if err != nil {
		d.t.Fatal(err)
	}
	params, err := d.ak.AttestationParameters(ctx)
	if err != nil {
		d.t.Fatal(err)
	}
	ekPub, _ := x509.MarshalPKIXPublicKey(d.ek.Public())
	req := acme.AttestRequest{
		TPMInfo: acme.TPMInfo{Version: 2, Manufacturer: strconv.FormatUint(uint64(info.Manufacturer.ID), 10), Model: info.VendorInfo, FirmwareVersion: info.FirmwareVersion.String()},
		EK:      ekPub,
		Params:  acme.AttestationParameters{Public: params.Public, CreateData: params.CreateData, CreateAttestation: params.CreateAttestation, CreateSignature: params.CreateSignature},
	}
	if c := d.ek.Certificate(); c != nil {
		req.EKCerts = [][]byte{c.Raw}
	}
	return req
}

// activate opens the credential with the TPM.
func (d *stepDevice) activate(resp acme.AttestResponse) []byte {
	d.t.Helper()
	secret, err := d.ak.ActivateCredential(context.Background(), tpm.EncryptedCredential{Credential: resp.Credential, Secret: resp.Secret})
	if err != nil {
		d.t.Fatalf("activate: %v", err)
	}
	return secret
}

const acmePolicy = `{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{},"acme":true}]}`

// The step CLI's attestation client (which sends its JSON with no
// Content-Type) gets an AK certificate from a
// two-node cluster: it chains to the AK CA (the same on both nodes), has
// the shape step-ca's device-attest-01 accepts and names the device and
// its EK as the CLI computes them; the ak_certificate record is committed
// on both nodes.
func TestAttestationCAIssuesAKCertificate(t *testing.T) {
	e := newEnv(t)
	applyPolicy(t, e, acmePolicy)
	n2, _ := e.Join(t, "node-2")
	if !bytes.Equal(e.App.AKCA().Raw, n2.AKCA().Raw) {
		t.Fatal("the nodes built different AK CA certificates")
	}
	d := newStepDevice(t, e.Mfr)
	chain, err := d.attestWithClient(e.URL(), e.App.Root())
	if err != nil {
		t.Fatalf("attestation client: %v", err)
	}
	if len(chain) != 2 || !bytes.Equal(chain[1].Raw, e.App.AKCA().Raw) {
		t.Fatalf("chain of %d, not AK certificate + AK CA", len(chain))
	}
	ak := chain[0]
	roots := x509.NewCertPool()
	roots.AddCert(n2.AKCA())
	// As step-ca verifies it (acme/challenge.go doTPMAttestationFormat):
	// the critical SAN is handled by it, not by crypto/x509.
	crt := *ak
	crt.UnhandledCriticalExtensions = nil
	if _, err := crt.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("AK certificate does not chain to the AK CA: %v", err)
	}
	sans, err := x509util.ParseSubjectAlternativeNames(ak)
	if err != nil {
		t.Fatal(err)
	}
	if len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != d.id {
		t.Fatalf("permanent identifiers %+v, want %s", sans.PermanentIdentifiers, d.id)
	}
	if h := sans.TPMHardwareDetails; h.Manufacturer == "" || h.Model == "" || h.Version == "" || ak.Subject.String() != "" {
		t.Fatalf("TPM SAN %+v, subject %q", h, ak.Subject)
	}
	der, _ := x509.MarshalPKIXPublicKey(d.ek.Public())
	sum := sha256.Sum256(der)
	if len(ak.URIs) != 1 || ak.URIs[0].String() != "urn:ek:sha256:"+base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("URIs %v", ak.URIs)
	}
	if !ak.PublicKey.(*rsa.PublicKey).Equal(d.ak.Public()) {
		t.Fatal("the certificate is not for the TPM's AK")
	}
	if _, err := server.NewAdminClient(e.Dir).Device(context.Background(), d.id); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*server.Appliance{e.App, n2} {
		servertest.WaitFor(t, "the ak_certificate record on every node", 10*time.Second, func() bool {
			recs, _ := n.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id})
			return len(recs) == 1 && recs[0].Stage == "ak_certificate" && recs[0].Outcome == cluster.OutcomeAccepted && recs[0].CertificateSerial == ak.SerialNumber.Text(16)
		})
	}
	recs, _ := n2.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id})
	for _, name := range []string{attest.CheckEKChain, attest.CheckAK, attest.CheckActivation, "policy"} {
		found := false
		for _, c := range recs[0].Checks {
			found = found || c.Name == name && c.Passed
		}
		if !found {
			t.Errorf("record lacks passed check %s: %+v", name, recs[0].Checks)
		}
	}
	if dev, err := n2.Node().Device(d.id); err != nil || dev.Status != cluster.DeviceActive || dev.Group != "fleet" {
		t.Fatalf("device %+v, %v", dev, err)
	}
	// Counted like enrollment's stages.
	resp, err := e.HTTP.Get(e.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`gatehouse_enrollments_total{code="",outcome="accepted",stage="ak_challenge"} 1`, `gatehouse_enrollments_total{code="",outcome="accepted",stage="ak_certificate"} 1`} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Refusals: before possession nothing is written (untrusted EK, group
// without acme, wrong secret, replayed secret, inactive device); after
// possession an approve-mode group commits a pending record, and the next
// run after approval succeeds.
func TestAttestationCARefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)
	d := newStepDevice(t, e.Mfr)
	noEntries := func(what string, f func()) {
		t.Helper()
		recs, _ := e.App.Node().Attestations(cluster.AttestationQuery{Limit: 1})
		before := lastLogIndex(t, e.App)
		f()
		if after := lastLogIndex(t, e.App); after != before {
			t.Fatalf("%s appended %d Raft entries", what, after-before)
		}
		if now, _ := e.App.Node().Attestations(cluster.AttestationQuery{Limit: 1}); len(now) != len(recs) {
			t.Fatalf("%s committed a record", what)
		}
	}
	attest1 := func(d *stepDevice) (acme.AttestResponse, *api.Problem) {
		var resp acme.AttestResponse
		p := e.postJSON(api.PathAttestationAttest, d.attestRequest(), &resp)
		return resp, p
	}
	// A read of the term (Raft's barrier) before counting entries.
	if _, err := admin.Devices(ctx, ""); err != nil {
		t.Fatal(err)
	}

	// The default policy's group does not set acme.
	noEntries("a group without acme", func() {
		_, p := attest1(d)
		if p == nil || p.Status != http.StatusForbidden || p.Code != api.CodeACMENotAllowed || !strings.Contains(p.Detail, "group default") {
			t.Fatalf("group without acme: %+v", p)
		}
	})
	applyPolicy(t, e, `{"groups":[{"name":"booted","match":{},"mode":"auto","require":{"event_log":true}}]}`)
	noEntries("a group with boot-state requirements", func() {
		if _, p := attest1(d); p == nil || p.Code != api.CodeACMENotAllowed || !strings.Contains(p.Detail, "group booted") || !strings.Contains(p.Detail, "no quote") {
			t.Fatalf("group with boot-state requirements: %+v", p)
		}
	})
	applyPolicy(t, e, `{"groups":[{"name":"fleet","match":{},"mode":"approve","require":{},"acme":true}]}`)

	// An EK from a manufacturer the cluster does not trust.
	stranger := newStepDevice(t, swtpm.NewTestManufacturer(t))
	noEntries("an untrusted EK", func() {
		if _, p := attest1(stranger); p == nil || p.Code != api.CodeEKUntrusted {
			t.Fatalf("untrusted EK: %+v", p)
		}
	})

	// A reported TPM field longer than any TPM's (it may go into the AK
	// certificate, and the pending activation keeps it): refused before a
	// credential is made. (Unbounded before.)
	noEntries("an oversized TPM info", func() {
		req := d.attestRequest()
		req.TPMInfo.Model = strings.Repeat("m", 40<<10)
		var resp acme.AttestResponse
		if p := e.postJSON(api.PathAttestationAttest, req, &resp); p == nil || p.Code != api.CodeMalformed {
			t.Fatalf("oversized TPM info: %+v", p)
		}
	})

	// A secret the TPM did not activate.
	noEntries("a wrong secret", func() {
		if _, p := attest1(d); p != nil {
			t.Fatalf("attest: %+v", p)
		}
		junk := make([]byte, 32)
		rand.Read(junk)
		if p := e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: junk}, &acme.SecretResponse{}); p == nil || p.Code != api.CodeSecretUnknown {
			t.Fatalf("wrong secret: %+v", p)
		}
	})

	// Approve mode: possession is proven, the record says pending.
	resp, p := attest1(d)
	if p != nil {
		t.Fatal(p)
	}
	secret := d.activate(resp)
	p = e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: secret}, &acme.SecretResponse{})
	if p == nil || p.Status != http.StatusForbidden || p.Code != api.CodeApprovalPending || p.AttestationID == 0 {
		t.Fatalf("approve mode: %+v", p)
	}
	recs, _ := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id})
	if len(recs) != 1 || recs[0].Stage != "ak_certificate" || recs[0].Outcome != cluster.OutcomePending || recs[0].ID != p.AttestationID {
		t.Fatalf("pending record: %+v", recs)
	}
	noEntries("a replayed secret", func() {
		if p := e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: secret}, &acme.SecretResponse{}); p == nil || p.Code != api.CodeSecretUnknown {
			t.Fatalf("replayed secret: %+v", p)
		}
	})
	if _, err := admin.TransitionDevice(ctx, d.id, cluster.OpApprove, "test", "ok"); err != nil {
		t.Fatal(err)
	}
	resp, p = attest1(d)
	if p != nil {
		t.Fatal(p)
	}
	secret = d.activate(resp)
	var chain acme.SecretResponse
	if p := e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: secret}, &chain); p != nil || len(chain.Chain) != 2 {
		t.Fatalf("after approval: %+v (%d certificates)", p, len(chain.Chain))
	}
	if recs, _ = e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.id}); recs[0].Outcome != cluster.OutcomeAccepted {
		t.Fatalf("after approval: %+v", recs[0])
	}
	noEntries("a replay of an accepted secret", func() {
		if p := e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: secret}, &acme.SecretResponse{}); p == nil || p.Code != api.CodeSecretUnknown {
			t.Fatalf("replayed secret: %+v", p)
		}
	})

	// A disabled device is refused before a credential is made.
	if _, err := admin.TransitionDevice(ctx, d.id, cluster.OpDisable, "test", "lost"); err != nil {
		t.Fatal(err)
	}
	noEntries("a disabled device", func() {
		if _, p := attest1(d); p == nil || p.Code != api.CodeDeviceInactive {
			t.Fatalf("disabled device: %+v", p)
		}
	})

	// A body declared as something other than JSON is refused (415).
	req, _ := http.NewRequest(http.MethodPost, e.URL()+api.PathAttestationAttest, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "text/plain")
	if resp, err := e.HTTP.Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("text/plain body: %v %v", resp, err)
	}

	// The refusals before possession are counted in the node's summary.
	if err := e.App.SummarizeRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	head, err := e.App.Node().AuditHead()
	if err != nil || head.Type != cluster.AuditAdmissionRefused {
		t.Fatalf("audit head %+v, %v", head, err)
	}
	var sum server.RefusalSummary
	if err := json.Unmarshal([]byte(head.Detail), &sum); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]uint64{
		"ak_challenge " + api.CodeACMENotAllowed:  2,
		"ak_challenge " + api.CodeEKUntrusted:     1,
		"ak_challenge " + api.CodeDeviceInactive:  1,
		"ak_certificate " + api.CodeSecretUnknown: 3,
	} {
		if sum.Counts[key] != want {
			t.Errorf("summary %q = %d, want %d (%s)", key, sum.Counts[key], want, head.Detail)
		}
	}
}

// step-ca's own device-attest-01 validation (acme.Challenge.Validate,
// format "tpm", with the AK CA as the provisioner's only attestation root)
// accepts a TPM key attested by the AK the attestation CA certified, for
// the device's ID and for no other identifier.
func TestStepCAValidatesAKCertificate(t *testing.T) {
	e := newEnv(t)
	applyPolicy(t, e, acmePolicy)
	d := newStepDevice(t, e.Mfr)
	chain, err := d.attestWithClient(e.URL(), e.App.Root())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	prov := &provisioner.ACME{Type: "ACME", Name: "device-attest", Challenges: []provisioner.ACMEChallenge{provisioner.DEVICE_ATTEST_01},
		AttestationFormats: []provisioner.ACMEAttestationFormat{provisioner.TPM},
		AttestationRoots:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.App.AKCA().Raw})}
	if err := prov.Init(provisioner.Config{Claims: config.GlobalProvisionerClaims}); err != nil {
		t.Fatal(err)
	}
	ctx = stepacme.NewProvisionerContext(ctx, prov)
	// In memory: make test builds without step's bbolt driver (nobbolt).
	db, err := acmenosql.New(ca.NoSQL(catest.NewMemKV()))
	if err != nil {
		t.Fatal(err)
	}
	accountKey, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	pubJWK := accountKey.Public()

	validate := func(identifier, keyName string) (*stepacme.Challenge, error) {
		az := &stepacme.Authorization{AccountID: "acct", Identifier: stepacme.Identifier{Type: "permanent-identifier", Value: identifier},
			Status: stepacme.StatusPending, ExpiresAt: time.Now().Add(time.Hour)}
		if err := db.CreateAuthorization(ctx, az); err != nil {
			t.Fatal(err)
		}
		ch := &stepacme.Challenge{AccountID: "acct", AuthorizationID: az.ID, Value: identifier, Type: stepacme.DEVICEATTEST01,
			Status: stepacme.StatusPending, Token: "tok-" + keyName}
		if err := db.CreateChallenge(ctx, ch); err != nil {
			t.Fatal(err)
		}
		// What the CLI does (cautils doTPMAttestation): a key attested by
		// the AK over the key authorization digest, in a "tpm" statement.
		keyAuth, err := stepacme.KeyAuthorization(ch.Token, &pubJWK)
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256([]byte(keyAuth))
		key, err := d.tpm.AttestKey(ctx, d.ak.Name(), keyName, tpm.AttestKeyConfig{Algorithm: "ECDSA", Size: 256, QualifyingData: digest[:]})
		if err != nil {
			t.Fatal(err)
		}
		params, err := key.CertificationParameters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var x5c [][]byte
		for _, c := range chain {
			x5c = append(x5c, c.Raw)
		}
		obj, err := cbor.Marshal(map[string]any{"fmt": "tpm", "attStmt": map[string]any{
			"ver": "2.0", "alg": int64(-7), "x5c": x5c, "sig": params.CreateSignature, "certInfo": params.CreateAttestation, "pubArea": params.Public}})
		if err != nil {
			t.Fatal(err)
		}
		payload, _ := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString(obj)})
		err = ch.Validate(ctx, db, &pubJWK, payload)
		return ch, err
	}
	ch, err := validate(d.id, "k1")
	if err != nil || ch.Status != stepacme.StatusValid || ch.Error != nil {
		t.Fatalf("step-ca refused the attested key for %s: %v %+v", d.id, err, ch.Error)
	}
	other := strings.Repeat("0", 32)
	ch, err = validate(other, "k2")
	if err != nil || ch.Status != stepacme.StatusInvalid || ch.Error == nil || !strings.Contains(ch.Error.Detail, "permanent identifier does not match") {
		t.Fatalf("step-ca accepted the AK certificate for another identifier: %v %+v %+v", err, ch.Status, ch.Error)
	}
}

// The activation secret is never logged, whether it is right or wrong
// (debug level included), nor the credential that wraps it; the log does
// say what was certified.
func TestAttestationCALogsNoSecret(t *testing.T) {
	var logs bytes.Buffer
	e := newEnv(t)
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}
	e.Start(server.WithLogger(slog.New(slog.NewJSONHandler(&syncWriter{w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	applyPolicy(t, e, acmePolicy)
	d := newStepDevice(t, e.Mfr)
	var resp acme.AttestResponse
	if p := e.postJSON(api.PathAttestationAttest, d.attestRequest(), &resp); p != nil {
		t.Fatal(p)
	}
	secret := d.activate(resp)
	wrong := append([]byte(nil), secret...)
	wrong[0] ^= 1
	if p := e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: wrong}, &acme.SecretResponse{}); p == nil || p.Code != api.CodeSecretUnknown {
		t.Fatalf("wrong secret: %+v", p)
	}
	var chain acme.SecretResponse
	if p := e.postJSON(api.PathAttestationSecret, acme.SecretRequest{Secret: secret}, &chain); p != nil || len(chain.Chain) != 2 {
		t.Fatalf("secret: %+v", p)
	}
	out := logs.String()
	if !strings.Contains(out, "AK certified") || !strings.Contains(out, d.id) {
		t.Fatalf("no log of the AK certification: %s", out)
	}
	for _, s := range [][]byte{secret, wrong, resp.Credential, resp.Secret} {
		for _, enc := range []string{base64.StdEncoding.EncodeToString(s), base64.RawURLEncoding.EncodeToString(s), hex.EncodeToString(s)} {
			if strings.Contains(out, enc[:24]) {
				t.Fatalf("the log carries a secret or credential (%s…)", enc[:24])
			}
		}
	}
}
