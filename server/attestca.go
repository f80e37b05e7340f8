package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The attestation CA (see DESIGN.md "Attestation CA"): the Enroller
// implements acme.Attestor with native enrollment's EK verification,
// judge and commit path; acme.AttestationCA runs the protocol.

// Stages of the attestation CA: /attest is never recorded (nothing is
// proven yet), /secret commits a record with stage ak_certificate.
const (
	stageAKChallenge   = "ak_challenge"
	stageAKCertificate = "ak_certificate"
)

// maxEKCerts bounds the EK certificates one /attest may carry (the CLI
// sends one per EK: RSA and ECC).
const maxEKCerts = 4

// maxTPMInfo bounds each reported TPM field (the vendor string is at most
// 16 bytes): the AK certificate's TPM SAN may take them, and a pending
// activation keeps them.
const maxTPMInfo = 128

// akIssuer is what the attestation CA needs from the CA.
type akIssuer interface {
	NewSerial() (*big.Int, error)
	IssueAK(p ca.AKProfile) ([]*x509.Certificate, error)
}

// akState is the appliance's part of a pending activation.
type akState struct {
	sess *session
	tpm  [3]string // manufacturer, model, version for the TPM SAN
}

var _ acme.Attestor = (*Enroller)(nil)

// VerifyAttestation implements acme.Attestor: the EK as native enrollment
// verifies it (verifyEK: the replicated manufacturer roots, or an EK an
// operator pre-registered), the AK (VerifyAK), then, read-only, the
// device's state and whether its group admits ACME. Every refusal here is
// before possession: counted, not recorded.
func (e *Enroller) VerifyAttestation(ctx context.Context, req *acme.AttestRequest) (att *acme.Attested, err error) {
	defer func(start time.Time) { e.metrics.observe(stageAKChallenge, start, err) }(time.Now())
	now := e.now()
	rec := cluster.AttestationRecord{Time: now, Node: e.nodeID, Stage: stageAKChallenge}
	if len(req.EKCerts) > maxEKCerts {
		return nil, e.reject(ctx, rec, nil, malformed(fmt.Sprintf("more than %d EK certificates", maxEKCerts)))
	}
	if i := req.TPMInfo; max(len(i.Manufacturer), len(i.Model), len(i.FirmwareVersion)) > maxTPMInfo {
		return nil, e.reject(ctx, rec, nil, malformed(fmt.Sprintf("a TPM info field over %d bytes", maxTPMInfo)))
	}
	creq := &api.ChallengeRequest{EKPublic: req.EK, EKCertificate: chooseEKCert(req)}
	sess := &session{Expires: e.sessionExpires(now), Raw: cluster.RawEvidence{
		EKCertificate: creq.EKCertificate, EKPublic: req.EK,
		AK: cluster.RawKey{Public: req.Params.Public, CreateData: req.Params.CreateData, CreateAttestation: req.Params.CreateAttestation, CreateSignature: req.Params.CreateSignature},
	}}
	ekPub, err := e.verifyEK(creq, sess)
	rec.DeviceID, rec.Checks = sess.DeviceID, sess.Checks
	if err != nil {
		return nil, e.reject(ctx, rec, nil, err)
	}
	ak, err := acme.VerifyAKParameters(req.Params)
	if err != nil {
		return nil, e.reject(ctx, rec, nil, err)
	}
	sess.Checks = append(sess.Checks, cluster.Check{Name: attest.CheckAK, Passed: true, Detail: "restricted signing key created in a TPM"})
	sess.AKSHA256, sess.AKAlg = ak.PublicSHA256, ak.Algorithm
	rec.Checks = sess.Checks
	if err := e.acmeAdmissible(sess); err != nil {
		return nil, e.reject(ctx, rec, nil, err)
	}
	sess.ID = randomHex(16)
	return &acme.Attested{DeviceID: sess.DeviceID, EK: ekPub, AK: ak, Expires: sess.Expires,
		State: &akState{sess: sess, tpm: tpmSAN(sess.EK, req.TPMInfo)}}, nil
}

// chooseEKCert picks, among the certificates the client sent, the one for
// its EK (the CLI sends the certificates of all EKs and the preferred EK's
// key). None matching: no certificate, so only a pre-registered EK passes.
func chooseEKCert(req *acme.AttestRequest) []byte {
	if len(req.EK) == 0 {
		if len(req.EKCerts) > 0 {
			return req.EKCerts[0]
		}
		return nil
	}
	pub, err := x509.ParsePKIXPublicKey(req.EK)
	if err != nil {
		return nil // verifyEK refuses the key
	}
	for _, c := range req.EKCerts {
		if ek, err := attest.ParseEKCertificate(c); err == nil && attest.PublicKeysEqual(ek.Cert.PublicKey, pub) {
			return c
		}
	}
	return nil
}

