package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"sync/atomic"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// registry is what enrollment needs from the replicated store.
type registry interface {
	CommitEnrollment(ctx context.Context, sessionID string, sessionExpires time.Time, d cluster.Device, a cluster.AttestationRecord, flags ...cluster.Flag) (uint64, error)
	CommitRejection(ctx context.Context, sessionID string, sessionExpires time.Time, a cluster.AttestationRecord, flags ...cluster.Flag) (uint64, error)
	CommitRenewal(ctx context.Context, sessionID string, sessionExpires time.Time, a cluster.AttestationRecord, notAfter time.Time) (uint64, error)
	CommitFailedRenewal(ctx context.Context, sessionID string, sessionExpires time.Time, a cluster.AttestationRecord) (uint64, error)
	SessionUsed(sessionID string) (bool, error)
	Device(id string) (cluster.Device, error)
	IndividualEnrollment(ekPublicSHA256 string) (cluster.IndividualEnrollment, error)
	policyStore
}

// issuer is what enrollment needs from the CA.
type issuer interface {
	NewSerial() (*big.Int, error)
	CheckDevice(p ca.DeviceProfile) error
	IssueDevice(ctx context.Context, csr *x509.CertificateRequest, p ca.DeviceProfile) ([]*x509.Certificate, error)
	Now() time.Time // the clock certificates are dated by
}

// Enroller runs the enrollment protocol: attest (verify), then cluster
// (commit), then ca (issue). It keeps no per-session state.
type Enroller struct {
	// conf is the replicated EK root set and cluster settings (ekroots.go).
	conf        *replicatedConf
	reg         registry
	policies    *policyCache
	ca          issuer
	akCA        akIssuer            // the AK CA (attestca.go)
	attestCA    *acme.AttestationCA // its protocol, with the node's pending activations
	tokens      *sealer
	nodeID      string
	trustDomain string
	now         func() time.Time
	log         *slog.Logger
	issued      atomic.Uint64 // certificates issued since start
	metrics     *enrollMetrics
	// recordValidity says whether the record may carry the certificate's
	// validity (the v3 accepts every member must apply); nil: it may not.
	recordValidity func(context.Context) bool
	// unproven counts refusals before TPM possession was proven, which are
	// not committed one by one (see refuse).
	unproven *refusalCounts
	// leaderless says how long the node has had no leader (nil: unknown).
	leaderless func() time.Duration
}

// checkPolicy names the policy's verdict among a record's checks.
const checkPolicy = "policy"

// checkReprovision names the re-provisioning verdict among a record's checks.
const checkReprovision = "reprovision"

// errReprovisionRefused: same EK, new AK, and the group rejects that.
var errReprovisionRefused = errors.New("re-provisioning refused")

// pend commits a pending enrollment (no certificate) and returns the
// Pending answer.
func (e *Enroller) pend(ctx context.Context, rec cluster.AttestationRecord, sess *session, decision *attest.Decision, why string, flags []cluster.Flag, labels map[string]string) error {
	rec.Outcome, rec.Reason = cluster.OutcomePending, why
	dev := cluster.Device{
		ID:             sess.DeviceID,
		Status:         cluster.DevicePending,
		EK:             sess.EK,
		AKPublicSHA256: sess.AKSHA256,
		Claims:         sess.Claims,
		Group:          decision.Group,
		Mode:           decision.Mode,
		PolicyVersion:  decision.PolicyVersion,
		Labels:         labels,
	}
	attID, err := e.reg.CommitEnrollment(ctx, sess.ID, sess.Expires, dev, rec, flags...)
	if errors.Is(err, cluster.ErrSessionUsed) || errors.Is(err, cluster.ErrSessionExpired) || errors.Is(err, cluster.ErrDeviceInactive) {
		rec.Outcome, rec.Reason = "", ""
		return e.reject(ctx, rec, sess, err)
	}
	if err != nil {
		return e.commitFailed(err)
	}
	e.log.Info("enrollment pending approval", "device_id", sess.DeviceID, "attestation_id", attID, "group", decision.Group)
	return &api.Pending{DeviceID: sess.DeviceID, AttestationID: attID, Status: cluster.DevicePending,
		RetryAfterSeconds: int(e.conf.view().settings.ApprovalRetry.Round(time.Second) / time.Second), Detail: why}
}

// Stage names in attestation records.
const (
	stageChallenge = "challenge"
	stageComplete  = "complete"
)

