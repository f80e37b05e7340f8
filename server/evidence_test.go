package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// bootPolicyEnv enrolls a device booted with the reference log under the
// default policy, captures group "edge" from it and applies that policy.
func bootPolicyEnv(t *testing.T) (*env, []byte, *attest.EventLog) {
	t.Helper()
	e := newEnv(t)
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	ref := bootedDevice(t, e, log)
	id, err := e.Client.Enroll(context.Background(), ref.TPM, fwclient.WithEventLog(log))
	if err != nil {
		t.Fatalf("reference device: %v", err)
	}
	p, err := server.CapturePolicy(e.App.Node(), id.DeviceID, "edge")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.App.ApplyPolicy(context.Background(), "test", doc); err != nil {
		t.Fatal(err)
	}
	return e, log, parsed
}

// Issue 9, item 1: a device whose shim was tampered with quotes its
// unallocated SHA-1 bank, so the quote covers no PCR, and sends the golden
// SHA-256 values with the reference log. Those values are not evidence: the
// request is refused with pcr_not_quoted and no certificate is issued.
func TestUnquotedPCRsRefused(t *testing.T) {
	e, log, parsed := bootPolicyEnv(t)
	shim := parsed.Facts.BootApps[0]
	tampered, err := testvectors.FlipDigest(log, shim.Digests["sha256"])
	if err != nil {
		t.Fatal(err)
	}
	d := bootedDevice(t, e, tampered)
	ak := d.NewAK(t, goattest.ECDSA)
	ch, secret := e.challenge(d, ak)
	req := e.evidence(d, ak, ch, secret)
	// The control: the honest evidence of the tampered boot is refused by
	// the policy, naming PCR 4.
	before := e.App.CertificatesIssued()
	var resp api.CompleteResponse
	p := e.postJSON(api.PathComplete, req, &resp)
	rec := e.expectRejected(p, 403, api.CodePolicyDenied, before)
	if !strings.Contains(rec.Reason, "PCR 4") {
		t.Fatalf("control refused for %q", rec.Reason)
	}

	// The attack: a fresh session, a SHA-1 quote, golden SHA-256 values.
	ch, secret = e.challenge(d, ak)
	req = e.evidence(d, ak, ch, secret)
	q, err := ak.Quote(d.TPM.TPM, ch.Nonce, goattest.HashSHA1)
	if err != nil {
		t.Fatal(err)
	}
	req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
	golden := parsed.Replay("sha256")
	for i := range req.PCRs {
		if v, ok := golden[req.PCRs[i].Index]; ok {
			req.PCRs[i].Digest = v
		}
	}
	req.EventLog = log
	p = e.postJSON(api.PathComplete, req, &resp)
	rec = e.expectRejected(p, 403, api.CodePCRNotQuoted, before)
	if !strings.Contains(rec.Reason, "PCR 4 (sha256)") {
		t.Fatalf("refusal does not name the unquoted PCRs: %q", rec.Reason)
	}
}

func bootedDevice(t *testing.T, e *env, log []byte) *device {
	t.Helper()
	return servertest.NewBootedDevice(t, e.Mfr, log)
}