// tpmSAN is the TPM directoryName of the AK certificate: the verified EK
// certificate's TPM attributes; only for what it lacks (an EK admitted by
// pre-registration has none) the client's report, which nothing decides on
// (step-ca only requires the three to be present).
func tpmSAN(ek cluster.EKInfo, info acme.TPMInfo) [3]string {
	out := [3]string{ek.Manufacturer, ek.Model, ek.Version}
	reported := [3]string{"", info.Model, info.FirmwareVersion}
	if id, err := strconv.ParseUint(info.Manufacturer, 10, 32); err == nil {
		reported[0] = fmt.Sprintf("id:%08X", id)
	}
	for i := range out {
		if out[i] == "" {
			out[i] = reported[i]
		}
		if out[i] == "" {
			out[i] = "unknown"
		}
	}
	return out
}

// acmeAdmissible is the read-only check before a credential is made: the
// device is not revoked, disabled or quarantined, and the group that
// decides for it admits ACME. judge repeats both after possession.
func (e *Enroller) acmeAdmissible(sess *session) error {
	var labels map[string]string
	if d, err := e.reg.Device(sess.DeviceID); err == nil {
		if d.Status != cluster.DeviceActive && d.Status != cluster.DevicePending {
			return fmt.Errorf("%w: device %s is %s", cluster.ErrDeviceInactive, d.ID, d.Status)
		}
		labels, sess.Claims = d.Labels, d.Claims
	} else if !errors.Is(err, cluster.ErrNotFound) {
		return e.internal(err)
	}
	individual, ierr := e.reg.IndividualEnrollment(sess.EK.PublicSHA256)
	if labels == nil && ierr == nil {
		labels = individual.Labels
	}
	policy, err := e.policies.current()
	if err != nil {
		return e.internal(err)
	}
	in := policyInput(sess.DeviceID, sess.EK, sess.Claims, labels, nil, nil)
	in.EnrolledGroup = individual.Group
	_, err = policy.ACMEGroup(in)
	return err
}

// Activated implements acme.Attestor: possession is proven (the secret
// came back), so the device is judged as at enrollment (judge, with the
// group required to admit ACME), the record is committed, and only then is
// the AK certificate issued under the serial the record reserved. A new
// device of an approve-mode group is committed pending and answered 403
// approval_pending; after `devices approve` the client's next run succeeds.
func (e *Enroller) Activated(ctx context.Context, a *acme.Attested) (chain []*x509.Certificate, err error) {
	start := time.Now()
	chain, err = e.activated(ctx, a)
	e.metrics.observe(stageAKCertificate, start, err)
	var pending *api.Pending
	if errors.As(err, &pending) {
		// The step client reads no body and no 202: a refusal it reports.
		p := newProblem(http.StatusForbidden, api.CodeApprovalPending, fmt.Sprintf("device %s is pending: %s; run the client again once an operator approved it", pending.DeviceID, pending.Detail))
		p.AttestationID = pending.AttestationID
		return nil, p
	}
	return chain, err
}