// Challenge verifies the EK and AK and returns a credential challenge.
func (e *Enroller) Challenge(ctx context.Context, req *api.ChallengeRequest) (resp *api.ChallengeResponse, err error) {
	defer func(start time.Time) { e.metrics.observe(stageChallenge, start, err) }(time.Now())
	now := e.now()
	rec := cluster.AttestationRecord{Time: now, Node: e.nodeID, Stage: stageChallenge, Evidence: cluster.Evidence{Claims: claims(req.Claims)}}
	sess := &session{Expires: e.sessionExpires(now), Claims: rec.Evidence.Claims, Raw: cluster.RawEvidence{
		EKCertificate: req.EKCertificate, EKPublic: req.EKPublic, EKPublicArea: req.EKPublicArea,
		AK: cluster.RawKey{Public: req.AK.Public, CreateData: req.AK.CreateData, CreateAttestation: req.AK.CreateAttestation, CreateSignature: req.AK.CreateSignature},
	}}

	ekPub, err := e.verifyEK(req, sess)
	rec.DeviceID, rec.Checks = sess.DeviceID, sess.Checks
	if sess.EK.PublicSHA256 != "" {
		ekCopy := sess.EK
		rec.Evidence.EK = &ekCopy
	}
	if err != nil {
		return nil, e.reject(ctx, rec, nil, err)
	}

	ak, err := attest.VerifyAK(goattest.AttestationParameters{
		Public:            req.AK.Public,
		CreateData:        req.AK.CreateData,
		CreateAttestation: req.AK.CreateAttestation,
		CreateSignature:   req.AK.CreateSignature,
	})
	if err != nil {
		rec.Checks = append(rec.Checks, cluster.Check{Name: attest.CheckAK, Detail: err.Error()})
		return nil, e.reject(ctx, rec, nil, err)
	}
	sess.Checks = append(sess.Checks, cluster.Check{Name: attest.CheckAK, Passed: true, Detail: "restricted signing key created in a TPM"})
	sess.AKSHA256, sess.AKAlg = ak.PublicSHA256, ak.Algorithm

	sess.ID, sess.Nonce, sess.Secret = randomHex(16), randomBytes(32), randomBytes(32)
	cred, err := ak.MakeCredential(ekPub, req.EKPublicArea, sess.Secret)
	if err != nil {
		rec.Evidence.AKPublicSHA256, rec.Evidence.AKAlgorithm = ak.PublicSHA256, ak.Algorithm
		return nil, e.reject(ctx, rec, nil, err)
	}
	token, err := e.tokens.seal(sess)
	if err != nil {
		return nil, e.internal(err)
	}
	return &api.ChallengeResponse{
		SessionToken: token,
		Nonce:        sess.Nonce,
		Credential:   api.Credential{Credential: cred.Credential, Secret: cred.Secret},
		ExpiresAt:    sess.Expires,
	}, nil
}

// verifyEK establishes the EK public key and the device ID, recording what it
// learned in sess.
func (e *Enroller) verifyEK(req *api.ChallengeRequest, sess *session) (crypto.PublicKey, error) {
	var ekPub crypto.PublicKey
	if len(req.EKPublic) > 0 {
		pub, err := x509.ParsePKIXPublicKey(req.EKPublic)
		if err != nil {
			return nil, fmt.Errorf("%w: EK public key: %v", attest.ErrEKInvalid, err)
		}
		ekPub = pub
	}
	if len(req.EKCertificate) == 0 {
		if ekPub == nil {
			return nil, malformed("an EK certificate or EK public key is required")
		}
		e.recordEK(sess, ekPub)
		// Without a certificate only an operator vouches for the EK: its
		// public key must be pre-registered (individual enrollment).
		if err := e.preRegistered(sess); err != nil {
			return nil, fmt.Errorf("%w: no EK certificate was sent and %v", attest.ErrEKUntrusted, err)
		}
		return ekPub, nil
	}
	ek, err := attest.ParseEKCertificate(req.EKCertificate)
	if err != nil {
		if ekPub != nil {
			e.recordEK(sess, ekPub)
		}
		return nil, err
	}
	if ekPub != nil && !attest.PublicKeysEqual(ekPub, ek.Cert.PublicKey) {
		e.recordEK(sess, ekPub)
		return nil, fmt.Errorf("%w: the EK public key does not match the EK certificate", attest.ErrEKInvalid)
	}
	ekPub = ek.Cert.PublicKey
	e.recordEK(sess, ekPub)
	sum := sha256.Sum256(ek.Cert.Raw)
	sess.EK.CertificateSHA256 = hex.EncodeToString(sum[:])

	// The certificate's issuer and TPM attributes become EK evidence (and
	// so can select a group) only once its chain verifies; until then they
	// are claims, kept in the check's detail, marked unverified.
	claimed := fmt.Sprintf("the certificate's unverified claims: issuer %q, TPM manufacturer %q, model %q", attest.Name(ek.Cert.Issuer), ek.Manufacturer, ek.Model)
	chain, err := e.conf.view().verifier.Verify(ek)
	if errors.Is(err, attest.ErrEKUntrusted) {
		if perr := e.preRegistered(sess); perr == nil {
			c := &sess.Checks[len(sess.Checks)-1]
			c.Detail += "; " + claimed + " (" + err.Error() + ")"
			return ekPub, nil
		}
	}
	if err != nil {
		sess.Checks = append(sess.Checks, cluster.Check{Name: attest.CheckEKChain, Detail: err.Error() + "; " + claimed})
		return nil, err
	}
	sess.EK.Issuer = attest.Name(ek.Cert.Issuer)
	sess.EK.Serial = ek.Cert.SerialNumber.Text(16)
	sess.EK.Manufacturer, sess.EK.Model, sess.EK.Version = ek.Manufacturer, ek.Model, ek.Version
	detail := "anchor: " + attest.Name(chain[len(chain)-1].Subject)
	if !ek.HasEKUsage() {
		detail += "; no EK EKU (2.23.133.8.1)"
	}
	sess.Checks = append(sess.Checks, cluster.Check{Name: attest.CheckEKChain, Passed: true, Detail: detail})
	return ekPub, nil
}