// Issue 9, item 2: a device that booted "EVIL Virtual Firmware v0" sends a
// log keeping that event's measured digests but stating "GCE Virtual
// Firmware v1". The log replays to the quote, but the version is not
// evidence: firmware_version fails with the reason and no certificate is
// issued. The device that booted the real firmware, the control, enrolls.
func TestForgedFirmwareVersionRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"groups":[{"name":"gce","mode":"auto","require":{"event_log":true,"firmware_versions":["GCE Virtual Firmware v1"]}}]}`
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	good := bootedDevice(t, e, log)
	if _, err := e.Client.Enroll(ctx, good.TPM, fwclient.WithEventLog(log)); err != nil {
		t.Fatalf("control: %v", err)
	}

	forged := forgeSCRTM(t, log, "EVIL Virtual Firmware v0")
	d := bootedDevice(t, e, forged)
	before := e.App.CertificatesIssued()
	_, err = e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(forged))
	var p *api.Problem
	if !errors.As(err, &p) {
		t.Fatalf("forged firmware version: %v, want a problem", err)
	}
	rec := e.expectRejected(p, 403, api.CodePolicyDenied, before)
	if rec.Policy == nil || !strings.Contains(rec.Reason, attest.RuleFirmware) || !strings.Contains(rec.Reason, "not the hash of its data") {
		t.Fatalf("refused for %q", rec.Reason)
	}
}

// forgeSCRTM returns log with its S-CRTM version event's digests (every
// bank) replaced by those of version, the data still stating the original.
func forgeSCRTM(t *testing.T, log []byte, version string) []byte {
	t.Helper()
	l, err := attest.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	for _, c := range utf16.Encode([]rune(version + "\x00")) {
		data = append(data, byte(c), byte(c>>8))
	}
	out := log
	for _, ev := range l.Events {
		if ev.Type != "EV_S_CRTM_VERSION" {
			continue
		}
		for _, bd := range ev.Digests {
			old := bd.Digest
			h, _ := attest.BankHash(bd.Bank)
			hh := h.New()
			hh.Write(data)
			if out, err = testvectors.ReplaceDigest(out, old, hh.Sum(nil)); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	t.Fatal("no S-CRTM version event")
	return nil
}

// Issue 9, item 5: a pre-registered EK whose certificate does not chain may
// still enroll (an operator vouched for the key), but what the certificate
// claims is not evidence. A self-made certificate claiming the issuer and
// TPM manufacturer of a laxer group (auto) must not land the device there:
// it falls to the group that pre-registered it (approve).
func TestPreRegisteredEKUnverifiedCertificateNotMatched(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(e.Mfr)
	ekSum, err := attest.PublicKeySHA256(d.EK.Public)
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"groups":[
		{"name":"lax","mode":"auto","match":{"ek_issuers":["CN=Lax Vendor EK CA"],"manufacturers":["id:4C415800"]}},
		{"name":"vouched","mode":"approve","match":{"ek_public_sha256":["` + ekSum + `"]}}]}`
	if _, err := e.App.ApplyPolicy(context.Background(), "test", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	ak := d.NewAK(t, goattest.ECDSA)
	req, err := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	req.EKCertificate = selfMadeEKCert(t, d.EK.Public, "Lax Vendor EK CA", "id:4C415800")
	var ch api.ChallengeResponse
	if p := e.postJSON(api.PathChallenge, req, &ch); p != nil {
		t.Fatalf("a pre-registered EK was refused: %v", p)
	}
	secret, err := ak.ActivateCredentialWithEK(d.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, d.EK)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(e.evidence(d, ak, &ch, secret))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.HTTP.Post(e.URL()+api.PathComplete, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var pending api.Pending
	if err := json.NewDecoder(resp.Body).Decode(&pending); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("complete: %d %v %+v, want 202 pending in group vouched", resp.StatusCode, err, pending)
	}
	rec, err := e.App.Node().Attestation(pending.AttestationID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Policy == nil || rec.Policy.Group != "vouched" {
		t.Fatalf("decision %+v, want group vouched", rec.Policy)
	}
	if ek := rec.Evidence.EK; ek == nil || ek.Issuer != "" || ek.Manufacturer != "" {
		t.Fatalf("unverified certificate fields recorded as EK evidence: %+v", rec.Evidence.EK)
	}
	var chain string
	for _, c := range rec.Checks {
		if c.Name == attest.CheckEKChain {
			chain = c.Detail
		}
	}
	if !strings.Contains(chain, "unverified") || !strings.Contains(chain, "Lax Vendor EK CA") {
		t.Fatalf("the EK check does not keep the certificate's claims as unverified: %q", chain)
	}
}

// selfMadeEKCert issues an EK certificate for ekPub from a throwaway CA
// named issuer, with the TCG EK EKU and a TPM SAN naming manufacturer.
func selfMadeEKCert(t *testing.T, ekPub any, issuer, manufacturer string) []byte {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: issuer}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	dn, err := asn1.Marshal(pkix.RDNSequence{
		{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: manufacturer}},
		{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "lax"}},
		{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "id:00010000"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dn}})
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: ca.NotBefore, NotAfter: ca.NotAfter, KeyUsage: x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}},
		ExtraExtensions:    []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, ekPub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Issue 9, item 1, over stored evidence: the policy dry run names PCRs a