func (e *Enroller) activated(ctx context.Context, a *acme.Attested) ([]*x509.Certificate, error) {
	st, ok := a.State.(*akState)
	if !ok {
		return nil, e.internal(errors.New("attestation CA: foreign pending state"))
	}
	sess := st.sess
	now := e.now()
	ek := sess.EK
	rec := cluster.AttestationRecord{Time: now, Node: e.nodeID, Stage: stageAKCertificate, DeviceID: sess.DeviceID, SessionID: sess.ID,
		Checks: append(append([]cluster.Check(nil), sess.Checks...), cluster.Check{Name: attest.CheckActivation, Passed: true,
			Detail: "the TPM holding the EK activated the credential for the AK (attestation CA)"}),
		Evidence:        cluster.Evidence{EK: &ek, AKPublicSHA256: sess.AKSHA256, AKAlgorithm: sess.AKAlg, Claims: sess.Claims},
		RawEvidenceGzip: bounded(gzipJSON(sess.Raw)),
	}
	v, err := e.judge(ctx, &rec, sess, nil, nil, true)
	if err != nil {
		return nil, err
	}
	if v.status == cluster.DevicePending {
		return nil, e.pend(ctx, rec, sess, v.decision, v.why, v.flags, v.labels)
	}
	serial, err := e.akCA.NewSerial()
	if err != nil {
		return nil, e.internal(err)
	}
	// The AK certificate's serial is the record's: the FSM lists it among
	// the device's serials, and revoking the device revokes it too. It is
	// not the device's certificate (Device.CertificateSerial stays).
	rec.Outcome, rec.CertificateSerial = cluster.OutcomeAccepted, serial.Text(16)
	d := v.decision
	dev := cluster.Device{ID: sess.DeviceID, Status: cluster.DeviceActive, EK: sess.EK, AKPublicSHA256: sess.AKSHA256, Claims: sess.Claims,
		Group: d.Group, Mode: d.Mode, PolicyVersion: d.PolicyVersion, Labels: v.labels}
	attID, err := e.reg.CommitEnrollment(ctx, sess.ID, sess.Expires, dev, rec, v.flags...)
	if errors.Is(err, cluster.ErrSessionUsed) || errors.Is(err, cluster.ErrSessionExpired) || errors.Is(err, cluster.ErrDeviceInactive) {
		rec.Outcome, rec.CertificateSerial = "", ""
		return nil, e.reject(ctx, rec, sess, err)
	}
	if err != nil {
		return nil, e.commitFailed(err)
	}
	chain, err := e.akCA.IssueAK(ca.AKProfile{DeviceID: sess.DeviceID, EK: a.EK, AK: a.AK.Public.Public,
		TPMManufacturer: st.tpm[0], TPMModel: st.tpm[1], TPMVersion: st.tpm[2], Serial: serial})
	if err != nil {
		e.log.Error("AK certificate issuance failed after commit", "device_id", sess.DeviceID, "attestation_id", attID, "err", err)
		return nil, newProblem(http.StatusInternalServerError, api.CodeInternal, "AK certificate issuance failed")
	}
	e.log.Info("AK certified", "device_id", sess.DeviceID, "attestation_id", attID, "serial", serial.Text(16), "group", d.Group)
	return chain, nil
}

// Unproven implements acme.Attestor: a refusal at /secret before anything
// is proven, counted like enrollment's.
func (e *Enroller) Unproven(ctx context.Context, cause error) error {
	err := e.reject(ctx, cluster.AttestationRecord{Time: e.now(), Node: e.nodeID, Stage: stageAKCertificate}, nil, cause)
	e.metrics.observe(stageAKCertificate, time.Now(), err)
	return err
}

// attestationRoutes serves the attestation CA, anonymous like enrollment
// (and rate-limited with it by admission control).
func (a *Appliance) attestationRoutes(mux *routeMux) {
	mux.HandleFunc("POST "+api.PathAttestationAttest, stepJSON(func(w http.ResponseWriter, r *http.Request) {
		var req acme.AttestRequest
		if err := a.decode(w, r, stageAKChallenge, acme.MaxAttestBody, &req); err != nil {
			writeProblem(w, err)
			return
		}
		resp, err := a.enroller.attestCA.Attest(r.Context(), &req)
		writeResult(w, http.StatusOK, resp, err)
	}))
	mux.HandleFunc("POST "+api.PathAttestationSecret, stepJSON(func(w http.ResponseWriter, r *http.Request) {
		var req acme.SecretRequest
		if err := a.decode(w, r, stageAKCertificate, acme.MaxSecretBody, &req); err != nil {
			writeProblem(w, err)
			return
		}
		resp, err := a.enroller.attestCA.Secret(r.Context(), &req)
		writeResult(w, http.StatusOK, resp, err)
	}))
}

// stepJSON is requireJSON for the step CLI's attestation client, which
// sends its JSON bodies with no Content-Type at all: a missing type is
// accepted, any other than application/json refused (415). The routes are
// anonymous and read no cookie or credential, so a cross-origin browser
// request (which can also omit the type) gains nothing a direct one would
// not have.
func stepJSON(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				writeProblem(w, fmt.Errorf("%w: %s %s needs a body of type application/json (or none declared), got %q", errUnsupportedMediaType, r.Method, r.URL.Path, ct))
				return
			}
		}
		h(w, r)
	}
}

// AKCA is the AK CA certificate: the attestation root of the ACME
// device-attest provisioner, the same on every node (ca.AKCA).
func (a *Appliance) AKCA() *x509.Certificate { return a.ca.AKCA() }