// preRegistered passes the EK check for an EK an operator vouched for: an
// imported individual enrollment, or its public-key hash listed in an
// enrollment group.
func (e *Enroller) preRegistered(sess *session) error {
	if ie, err := e.reg.IndividualEnrollment(sess.EK.PublicSHA256); err == nil {
		sess.Checks = append(sess.Checks, cluster.Check{Name: attest.CheckEKChain, Passed: true, Detail: fmt.Sprintf("individual enrollment into group %s, imported by %s", ie.Group, ie.ImportedBy)})
		return nil
	}
	p, err := e.policies.current()
	if err != nil {
		return err
	}
	g := p.PreRegistered(sess.EK.PublicSHA256)
	if g == nil {
		return fmt.Errorf("EK %s is not pre-registered in policy v%d nor imported", sess.EK.PublicSHA256, p.Version)
	}
	sess.Checks = append(sess.Checks, cluster.Check{Name: attest.CheckEKChain, Passed: true, Detail: fmt.Sprintf("pre-registered in group %s of policy v%d", g.Name, p.Version)})
	return nil
}

func (e *Enroller) recordEK(sess *session, ekPub crypto.PublicKey) {
	if sum, err := attest.PublicKeySHA256(ekPub); err == nil {
		sess.EK.PublicSHA256 = sum
	}
	if id, err := attest.DeviceID(ekPub); err == nil {
		sess.DeviceID = id
	}
}