// candidate reads that the stored quote did not cover, and a bundle whose
// raw evidence gains PCR values outside the quote (another bank) no longer
// reproduces its record.
func TestStoredEvidenceQuoteCoverage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	b, roots := e.bundle(id.AttestationID)
	if rep := server.Recheck(b, roots); !rep.Reproduced {
		t.Fatalf("control not reproduced: %+v", rep.Results)
	}

	// The dry run judges stored evidence by the same coverage rule: a
	// candidate reading a SHA-1 PCR the quote did not cover says so.
	cand, err := attest.ParsePolicy([]byte(`{"groups":[{"name":"sha1","mode":"auto","require":{"pcrs":{"sha1":{"0":"` + strings.Repeat("0", 40) + `"}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := server.DryRun(e.App.Node(), cand)
	if err != nil || len(res) != 1 {
		t.Fatalf("dry run: %v %+v", err, res)
	}
	var cov *attest.Outcome
	for i, o := range res[0].Decision.Outcomes {
		if o.Rule == attest.RuleQuoteCoverage {
			cov = &res[0].Decision.Outcomes[i]
		}
	}
	if res[0].Decision.Passed || cov == nil || !strings.Contains(cov.Detail, "PCR 0 (sha1") {
		t.Fatalf("dry run decision %+v", res[0].Decision)
	}

	raw := *b.Raw
	raw.PCRs = append(append([]cluster.RawPCR(nil), raw.PCRs...), cluster.RawPCR{Index: 4, Bank: "sha1", Digest: make([]byte, 20)})
	b.Raw = &raw
	rep := server.Recheck(b, roots)
	if r := resultOf(rep, attest.CheckPCRDigest); rep.Reproduced || r.Recheck != "fail" || !strings.Contains(r.Detail, "PCR 4 (sha1)") {
		t.Fatalf("a bundle with an unquoted PCR reproduced: %+v", rep.Results)
	}
}

// Issue 9, item 1, on renewal: an enrolled device that quotes its
// unallocated SHA-1 bank and sends SHA-256 values is refused with
// pcr_not_quoted (and quarantined, as every failed renewal). The honest
// renewal before it is the control.
func TestRenewalUnquotedPCRsRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if id, err = e.Client.Renew(ctx, d.TPM, id, nil); err != nil {
		t.Fatalf("control renewal: %v", err)
	}

	m := e.mtlsDevice(t, d, id)
	ch := m.renewChallenge()
	q, err := m.AK.Quote(d.TPM.TPM, ch.Nonce, goattest.HashSHA1)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := d.TPM.PCRs(goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := fwclient.CSR(m.Key)
	if err != nil {
		t.Fatal(err)
	}
	req := api.RenewRequest{SessionToken: ch.SessionToken, AKPublic: m.AK.AttestationParameters().Public, Quote: api.Quote{Quote: q.Quote, Signature: q.Signature}, CSR: csr}
	for _, p := range pcrs {
		req.PCRs = append(req.PCRs, api.PCR{Index: p.Index, Bank: "sha256", Digest: p.Digest})
	}
	before := e.App.CertificatesIssued()
	var resp api.CompleteResponse
	p := m.post(api.PathRenew, req, &resp)
	if p == nil || p.Status != 403 || p.Code != api.CodePCRNotQuoted {
		t.Fatalf("renewal with unquoted PCRs: %+v, want 403 %s", p, api.CodePCRNotQuoted)
	}
	if e.App.CertificatesIssued() != before {
		t.Fatal("a certificate was issued")
	}
}

// Issue 9, item 3, over the wire: an ECDSA AK whose creation signature is
// RSA-typed, and a certify signature typed RSA for an ECDSA AK, are refused
// with their own codes, not dropped connections. The AK is refused at the
// challenge, before TPM possession is proven, so that refusal is counted but
// not recorded; the certify refusal comes after activation and is recorded.
func TestCraftedSignatureKindsRefused(t *testing.T) {
	e := newEnv(t)
	d := e.newDevice(e.Mfr)
	ak := d.NewAK(t, goattest.ECDSA)
	rsaSig := rsaTypedSignature(t)

	req, err := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{})
	if err != nil {
		t.Fatal(err)
	}
	req.AK.CreateSignature = rsaSig
	before := e.App.CertificatesIssued()
	var ch api.ChallengeResponse
	e.expectUnrecorded(e.postJSON(api.PathChallenge, req, &ch), 403, api.CodeAKInvalid, before)

	chal, secret := e.challenge(d, ak)
	creq := e.evidence(d, ak, chal, secret)
	creq.DeviceKey.CreateSignature = rsaSig
	var resp api.CompleteResponse
	e.expectRejected(e.postJSON(api.PathComplete, creq, &resp), 403, api.CodeCertifyInvalid, before)
}

// rsaTypedSignature is a TPMT_SIGNATURE of scheme RSASSA with SHA-256.
func rsaTypedSignature(t *testing.T) []byte {
	t.Helper()
	b, err := tpm2.Signature{Alg: tpm2.AlgRSASSA, RSA: &tpm2.SignatureRSA{HashAlg: tpm2.AlgSHA256, Signature: make([]byte, 256)}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
