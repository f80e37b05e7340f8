package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

const trustDomain = servertest.TrustDomain

// env wraps servertest.Env with request helpers.
type env struct {
	*servertest.Env
	t testing.TB
}

func newEnv(t testing.TB) *env { return &env{Env: servertest.New(t), t: t} }

type device = servertest.Device

func (e *env) newDevice(m *swtpm.Manufacturer) *device { return servertest.NewDevice(e.t, m) }

// post sends a JSON body and decodes either the response or the problem.
func (e *env) post(path string, body []byte, out any) *api.Problem {
	e.t.Helper()
	resp, err := e.HTTP.Post(e.URL()+path, "application/json", bytes.NewReader(body))
	if err != nil {
		e.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("decode %s: %v", path, err)
		}
		return nil
	}
	if ct := resp.Header.Get("Content-Type"); ct != api.ContentTypeProblem {
		e.t.Fatalf("POST %s: status %d with content type %q, want %s", path, resp.StatusCode, ct, api.ContentTypeProblem)
	}
	var p api.Problem
	if err := json.Unmarshal(b, &p); err != nil {
		e.t.Fatalf("decode problem: %v: %s", err, b)
	}
	if p.Status != resp.StatusCode {
		e.t.Fatalf("problem status %d != HTTP status %d", p.Status, resp.StatusCode)
	}
	return &p
}

func (e *env) postJSON(path string, in, out any) *api.Problem {
	e.t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.post(path, b, out)
}

// challenge runs the first round trip and activates the credential.
func (e *env) challenge(d *device, ak *goattest.AK) (*api.ChallengeResponse, []byte) {
	e.t.Helper()
	req, err := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{Serial: "SN-1", Model: "test-gw"})
	if err != nil {
		e.t.Fatal(err)
	}
	var ch api.ChallengeResponse
	if p := e.postJSON(api.PathChallenge, req, &ch); p != nil {
		e.t.Fatalf("challenge refused: %v", p)
	}
	secret, err := ak.ActivateCredentialWithEK(d.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, d.EK)
	if err != nil {
		e.t.Fatalf("activate: %v", err)
	}
	return &ch, secret
}

func (e *env) evidence(d *device, ak *goattest.AK, ch *api.ChallengeResponse, secret []byte) *api.CompleteRequest {
	e.t.Helper()
	req, key, err := fwclient.Evidence(d.TPM, ak, ch, secret, nil)
	if err != nil {
		e.t.Fatalf("evidence: %v", err)
	}
	key.Close()
	return req
}

// expectRejected asserts the problem's status and code, that a rejected
// attestation record with that code was committed, and that no certificate
// was issued.
func (e *env) expectRejected(p *api.Problem, status int, code string, issuedBefore uint64) cluster.AttestationRecord {
	e.t.Helper()
	if p == nil {
		e.t.Fatalf("request accepted, want %d %s", status, code)
	}
	if p.Status != status || p.Code != code {
		e.t.Fatalf("got %d %s (%s), want %d %s", p.Status, p.Code, p.Detail, status, code)
	}
	if p.Type != api.ProblemType(code) || p.Detail == "" {
		e.t.Fatalf("problem body incomplete: %+v", p)
	}
	if p.AttestationID == 0 {
		e.t.Fatalf("problem carries no attestation ID: %+v", p)
	}
	rec, err := e.App.Node().Attestation(p.AttestationID)
	if err != nil {
		e.t.Fatalf("rejected attestation %d not committed: %v", p.AttestationID, err)
	}
	if rec.Outcome != cluster.OutcomeRejected || rec.Code != code || rec.Reason == "" || rec.CertificateSerial != "" {
		e.t.Fatalf("attestation record %+v, want rejected with code %s", rec, code)
	}
	if got := e.App.CertificatesIssued(); got != issuedBefore {
		e.t.Fatalf("certificates issued went from %d to %d on a rejection", issuedBefore, got)
	}
	return rec
}

