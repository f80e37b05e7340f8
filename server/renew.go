package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Stage name of renewal records.
const (
	stageRenewChallenge = "renew-challenge"
	stageRenew          = "renew"
)

// errRenewalIdentity: the renewal's AK is not the device's enrolled AK.
var errRenewalIdentity = errors.New("renewal evidence is not from the enrolled TPM")

// RenewChallenge opens a renewal for an authenticated device: a fresh nonce
// sealed in a token bound to the device and its certificate.
func (e *Enroller) RenewChallenge(dev cluster.Device, leaf *x509.Certificate) (*api.RenewChallengeResponse, error) {
	now := e.now()
	sess := &session{ID: randomHex(16), Expires: e.sessionExpires(now), Nonce: randomBytes(32), DeviceID: dev.ID, Purpose: purposeRenew, Serial: leaf.SerialNumber.Text(16)}
	token, err := e.tokens.seal(sess)
	if err != nil {
		return nil, e.internal(err)
	}
	return &api.RenewChallengeResponse{SessionToken: token, Nonce: sess.Nonce, ExpiresAt: sess.Expires}, nil
}

// Renew re-attests an authenticated, active device and issues a new
// certificate for its TPM-resident key when the policy still admits it.
// Evidence that fails verification or policy moves the device to
// quarantined, in the same commit as the refusal's record.
func (e *Enroller) Renew(ctx context.Context, dev cluster.Device, leaf *x509.Certificate, req *api.RenewRequest) (resp *api.CompleteResponse, err error) {
	defer func(start time.Time) { e.metrics.observe(stageRenew, start, err) }(time.Now())
	now := e.now()
	rec := cluster.AttestationRecord{Time: now, Node: e.nodeID, Stage: stageRenew, DeviceID: dev.ID}
	ek := dev.EK
	rec.Evidence = cluster.Evidence{EK: &ek, Claims: dev.Claims}

	sess, err := e.tokens.open(req.SessionToken, now)
	switch {
	case errors.Is(err, errTokenInvalid) || sess.Purpose != purposeRenew || sess.DeviceID != dev.ID || sess.Serial != leaf.SerialNumber.Text(16):
		return nil, e.reject(ctx, rec, nil, errTokenInvalid) // not this device's renewal: no quarantine
	case err != nil: // expired
		return nil, e.reject(ctx, rec, sess, err)
	}
	rec.SessionID, rec.Evidence.Nonce = sess.ID, hex.EncodeToString(sess.Nonce)
	if used, err := e.reg.SessionUsed(sess.ID); err != nil {
		return nil, e.internal(err)
	} else if used {
		return nil, e.reject(ctx, rec, sess, cluster.ErrSessionUsed)
	}
	pcrs, err := recordQuote(&rec, cluster.RawEvidence{AK: cluster.RawKey{Public: req.AKPublic}}, sess.Nonce, req.Quote, req.PCRs, req.EventLog, req.CSR)
	if err != nil {
		return nil, e.reject(ctx, rec, sess, err)
	}

	// From here on, failure is the device's: quarantine.
	ak, err := goattest.ParseAKPublic(req.AKPublic)
	var akSum string
	if err == nil {
		akSum, err = attest.PublicKeySHA256(ak.Public)
	}
	if err != nil || akSum != dev.AKPublicSHA256 {
		rec.Evidence.AKPublicSHA256 = akSum
		rec.Checks = append(rec.Checks, cluster.Check{Name: attest.CheckAK, Detail: "not the AK enrolled for this device"})
		return nil, e.failRenewal(ctx, rec, sess, fmt.Errorf("%w: AK %.16s is not the enrolled AK %.16s", errRenewalIdentity, akSum, dev.AKPublicSHA256))
	}
	rec.Evidence.AKPublicSHA256, rec.Evidence.AKAlgorithm = akSum, attest.KeyAlgorithm(ak.Public)
	rec.Checks = append(rec.Checks, cluster.Check{Name: attest.CheckAK, Passed: true, Detail: "the AK enrolled for this device"})
	res, err := attest.VerifyRenewal(attest.Renewal{
		AK: ak, Nonce: sess.Nonce, Quote: goattest.Quote{Quote: req.Quote.Quote, Signature: req.Quote.Signature},
		PCRs: pcrs, EventLog: req.EventLog, DeviceKey: leaf.PublicKey, CSR: req.CSR,
	})
	for _, c := range res.Checks {
		rec.Checks = append(rec.Checks, cluster.Check{Name: c.Name, Passed: c.Passed, Detail: c.Detail})
	}
	rec.Evidence.EventLogEvents = res.EventLogEvents
	rec.Evidence.DeviceKeySHA256, rec.Evidence.DeviceKeyAlgorithm = res.DeviceKeySHA256, res.DeviceKeyAlgorithm
	if err != nil {
		return nil, e.failRenewal(ctx, rec, sess, err)
	}
	policy, err := e.policies.current()
	if err != nil {
		return nil, e.internal(err)
	}
	in := policyInput(dev.ID, dev.EK, dev.Claims, dev.Labels, res.PCRs, res.EventLog)
	if ie, err := e.reg.IndividualEnrollment(dev.EK.PublicSHA256); err == nil {
		in.EnrolledGroup = ie.Group
	}
	rec.Evidence.Labels, rec.Evidence.EnrolledGroup = dev.Labels, in.EnrolledGroup
	decision := policy.Evaluate(in)
	rec.Policy = decision
	if err := decision.Err(); err != nil {
		rec.Checks = append(rec.Checks, cluster.Check{Name: checkPolicy, Detail: err.Error()})
		return nil, e.failRenewal(ctx, rec, sess, err)
	}
	rec.Checks = append(rec.Checks, cluster.Check{Name: checkPolicy, Passed: true, Detail: fmt.Sprintf("group %s of policy v%d", decision.Group, decision.PolicyVersion)})

	profile := ca.DeviceProfile{DeviceID: dev.ID, TrustDomain: e.trustDomain, Validity: e.conf.view().settings.CertValidity.Duration}
	if v := decision.Certificate.Validity; v != "" {
		profile.Validity, _ = time.ParseDuration(v)
	}
	if profile.DNSNames, profile.URIs, err = decision.Certificate.SANs(in, decision.Group); err != nil {
		return nil, e.reject(ctx, rec, sess, fmt.Errorf("%w: certificate profile of group %s: %w", attest.ErrPolicyDenied, decision.Group, err))
	}
	if profile.Serial, err = e.ca.NewSerial(); err != nil {
		return nil, e.internal(err)
	}
	decideValidity(&profile, e.ca.Now())
	if err := e.ca.CheckDevice(profile); err != nil {
		return nil, e.reject(ctx, rec, sess, fmt.Errorf("%w: certificate profile of group %s: %v", attest.ErrPolicyDenied, decision.Group, err))
	}
	rec.Outcome, rec.CertificateSerial = cluster.OutcomeAccepted, profile.Serial.Text(16)
	e.recordCertificate(ctx, &rec, profile)
	attID, err := e.reg.CommitRenewal(ctx, sess.ID, sess.Expires, rec, profile.NotAfter)
	if errors.Is(err, cluster.ErrSessionUsed) || errors.Is(err, cluster.ErrSessionExpired) || errors.Is(err, cluster.ErrDeviceInactive) {
		rec.Outcome, rec.CertificateSerial = "", ""
		rec.CertificateNotBefore, rec.CertificateNotAfter = time.Time{}, time.Time{}
		return nil, e.reject(ctx, rec, sess, err)
	}
	if err != nil {
		return nil, e.commitFailed(err)
	}
	return e.issue(ctx, "renewed", attID, res.CSR, profile, mergeConfig(decision.Config, dev.Config))
}