// Complete verifies the second round trip, commits, then issues.
func (e *Enroller) Complete(ctx context.Context, req *api.CompleteRequest) (resp *api.CompleteResponse, err error) {
	defer func(start time.Time) { e.metrics.observe(stageComplete, start, err) }(time.Now())
	now := e.now()
	rec := cluster.AttestationRecord{Time: now, Node: e.nodeID, Stage: stageComplete}

	sess, err := e.tokens.open(req.SessionToken, now)
	if errors.Is(err, errTokenInvalid) || err == nil && sess.Purpose != "" {
		return nil, e.reject(ctx, rec, nil, errTokenInvalid)
	}
	// From here on the session is authentic: attribute the record to it.
	rec.DeviceID, rec.SessionID, rec.Checks = sess.DeviceID, sess.ID, append([]cluster.Check(nil), sess.Checks...)
	ek := sess.EK
	rec.Evidence = cluster.Evidence{EK: &ek, AKPublicSHA256: sess.AKSHA256, AKAlgorithm: sess.AKAlg, Claims: sess.Claims, Nonce: hex.EncodeToString(sess.Nonce)}
	if err != nil { // expired
		return nil, e.reject(ctx, rec, sess, err)
	}
	if used, err := e.reg.SessionUsed(sess.ID); err != nil {
		return nil, e.internal(err)
	} else if used {
		return nil, e.reject(ctx, rec, sess, cluster.ErrSessionUsed)
	}

	akPub, err := goattest.ParseAKPublic(sess.Raw.AK.Public)
	if err != nil { // sealed by us after VerifyAK: cannot happen unless the code changed
		return nil, e.internal(err)
	}
	raw := sess.Raw
	raw.DeviceKey = cluster.RawKey{Public: req.DeviceKey.Public, CreateData: req.DeviceKey.CreateData, CreateAttestation: req.DeviceKey.CreateAttestation, CreateSignature: req.DeviceKey.CreateSignature}
	pcrs, err := recordQuote(&rec, raw, sess.Nonce, req.Quote, req.PCRs, req.EventLog, req.CSR)
	if err != nil {
		return nil, e.reject(ctx, rec, sess, err)
	}

	res, err := attest.VerifyCompletion(attest.Completion{
		AK:              akPub,
		Nonce:           sess.Nonce,
		ExpectedSecret:  sess.Secret,
		ActivatedSecret: req.ActivatedSecret,
		Quote:           goattest.Quote{Quote: req.Quote.Quote, Signature: req.Quote.Signature},
		PCRs:            pcrs,
		EventLog:        req.EventLog,
		DeviceKey: goattest.CertificationParameters{
			Public:            req.DeviceKey.Public,
			CreateData:        req.DeviceKey.CreateData,
			CreateAttestation: req.DeviceKey.CreateAttestation,
			CreateSignature:   req.DeviceKey.CreateSignature,
		},
		CertifyQualifyingData: api.CertifyQualifyingData(sess.Nonce),
		CSR:                   req.CSR,
	})
	for _, c := range res.Checks {
		rec.Checks = append(rec.Checks, cluster.Check{Name: c.Name, Passed: c.Passed, Detail: c.Detail})
	}
	rec.Evidence.EventLogEvents = res.EventLogEvents
	rec.Evidence.DeviceKeySHA256, rec.Evidence.DeviceKeyAlgorithm = res.DeviceKeySHA256, res.DeviceKeyAlgorithm
	if err != nil {
		return nil, e.reject(ctx, rec, sess, err)
	}

	// The evidence is genuine; now the policy judges it.
	v, err := e.judge(ctx, &rec, sess, res.PCRs, res.EventLog, false)
	if err != nil {
		return nil, err
	}
	if v.status == cluster.DevicePending {
		return nil, e.pend(ctx, rec, sess, v.decision, v.why, v.flags, v.labels)
	}
	decision, in, old, labels, flags := v.decision, v.in, v.old, v.labels, v.flags
	profile := ca.DeviceProfile{DeviceID: sess.DeviceID, TrustDomain: e.trustDomain, Validity: e.conf.view().settings.CertValidity.Duration}
	if v := decision.Certificate.Validity; v != "" {
		profile.Validity, _ = time.ParseDuration(v) // validated with the policy
	}
	if profile.DNSNames, profile.URIs, err = decision.Certificate.SANs(in, decision.Group); err != nil {
		return nil, e.reject(ctx, rec, sess, fmt.Errorf("%w: certificate profile of group %s: %w", attest.ErrPolicyDenied, decision.Group, err))
	}

	// Reserve the serial in the committed record, so no certificate can
	// exist that the registry does not know about.
	serial, err := e.ca.NewSerial()
	if err != nil {
		return nil, e.internal(err)
	}
	profile.Serial = serial
	decideValidity(&profile, e.ca.Now())
	if err := e.ca.CheckDevice(profile); err != nil { // before commit: no record without a certificate
		return nil, e.reject(ctx, rec, sess, fmt.Errorf("%w: certificate profile of group %s: %v", attest.ErrPolicyDenied, decision.Group, err))
	}
	rec.Outcome, rec.CertificateSerial = cluster.OutcomeAccepted, serial.Text(16)
	e.recordCertificate(ctx, &rec, profile)
	dev := cluster.Device{
		ID:                  sess.DeviceID,
		Status:              cluster.DeviceActive,
		EK:                  sess.EK,
		AKPublicSHA256:      sess.AKSHA256,
		Claims:              sess.Claims,
		CertificateSerial:   rec.CertificateSerial,
		CertificateNotAfter: profile.NotAfter,
		Group:               decision.Group,
		Mode:                decision.Mode,
		PolicyVersion:       decision.PolicyVersion,
		Labels:              labels,
	}
	attID, err := e.reg.CommitEnrollment(ctx, sess.ID, sess.Expires, dev, rec, flags...)
	if errors.Is(err, cluster.ErrSessionUsed) || errors.Is(err, cluster.ErrSessionExpired) || errors.Is(err, cluster.ErrDeviceInactive) { // lost a race with a completion or an operator
		rec.Outcome, rec.CertificateSerial = "", ""
		rec.CertificateNotBefore, rec.CertificateNotAfter = time.Time{}, time.Time{}
		return nil, e.reject(ctx, rec, sess, err)
	}
	if err != nil {
		return nil, e.commitFailed(err)
	}

	var override json.RawMessage
	if old != nil {
		override = old.Config
	}
	return e.issue(ctx, "enrolled", attID, res.CSR, profile, mergeConfig(decision.Config, override))
}