// expectUnrecorded asserts the problem's status and code for a refusal
// before the client proved TPM possession: no attestation ID, no record,
// no certificate (see Enroller.refuse).
func (e *env) expectUnrecorded(p *api.Problem, status int, code string, issuedBefore uint64) {
	e.t.Helper()
	if p == nil {
		e.t.Fatalf("request accepted, want %d %s", status, code)
	}
	if p.Status != status || p.Code != code || p.Type != api.ProblemType(code) || p.Detail == "" {
		e.t.Fatalf("got %d %s (%s), want %d %s", p.Status, p.Code, p.Detail, status, code)
	}
	if p.AttestationID != 0 {
		rec, _ := e.App.Node().Attestation(p.AttestationID)
		e.t.Fatalf("a refusal before TPM possession was committed as attestation %d: %+v", p.AttestationID, rec)
	}
	if recs, _ := e.App.Node().Attestations(cluster.AttestationQuery{Limit: 1}); len(recs) == 1 && recs[0].Outcome == cluster.OutcomeRejected && recs[0].Code == code && time.Since(recs[0].Time) < 2*time.Second {
		e.t.Fatalf("the newest record is this refusal: %+v", recs[0])
	}
	if got := e.App.CertificatesIssued(); got != issuedBefore {
		e.t.Fatalf("certificates issued went from %d to %d on a rejection", issuedBefore, got)
	}
}

func (e *env) expectNoDevice(d *device) {
	e.t.Helper()
	id, err := attest.DeviceID(d.EK.Public)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.App.Node().Device(id); !errors.Is(err, cluster.ErrNotFound) {
		e.t.Fatalf("device %s is in the registry after a rejection (err=%v)", id, err)
	}
}

func TestEnrollHappyPath(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name string
		alg  goattest.Algorithm
	}{{"ECDSA-AK", goattest.ECDSA}, {"RSA-AK", goattest.RSA}} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.newDevice(e.Mfr)
			ctx := context.Background()
			before := e.App.CertificatesIssued()
			id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithAKAlgorithm(tc.alg), fwclient.WithClaims(api.Claims{Serial: "SN-42", Model: "gw-1"}))
			if err != nil {
				t.Fatalf("enroll: %v", err)
			}
			wantID, _ := attest.DeviceID(d.EK.Public)
			if id.DeviceID != wantID {
				t.Fatalf("device ID %s, want %s (derived from the EK)", id.DeviceID, wantID)
			}

			// The certificate chains to the appliance root and names the device.
			cert := id.Certificate
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(e.App.Root())
			for _, c := range id.Chain {
				inter.AddCert(c)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("certificate does not verify: %v", err)
			}
			if cert.Subject.CommonName != wantID || len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://"+trustDomain+"/device/"+wantID {
				t.Fatalf("certificate names %q %v", cert.Subject.CommonName, cert.URIs)
			}
			now := time.Now()
			if now.Before(cert.NotBefore) || !now.Before(cert.NotAfter) {
				t.Fatalf("certificate not valid now: %v..%v", cert.NotBefore, cert.NotAfter)
			}
			if string(id.Configuration) != "{}" {
				t.Fatalf("configuration %s, want {}", id.Configuration)
			}

			// The registry committed the device and an accepted record.
			dev, err := e.App.Node().Device(wantID)
			if err != nil {
				t.Fatalf("device not committed: %v", err)
			}
			if dev.Status != cluster.DeviceActive || dev.CertificateSerial != cert.SerialNumber.Text(16) || dev.Claims.Serial != "SN-42" {
				t.Fatalf("device record %+v does not match certificate serial %s", dev, cert.SerialNumber.Text(16))
			}
			rec, err := e.App.Node().Attestation(id.AttestationID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Outcome != cluster.OutcomeAccepted || rec.CertificateSerial != dev.CertificateSerial || rec.DeviceID != wantID {
				t.Fatalf("attestation record %+v", rec)
			}
			wantChecks := []string{attest.CheckEKChain, attest.CheckAK, attest.CheckActivation, attest.CheckQuoteNonce, attest.CheckPCRDigest,
				attest.CheckQuoteSignature, attest.CheckCertifyBinding, attest.CheckCertify, attest.CheckCSRSignature, attest.CheckCSRKey, "policy"}
			if rec.Policy == nil || !rec.Policy.Passed || rec.Policy.Group != "default" || dev.Group != "default" {
				t.Fatalf("policy decision %+v, device group %q", rec.Policy, dev.Group)
			}
			if len(rec.Checks) != len(wantChecks) {
				t.Fatalf("checks %+v, want %v", rec.Checks, wantChecks)
			}
			for i, c := range rec.Checks {
				if c.Name != wantChecks[i] || !c.Passed {
					t.Fatalf("check %d = %+v, want %s passed", i, c, wantChecks[i])
				}
			}
			if rec.Evidence.PCRBank != "sha256" || len(rec.Evidence.PCRs) != 24 || rec.Evidence.EK == nil || rec.Evidence.EK.Issuer == "" {
				t.Fatalf("evidence not recorded: %+v", rec.Evidence)
			}
			if got := e.App.CertificatesIssued(); got != before+1 {
				t.Fatalf("certificates issued %d, want %d", got, before+1)
			}

			// The identity works: whoami over mTLS with the TPM-resident key.
			who, err := e.Client.WhoAmI(ctx, d.TPM, id)
			if err != nil {
				t.Fatalf("whoami: %v", err)
			}
			if who.DeviceID != wantID || who.Status != cluster.DeviceActive || who.CertificateSerial != dev.CertificateSerial {
				t.Fatalf("whoami %+v", who)
			}

			// Enrolling the same TPM again maps to the same device.
			id2, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithAKAlgorithm(tc.alg))
			if err != nil {
				t.Fatalf("second enroll: %v", err)
			}
			dev2, _ := e.App.Node().Device(wantID)
			if id2.DeviceID != wantID || dev2.Enrollments != 2 || !dev2.EnrolledAt.Equal(dev.EnrolledAt) {
				t.Fatalf("second enrollment: id %s, record %+v", id2.DeviceID, dev2)
			}
		})
	}
}