// failRenewal records a refused renewal and quarantines the device.
func (e *Enroller) failRenewal(ctx context.Context, rec cluster.AttestationRecord, sess *session, cause error) error {
	return e.refuse(rec, sess, cause, func(sid string, exp time.Time, rec cluster.AttestationRecord) (uint64, error) {
		return e.reg.CommitFailedRenewal(ctx, sid, exp, rec)
	})
}

// renewChallenge serves POST /v1/renew/challenge. Every answer is counted
// in gatehouse_renewals_total, authentication refusals included.
func (a *Appliance) renewChallenge(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	dev, leaf, err := a.authDevice(r, false)
	var resp *api.RenewChallengeResponse
	if err == nil {
		resp, err = a.enroller.RenewChallenge(dev, leaf)
	}
	a.enroller.metrics.observe(stageRenewChallenge, start, err)
	writeResult(w, http.StatusOK, resp, err)
}

// renew serves POST /v1/renew (Renew counts what it judges; a refused
// authentication is counted here).
func (a *Appliance) renew(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	dev, leaf, err := a.authDevice(r, false)
	if err != nil {
		a.enroller.metrics.observe(stageRenew, start, err)
		writeProblem(w, err)
		return
	}
	var req api.RenewRequest
	if err := a.decode(w, r, stageRenew, api.MaxCompleteBody, &req); err != nil {
		writeProblem(w, err)
		return
	}
	resp, err := a.enroller.Renew(r.Context(), dev, leaf, &req)
	writeResult(w, http.StatusOK, resp, err)
}