// decideValidity sets the certificate's validity before commit, so the
// registry records what the CA then signs exactly. now is the CA's clock
// (e.ca.Now): the CA checks on it that what it signs is valid now.
func decideValidity(p *ca.DeviceProfile, now time.Time) {
	p.NotBefore, p.NotAfter = ca.DeviceValidity(now, p.Validity)
}

// recordCertificate puts the certificate's validity on the accepted record
// when every member applies the commands that keep it (recordValidity).
func (e *Enroller) recordCertificate(ctx context.Context, rec *cluster.AttestationRecord, p ca.DeviceProfile) {
	if e.recordValidity != nil && e.recordValidity(ctx) {
		rec.CertificateNotBefore, rec.CertificateNotAfter = p.NotBefore, p.NotAfter
	}
}

// judgement is what judge decided for a device that proved possession.
type judgement struct {
	decision *attest.Decision
	in       *attest.Input
	old      *cluster.Device // the registered device, if any
	labels   map[string]string
	status   string // cluster.DeviceActive or cluster.DevicePending
	why      string // why pending
	flags    []cluster.Flag
}

// judge decides, after possession was proven, whether a device enrolls and
// how: its registry state, the policy (for acme, the deciding group must
// admit ACME device-attest, ACMEGroup), approval and re-provisioning. It
// writes its checks and the decision into rec; a refusal is committed
// (reject) and returned as the device's problem. Native enrollment and the
// attestation CA share it, so both paths follow one state machine.
func (e *Enroller) judge(ctx context.Context, rec *cluster.AttestationRecord, sess *session, pcrs []goattest.PCR, log *attest.EventLog, acme bool) (*judgement, error) {
	policy, err := e.policies.current()
	if err != nil {
		return nil, e.internal(err)
	}
	v := &judgement{status: cluster.DeviceActive}
	if d, err := e.reg.Device(sess.DeviceID); err == nil {
		if d.Status != cluster.DeviceActive && d.Status != cluster.DevicePending {
			return nil, e.reject(ctx, *rec, sess, fmt.Errorf("%w: device %s is %s", cluster.ErrDeviceInactive, d.ID, d.Status))
		}
		v.old = &d
	} else if !errors.Is(err, cluster.ErrNotFound) {
		return nil, e.internal(err)
	}
	individual, ierr := e.reg.IndividualEnrollment(sess.EK.PublicSHA256)
	if v.old != nil {
		v.labels = v.old.Labels
	} else if ierr == nil {
		v.labels = individual.Labels
	}
	v.in = policyInput(sess.DeviceID, sess.EK, sess.Claims, v.labels, pcrs, log)
	v.in.EnrolledGroup = individual.Group
	rec.Evidence.Labels, rec.Evidence.EnrolledGroup = v.labels, individual.Group
	if acme {
		if _, err := policy.ACMEGroup(v.in); err != nil {
			rec.Checks = append(rec.Checks, cluster.Check{Name: checkPolicy, Detail: err.Error()})
			return nil, e.reject(ctx, *rec, sess, err)
		}
	}
	decision := policy.Evaluate(v.in)
	v.decision, rec.Policy = decision, decision
	if err := decision.Err(); err != nil {
		rec.Checks = append(rec.Checks, cluster.Check{Name: checkPolicy, Detail: err.Error()})
		return nil, e.reject(ctx, *rec, sess, err)
	}
	rec.Checks = append(rec.Checks, cluster.Check{Name: checkPolicy, Passed: true, Detail: fmt.Sprintf("group %s of policy v%d, mode %s", decision.Group, decision.PolicyVersion, decision.Mode)})

	// Pending or active, and anomalies: see DESIGN.md, "Approval, re-provisioning, anomalies".
	old := v.old
	switch {
	case old == nil && decision.Mode == attest.ModeApprove:
		v.status, v.why = cluster.DevicePending, fmt.Sprintf("group %s enrolls in approve mode", decision.Group)
	case old != nil && old.Status == cluster.DevicePending:
		v.status, v.why = cluster.DevicePending, "awaiting an operator's approval"
	case old != nil && old.AKPublicSHA256 != sess.AKSHA256 && len(old.Serials) > 0:
		// A new AK for an EK that already had a certificate. (A device that
		// was only ever pending makes a new AK on every retry: no anomaly.)
		v.flags = append(v.flags, cluster.Flag{Name: cluster.FlagReprovisioned, Detail: fmt.Sprintf("same EK, new AK %.16s (was %.16s); group %s: %s", sess.AKSHA256, old.AKPublicSHA256, decision.Group, decision.Reprovision)})
		if rec.Time.Before(old.CertificateNotAfter) {
			v.flags = append(v.flags, cluster.Flag{Name: cluster.FlagPossibleClone, Detail: fmt.Sprintf("a new AK while certificate %s is valid until %s", old.CertificateSerial, old.CertificateNotAfter.Format(time.RFC3339))})
		}
		switch decision.Reprovision {
		case attest.ReprovisionReject:
			rec.Checks = append(rec.Checks, cluster.Check{Name: checkReprovision, Detail: "group " + decision.Group + " rejects re-provisioning"})
			return nil, e.reject(ctx, *rec, sess, fmt.Errorf("%w: device %s came back with a new AK and group %s rejects re-provisioning", errReprovisionRefused, sess.DeviceID, decision.Group), v.flags...)
		case attest.ReprovisionRequireApproval:
			v.status, v.why = cluster.DevicePending, fmt.Sprintf("device came back with a new AK; group %s requires approval", decision.Group)
		}
	}
	return v, nil
}