func TestWhoAmIRequiresDeviceCertificate(t *testing.T) {
	e := newEnv(t)
	resp, err := e.HTTP.Get(e.URL() + api.PathWhoAmI)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("whoami without client certificate: %d, want 401", resp.StatusCode)
	}
}

func TestEnrollRejections(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(e.Mfr)

	t.Run("untrusted EK CA", func(t *testing.T) {
		other := e.newDevice(swtpm.NewTestManufacturer(t))
		ak := other.NewAK(t, goattest.ECDSA)
		req, _ := fwclient.NewChallengeRequest(other.EK, ak, api.Claims{})
		before := e.App.CertificatesIssued()
		p := e.postJSON(api.PathChallenge, req, &api.ChallengeResponse{})
		e.expectUnrecorded(p, http.StatusForbidden, api.CodeEKUntrusted, before)
		e.expectNoDevice(other)
	})

	t.Run("AK from another TPM", func(t *testing.T) {
		other := e.newDevice(e.Mfr)
		foreignAK := other.NewAK(t, goattest.ECDSA)
		req, _ := fwclient.NewChallengeRequest(d.EK, foreignAK, api.Claims{})
		var ch api.ChallengeResponse
		if p := e.postJSON(api.PathChallenge, req, &ch); p != nil {
			t.Fatalf("challenge: %v", p)
		}
		// The credential is sealed to d's EK: other's TPM cannot open it.
		if _, err := foreignAK.ActivateCredentialWithEK(other.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, other.EK); err == nil {
			t.Fatal("a foreign TPM activated the credential")
		}
		guess := make([]byte, 32)
		rand.Read(guess)
		ev := e.evidence(other, foreignAK, &ch, guess)
		before := e.App.CertificatesIssued()
		e.expectUnrecorded(e.postJSON(api.PathComplete, ev, &api.CompleteResponse{}), http.StatusForbidden, api.CodeActivationFailed, before)
	})

	ak := d.NewAK(t, goattest.ECDSA)
	fresh := func() (*api.ChallengeResponse, *api.CompleteRequest) {
		ch, secret := e.challenge(d, ak)
		return ch, e.evidence(d, ak, ch, secret)
	}
	cases := []struct {
		name   string
		mutate func(t *testing.T, ch *api.ChallengeResponse, ev *api.CompleteRequest)
		status int
		code   string
	}{
		{"wrong secret", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			ev.ActivatedSecret[0] ^= 1
		}, http.StatusForbidden, api.CodeActivationFailed},
		{"quote with wrong nonce", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			q, err := ak.Quote(d.TPM.TPM, bytes.Repeat([]byte{7}, 32), goattest.HashSHA256)
			if err != nil {
				t.Fatal(err)
			}
			ev.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
		}, http.StatusForbidden, api.CodeQuoteNonceMismatch},
		{"tampered PCR value", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			ev.PCRs[7].Digest[0] ^= 0xff
		}, http.StatusForbidden, api.CodePCRMismatch},
		{"software device key", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			sw, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			ev.DeviceKey.Public = tpmPublicFor(t, &sw.PublicKey)
			ev.CSR = softwareCSR(t, sw)
		}, http.StatusForbidden, api.CodeCertifyInvalid},
		{"certify bound to another session", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			_, other := fresh()
			ev.DeviceKey, ev.CSR = other.DeviceKey, other.CSR
		}, http.StatusForbidden, api.CodeCertifyBinding},
		{"CSR key is not the certified key", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			sw, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			ev.CSR = softwareCSR(t, sw)
		}, http.StatusForbidden, api.CodeCSRKeyMismatch},
		{"token with one byte flipped", func(t *testing.T, _ *api.ChallengeResponse, ev *api.CompleteRequest) {
			b := []byte(ev.SessionToken)
			i := len(b) / 2
			if b[i] == 'A' {
				b[i] = 'B'
			} else {
				b[i] = 'A'
			}
			ev.SessionToken = string(b)
		}, http.StatusForbidden, api.CodeTokenInvalid},
		{"expired token", func(t *testing.T, ch *api.ChallengeResponse, _ *api.CompleteRequest) {
			skip := time.Until(ch.ExpiresAt) + time.Second
			e.Clock.Advance(skip)
			t.Cleanup(func() { e.Clock.Advance(-skip) })
		}, http.StatusForbidden, api.CodeTokenExpired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ch, ev := fresh()
			tc.mutate(t, ch, ev)
			before := e.App.CertificatesIssued()
			p := e.postJSON(api.PathComplete, ev, &api.CompleteResponse{})
			switch tc.code {
			case api.CodeActivationFailed, api.CodeTokenInvalid, api.CodeTokenExpired: // before possession was proven
				e.expectUnrecorded(p, tc.status, tc.code, before)
				return
			}
			rec := e.expectRejected(p, tc.status, tc.code, before)
			if !rec.HasRawEvidence {
				t.Fatalf("a refusal after credential activation keeps no raw evidence: %+v", rec)
			}
			if rec.Stage != "complete" {
				t.Fatalf("stage %s", rec.Stage)
			}
			if tc.code != api.CodeTokenInvalid && rec.DeviceID == "" {
				t.Fatalf("rejection of an authentic session is not attributed to the device: %+v", rec)
			}
			var failed []string
			for _, c := range rec.Checks {
				if !c.Passed {
					failed = append(failed, c.Name)
				}
			}
			if tc.code != api.CodeTokenInvalid && tc.code != api.CodeTokenExpired && len(failed) != 1 {
				t.Fatalf("want exactly one failed check naming the problem, got %v", failed)
			}
		})
	}
	e.expectNoDevice(d)

	t.Run("session token replayed", func(t *testing.T) {
		_, ev := fresh()
		var ok api.CompleteResponse
		if p := e.postJSON(api.PathComplete, ev, &ok); p != nil {
			t.Fatalf("first completion: %v", p)
		}
		dev, _ := e.App.Node().Device(ok.DeviceID)
		before := e.App.CertificatesIssued()
		e.expectUnrecorded(e.postJSON(api.PathComplete, ev, &api.CompleteResponse{}), http.StatusConflict, api.CodeSessionReplayed, before)
		if again, _ := e.App.Node().Device(ok.DeviceID); again.Enrollments != dev.Enrollments {
			t.Fatalf("replay changed the device: %d enrollments, was %d", again.Enrollments, dev.Enrollments)
		}
	})

	t.Run("rejected session cannot be retried", func(t *testing.T) {
		_, ev := fresh()
		good := ev.PCRs[7].Digest
		ev.PCRs[7].Digest = bytes.Repeat([]byte{1}, len(good))
		before := e.App.CertificatesIssued()
		e.expectRejected(e.postJSON(api.PathComplete, ev, &api.CompleteResponse{}), http.StatusForbidden, api.CodePCRMismatch, before)
		ev.PCRs[7].Digest = good
		e.expectUnrecorded(e.postJSON(api.PathComplete, ev, &api.CompleteResponse{}), http.StatusConflict, api.CodeSessionReplayed, before)
	})

	t.Run("oversized body", func(t *testing.T) {
		before := e.App.CertificatesIssued()
		big := `{"session_token":"` + strings.Repeat("A", api.MaxCompleteBody) + `"}`
		e.expectUnrecorded(e.post(api.PathComplete, []byte(big), &api.CompleteResponse{}), http.StatusRequestEntityTooLarge, api.CodeTooLarge, before)
		big = `{"ek_public":"` + strings.Repeat("A", api.MaxChallengeBody) + `"}`
		e.expectUnrecorded(e.post(api.PathChallenge, []byte(big), &api.ChallengeResponse{}), http.StatusRequestEntityTooLarge, api.CodeTooLarge, before)
	})

	t.Run("malformed JSON", func(t *testing.T) {
		before := e.App.CertificatesIssued()
		e.expectUnrecorded(e.post(api.PathChallenge, []byte(`{"ak":`), &api.ChallengeResponse{}), http.StatusBadRequest, api.CodeMalformed, before)
		e.expectUnrecorded(e.post(api.PathChallenge, []byte(`{}`), &api.ChallengeResponse{}), http.StatusBadRequest, api.CodeMalformed, before)
	})
}

// tpmPublicFor encodes a software ECDSA key as a TPMT_PUBLIC claiming every
// attribute a TPM-resident key has.
func tpmPublicFor(t *testing.T, pub *ecdsa.PublicKey) []byte {
	t.Helper()
	p := tpm2.Public{
		Type:       tpm2.AlgECC,
		NameAlg:    tpm2.AlgSHA256,
		Attributes: tpm2.FlagSign | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth,
		ECCParameters: &tpm2.ECCParams{
			Sign:    &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256},
			CurveID: tpm2.CurveNISTP256,
			Point:   tpm2.ECPoint{XRaw: pub.X.FillBytes(make([]byte, 32)), YRaw: pub.Y.FillBytes(make([]byte, 32))},
		},
	}
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func softwareCSR(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestRestartKeepsRecords(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	// The node registers its API address (member.set) in the background
	// after it starts; the hash is taken once nothing else is on its way.
	servertest.WaitFor(t, "the node's API address registered", 10*time.Second, func() bool {
		ms, err := e.App.Node().Members()
		return err == nil && len(ms) == 1 && ms[0].APIAddr != ""
	})
	hash, err := e.App.Node().StateHash()
	if err != nil {
		t.Fatal(err)
	}
	head, err := e.App.Node().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.App.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := server.Open(e.Dir, []byte("wrong password")); err == nil {
		t.Fatal("opened with a wrong CA password")
	}
	e.Start()
	// The same state, unless the restarted node already recorded its new
	// API address (a member.set after the old head): then the audit chain
	// up to the old head, which hashes every entry before it, is intact.
	h, _ := e.App.Node().StateHash()
	now, err := e.App.Node().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	if now.Seq == head.Seq && h != hash {
		t.Fatalf("state hash after restart %s, before %s", h, hash)
	}
	if old, err := e.App.Node().AuditEntry(head.Seq); err != nil || old.Hash != head.Hash {
		t.Fatalf("audit entry %d after restart: %+v, %v; before %+v", head.Seq, old, err, head)
	}
	for seq := head.Seq + 1; seq <= now.Seq; seq++ {
		if a, err := e.App.Node().AuditEntry(seq); err != nil || a.Type != "member.set" {
			t.Fatalf("audit entry %d after restart: %+v, %v; want only the node's new address", seq, a, err)
		}
	}
	dev, err := e.App.Node().Device(id.DeviceID)
	if err != nil || dev.CertificateSerial != id.Certificate.SerialNumber.Text(16) {
		t.Fatalf("device after restart: %+v, %v", dev, err)
	}
	if _, err := e.App.Node().Attestation(id.AttestationID); err != nil {
		t.Fatalf("attestation after restart: %v", err)
	}
	// The restarted node keeps enrolling, and the old identity still works.
	if _, err := e.Client.WhoAmI(context.Background(), d.TPM, id); err != nil {
		t.Fatalf("whoami after restart: %v", err)
	}
	d2 := e.newDevice(e.Mfr)
	if _, err := e.Client.Enroll(context.Background(), d2.TPM); err != nil {
		t.Fatalf("enroll after restart: %v", err)
	}
	if devs, _ := e.App.Node().Devices(); len(devs) != 2 {
		t.Fatalf("%d devices after restart, want 2", len(devs))
	}
}