// issue signs the certificate whose serial and validity the committed
// record attID reserved, and builds the device's answer.
func (e *Enroller) issue(ctx context.Context, what string, attID uint64, csr *x509.CertificateRequest, profile ca.DeviceProfile, config json.RawMessage) (*api.CompleteResponse, error) {
	chain, err := e.ca.IssueDevice(ctx, csr, profile)
	if err != nil {
		e.log.Error("certificate issuance failed after commit", "device_id", profile.DeviceID, "attestation_id", attID, "err", err)
		return nil, newProblem(http.StatusInternalServerError, api.CodeInternal, "certificate issuance failed")
	}
	e.issued.Add(1)
	e.metrics.certsDone.Inc()
	e.log.Info("device "+what, "device_id", profile.DeviceID, "attestation_id", attID, "serial", profile.Serial.Text(16))
	out := &api.CompleteResponse{DeviceID: profile.DeviceID, AttestationID: attID, Certificate: chain[0].Raw, Configuration: config}
	for _, c := range chain[1:] {
		out.Chain = append(out.Chain, c.Raw)
	}
	return out, nil
}

// reject commits a rejected attestation record and returns the problem the
// device sees; a refusal before TPM possession was proven is only counted
// (see refuse).
func (e *Enroller) reject(ctx context.Context, rec cluster.AttestationRecord, sess *session, cause error, flags ...cluster.Flag) error {
	return e.refuse(rec, sess, cause, func(sid string, exp time.Time, rec cluster.AttestationRecord) (uint64, error) {
		return e.reg.CommitRejection(ctx, sid, exp, rec, flags...)
	})
}

// refuse records cause in rec, commits rec with commit and returns the
// problem the device sees, naming the committed record.
//
// Only a refusal of a client that proved it holds the TPM (see possession)
// is committed, with its reason, and counts towards the device's
// repeated_failures. One before that (malformed request, bad or expired
// token, untrusted EK, bad AK, failed activation) is anyone's to send, with
// anyone's public EK certificate: it writes nothing to Raft, so it can
// neither grow every replica nor flag the device it names. It is counted
// (gatehouse_refusals_unrecorded_total, and the node's periodic
// admission.refused audit summary) and answered without an attestation ID.
// Raw evidence is kept only from a client that proved possession.
func (e *Enroller) refuse(rec cluster.AttestationRecord, sess *session, cause error, commit func(string, time.Time, cluster.AttestationRecord) (uint64, error)) error {
	p := problemFor(cause)
	rec.Outcome, rec.Code, rec.Reason = cluster.OutcomeRejected, p.Code, p.Detail
	proven, keepRaw := possession(rec)
	if !proven {
		e.unproven.add(rec.Stage, p.Code)
		e.metrics.unrecorded.WithLabelValues(rec.Stage, p.Code).Inc()
		e.log.Debug("attestation refused before TPM possession was proven (counted, not recorded)", "stage", rec.Stage, "device_id", rec.DeviceID, "code", p.Code)
		return p
	}
	if !keepRaw {
		rec.RawEvidenceGzip, rec.EventLogGzip = nil, nil
	}
	var sid string
	var exp time.Time
	if sess != nil {
		sid, exp = sess.ID, sess.Expires
	}
	id, err := commit(sid, exp, rec)
	if err != nil {
		e.log.Error("could not commit a refusal", "stage", rec.Stage, "device_id", rec.DeviceID, "code", p.Code, "err", err)
		return e.commitFailed(err)
	}
	p.AttestationID = id
	e.log.Info("attestation refused", "stage", rec.Stage, "device_id", rec.DeviceID, "code", p.Code, "attestation_id", id)
	return p
}

// rejectRequest records a request refused before it could be decoded.
func (e *Enroller) rejectRequest(ctx context.Context, stage string, cause error) error {
	err := e.reject(ctx, cluster.AttestationRecord{Time: e.now(), Node: e.nodeID, Stage: stage}, nil, cause)
	e.metrics.observe(stage, time.Now(), err)
	return err
}

// recordQuote puts the second round trip's evidence into rec: the PCRs
// (also validated and converted for verification), the event log's digest
// and compressed bytes, and the raw evidence, raw completed with the quote,
// PCRs and CSR. Enrollment and renewal both use it.
func recordQuote(rec *cluster.AttestationRecord, raw cluster.RawEvidence, nonce []byte, quote api.Quote, in []api.PCR, eventLog, csr []byte) ([]goattest.PCR, error) {
	raw.Nonce, raw.Quote, raw.QuoteSignature, raw.CSR = nonce, quote.Quote, quote.Signature, csr
	for _, p := range in {
		raw.PCRs = append(raw.PCRs, cluster.RawPCR{Index: p.Index, Bank: p.Bank, Digest: p.Digest})
	}
	rec.RawEvidenceGzip = bounded(gzipJSON(raw))
	pcrs, bank, err := convertPCRs(in)
	if err != nil {
		return nil, err
	}
	rec.Evidence.PCRBank = bank
	for _, p := range pcrs {
		rec.Evidence.PCRs = append(rec.Evidence.PCRs, cluster.PCRValue{Index: p.Index, Digest: hex.EncodeToString(p.Digest)})
	}
	if len(eventLog) > 0 {
		sum := sha256.Sum256(eventLog)
		rec.Evidence.EventLogSHA256 = hex.EncodeToString(sum[:])
		rec.EventLogGzip = bounded(gzipBytes(eventLog))
	}
	return pcrs, nil
}

func convertPCRs(in []api.PCR) ([]goattest.PCR, string, error) {
	if len(in) == 0 {
		return nil, "", malformed("no PCR values were sent")
	}
	out := make([]goattest.PCR, 0, len(in))
	bank := in[0].Bank
	perBank := map[string]int{}
	for _, p := range in {
		h, ok := attest.BankHash(p.Bank)
		if !ok {
			return nil, "", malformed(fmt.Sprintf("unknown PCR bank %q", p.Bank))
		}
		// A quote covers at most 24 PCRs of a bank; more cannot be
		// evidence and would only grow the committed record.
		if perBank[p.Bank]++; perBank[p.Bank] > 24 {
			return nil, "", malformed(fmt.Sprintf("more than 24 %s PCR values", p.Bank))
		}
		if p.Index < 0 || p.Index > 23 || len(p.Digest) != h.Size() {
			return nil, "", malformed(fmt.Sprintf("PCR %d (%s): bad index or digest length", p.Index, p.Bank))
		}
		if p.Bank != bank {
			bank = "mixed"
		}
		out = append(out, goattest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: h})
	}
	return out, bank, nil
}

func claims(c api.Claims) cluster.Claims {
	return cluster.Claims{Serial: c.Serial, Model: c.Model, FirmwareVersion: c.FirmwareVersion}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux; if it does, nothing is safe
	}
	return b
}

func randomHex(n int) string { return hex.EncodeToString(randomBytes(n)) }

// problemFor maps an error to the problem the device sees.
func problemFor(err error) *api.Problem {
	var p *api.Problem
	if errors.As(err, &p) {
		return p
	}
	for _, m := range problemTable {
		if errors.Is(err, m.err) {
			return newProblem(m.status, m.code, err.Error())
		}
	}
	return newProblem(http.StatusInternalServerError, api.CodeInternal, "internal error")
}

var problemTable = []struct {
	err    error
	status int
	code   string
}{
	{attest.ErrEKInvalid, http.StatusForbidden, api.CodeEKInvalid},
	{attest.ErrEKUntrusted, http.StatusForbidden, api.CodeEKUntrusted},
	{attest.ErrAKInvalid, http.StatusForbidden, api.CodeAKInvalid},
	{attest.ErrActivationFailed, http.StatusForbidden, api.CodeActivationFailed},
	{attest.ErrQuoteNonce, http.StatusForbidden, api.CodeQuoteNonceMismatch},
	{attest.ErrPCRMismatch, http.StatusForbidden, api.CodePCRMismatch},
	{attest.ErrPCRNotQuoted, http.StatusForbidden, api.CodePCRNotQuoted},
	{attest.ErrQuoteInvalid, http.StatusForbidden, api.CodeQuoteInvalid},
	{attest.ErrEventLogInvalid, http.StatusForbidden, api.CodeEventLogInvalid},
	{attest.ErrCertifyBinding, http.StatusForbidden, api.CodeCertifyBinding},
	{attest.ErrCertifyInvalid, http.StatusForbidden, api.CodeCertifyInvalid},
	{attest.ErrCSRInvalid, http.StatusForbidden, api.CodeCSRInvalid},
	{attest.ErrCSRKeyMismatch, http.StatusForbidden, api.CodeCSRKeyMismatch},
	{errTokenInvalid, http.StatusForbidden, api.CodeTokenInvalid},
	{cluster.ErrSessionUsed, http.StatusConflict, api.CodeSessionReplayed},
	{attest.ErrClaimInvalid, http.StatusForbidden, api.CodeClaimInvalid},    // before ErrPolicyDenied, which wraps it
	{cluster.ErrSessionExpired, http.StatusForbidden, api.CodeTokenExpired}, // at open, and at apply by the leader's clock
	{attest.ErrPolicyDenied, http.StatusForbidden, api.CodePolicyDenied},
	{attest.ErrACMENotAllowed, http.StatusForbidden, api.CodeACMENotAllowed},
	{acme.ErrSecretUnknown, http.StatusForbidden, api.CodeSecretUnknown},
	{attest.ErrPolicyInvalid, http.StatusBadRequest, api.CodePolicyInvalid}, // policy apply and test
	{cluster.ErrDeviceInactive, http.StatusForbidden, api.CodeDeviceInactive},
	{errReprovisionRefused, http.StatusForbidden, api.CodeReprovisionRefused},
	{errRenewalIdentity, http.StatusForbidden, api.CodeRenewalIdentity},
	{errUnsupportedMediaType, http.StatusUnsupportedMediaType, api.CodeUnsupportedMediaType},
	{errEKRootInvalid, http.StatusBadRequest, api.CodeEKRootInvalid},     // ekroots add
	{errSettingsInvalid, http.StatusBadRequest, api.CodeSettingsInvalid}, // settings set
	// ekroots add/remove, settings set while a member runs an older build
	{errMembersBehind, http.StatusServiceUnavailable, api.CodeUnavailable},
}

func newProblem(status int, code, detail string) *api.Problem {
	return &api.Problem{Type: api.ProblemType(code), Title: http.StatusText(status), Status: status, Code: code, Detail: detail}
}

func malformed(detail string) *api.Problem {
	return newProblem(http.StatusBadRequest, api.CodeMalformed, detail)
}

// unavailableWait is the Retry-After of a commit that found no leader:
// about one election at first, then half the time the node has been
// without a leader, up to maxRetryAfter. The agent follows Retry-After, so
// a fleet waiting out a long loss of quorum comes back less and less often
// instead of every few seconds.
func unavailableWait(leaderless time.Duration) time.Duration {
	return min(max(2*time.Second, leaderless/2), maxRetryAfter).Truncate(time.Second)
}

// internal logs the cause and returns a problem that does not leak it.
func (e *Enroller) internal(err error) *api.Problem {
	e.log.Error("internal error", "err", err)
	return newProblem(http.StatusInternalServerError, api.CodeInternal, "internal error")
}

// commitFailed maps a failed Raft commit: without a leader the device should
// retry; anything else is an internal error.
func (e *Enroller) commitFailed(err error) *api.Problem {
	if errors.Is(err, cluster.ErrStorageFull) {
		return newProblem(http.StatusServiceUnavailable, api.CodeStorageFull, "this node cannot store the enrollment (its disk is full): nothing was recorded; retry")
	}
	if errors.Is(err, cluster.ErrNotLeader) {
		p := newProblem(http.StatusServiceUnavailable, api.CodeUnavailable, "the cluster has no leader; retry")
		if e.leaderless != nil {
			p.RetryAfter = unavailableWait(e.leaderless())
		}
		return p
	}
	return e.internal(fmt.Errorf("commit: %w", err))
}
