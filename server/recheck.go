package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// EvidenceFormat names an evidence bundle.
const EvidenceFormat = "gatehouse-evidence/v1"

// EvidenceBundle is everything a past decision rests on: the record, the
// raw bytes the device sent, its event log, and the policy version that
// judged it. Recheck needs nothing else but the manufacturer CAs.
type EvidenceBundle struct {
	Format   string                    `json:"format"`
	Record   cluster.AttestationRecord `json:"record"`
	Raw      *cluster.RawEvidence      `json:"raw,omitempty"`
	EventLog []byte                    `json:"event_log,omitempty"`
	Policy   json.RawMessage           `json:"policy,omitempty"`
}

// Evidence assembles the bundle of an attestation record.
func (a *Appliance) Evidence(id uint64) (EvidenceBundle, error) {
	rec, err := a.node.Attestation(id)
	if err != nil {
		return EvidenceBundle{}, err
	}
	b := EvidenceBundle{Format: EvidenceFormat, Record: rec}
	if rec.HasRawEvidence {
		gz, err := a.node.RawEvidence(id)
		if err != nil {
			return b, err
		}
		raw, err := gunzipBytes(gz)
		if err != nil {
			return b, err
		}
		b.Raw = &cluster.RawEvidence{}
		if err := json.Unmarshal(raw, b.Raw); err != nil {
			return b, fmt.Errorf("attestation %d raw evidence: %w", id, err)
		}
	}
	if rec.HasEventLog {
		gz, err := a.node.EventLog(id)
		if err != nil {
			return b, err
		}
		if b.EventLog, err = gunzipBytes(gz); err != nil {
			return b, err
		}
	}
	if rec.Policy != nil && rec.Policy.PolicyVersion > 0 {
		pr, err := a.node.Policy(rec.Policy.PolicyVersion)
		if err != nil {
			return b, err
		}
		b.Policy = pr.Document
	}
	return b, nil
}

// RecheckResult compares one recorded check with its re-check.
type RecheckResult struct {
	Check    string `json:"check"`
	Recorded string `json:"recorded"` // pass | fail | absent
	Recheck  string `json:"recheck"`  // pass | fail | not re-checkable | not reached
	Agrees   bool   `json:"agrees"`
	Detail   string `json:"detail,omitempty"`
}

// RecheckReport is the outcome of Recheck.
type RecheckReport struct {
	AttestationID uint64          `json:"attestation_id"`
	Outcome       string          `json:"recorded_outcome"`
	Results       []RecheckResult `json:"results"`
	Reproduced    bool            `json:"reproduced"` // every re-checkable check agrees
}

// Recheck re-verifies a past decision from its bundle alone: the EK chain
// against ekRoots as of the record's time, the AK's creation, the quote,
// the event log, the device key's certification, the CSR, and the policy
// version it was judged by. Credential activation was an exchange with
// the TPM and is taken from the record.
//
// Guarantees: a bundle whose bytes were changed after the fact no longer
// reproduces its record (signatures and digests fail, or a different
// decision results). Non-guarantees: Recheck trusts the record for the
// activation and for operator vouching (pre-registered EKs), and cannot
// know whether the bundle is complete; the audit log's signed chain
// covers the record itself.
func Recheck(b EvidenceBundle, ekRoots []*x509.Certificate, ekOpts ...attest.EKOption) RecheckReport {
	rec := b.Record
	rep := RecheckReport{AttestationID: rec.ID, Outcome: rec.Outcome}
	recorded := map[string]string{}
	for _, c := range rec.Checks {
		if c.Passed {
			recorded[c.Name] = "pass"
		} else {
			recorded[c.Name] = "fail"
		}
	}
	add := func(check, result, detail string) {
		r := RecheckResult{Check: check, Recorded: recorded[check], Recheck: result, Detail: detail}
		if r.Recorded == "" {
			r.Recorded = "absent"
		}
		switch result {
		case "not re-checkable":
			r.Agrees = true
		case "not reached":
			r.Agrees = r.Recorded == "absent"
		default:
			r.Agrees = r.Recorded == result
		}
		rep.Results = append(rep.Results, r)
	}
	raw := b.Raw
	if raw == nil {
		add("raw_evidence", "fail", "the record holds no raw evidence")
		return rep
	}

	// EK and AK: the first round trip.
	if _, ok := recorded[attest.CheckEKChain]; ok {
		add(recheckEK(rec, raw, ekRoots, ekOpts))
	}
	if _, ok := recorded[attest.CheckAK]; ok && rec.Stage != stageRenew {
		ak, err := attest.VerifyAK(goattest.AttestationParameters{Public: raw.AK.Public, CreateData: raw.AK.CreateData, CreateAttestation: raw.AK.CreateAttestation, CreateSignature: raw.AK.CreateSignature})
		switch {
		case err != nil:
			add(attest.CheckAK, "fail", err.Error())
		case ak.PublicSHA256 != rec.Evidence.AKPublicSHA256:
			add(attest.CheckAK, "fail", "the AK is not the one the record names")
		default:
			add(attest.CheckAK, "pass", "restricted signing key created in a TPM")
		}
	}
	if _, ok := recorded[attest.CheckActivation]; ok {
		add(attest.CheckActivation, "not re-checkable", "an exchange with the TPM: taken from the record")
	}
	if rec.Stage == stageChallenge {
		rep.Reproduced = agreeAll(rep.Results)
		return rep
	}

	// The second round trip.
	akPub, err := goattest.ParseAKPublic(raw.AK.Public)
	if err != nil {
		add(attest.CheckQuoteSignature, "fail", "AK public: "+err.Error())
		return rep
	}
	// The quote is evidence for this record only if it is by the record's
	// AK over the record's nonce: otherwise any TPM's later quote would
	// reproduce it. (For enrollment the AK was compared above.)
	if sum, _ := attest.PublicKeySHA256(akPub.Public); rec.Stage == stageRenew {
		switch {
		case sum != rec.Evidence.AKPublicSHA256:
			add(attest.CheckAK, "fail", "the AK is not the one the record names")
			return rep
		case recorded[attest.CheckAK] == "fail":
			// Refused live as not the device's enrolled AK: that is the
			// registry's to know, and verification stopped there.
			add(attest.CheckAK, "not re-checkable", "whether it was the device's enrolled AK is the registry's")
			rep.Reproduced = agreeAll(rep.Results)
			return rep
		}
		add(attest.CheckAK, "pass", "the AK the record names")
	}
	if rec.Evidence.Nonce != "" && hex.EncodeToString(raw.Nonce) != rec.Evidence.Nonce {
		add(attest.CheckQuoteNonce, "fail", "the nonce is not the session's the record names")
		return rep
	}
	// Likewise the log: its event types and data are not all measured, so
	// another log can replay to the same quote and state other facts.
	if len(b.EventLog) > 0 || rec.Evidence.EventLogSHA256 != "" {
		if sum := sha256.Sum256(b.EventLog); len(b.EventLog) == 0 || hex.EncodeToString(sum[:]) != rec.Evidence.EventLogSHA256 {
			add(attest.CheckEventLog, "fail", "the bundle's event log is not the one the record names")
			return rep
		}
	}
	var pcrs []goattest.PCR
	for _, p := range raw.PCRs {
		h, ok := attest.BankHash(p.Bank)
		if !ok {
			add(attest.CheckPCRDigest, "fail", "unknown bank "+p.Bank)
			return rep
		}
		pcrs = append(pcrs, goattest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: h})
	}
	var res *attest.Result
	if rec.Stage == stageRenew {
		var csrKey any
		if csr, err := x509.ParseCertificateRequest(raw.CSR); err == nil {
			csrKey = csr.PublicKey
		}
		res, err = attest.VerifyRenewal(attest.Renewal{AK: akPub, Nonce: raw.Nonce, Quote: goattest.Quote{Quote: raw.Quote, Signature: raw.QuoteSignature}, PCRs: pcrs, EventLog: b.EventLog, DeviceKey: csrKey, CSR: raw.CSR})
	} else {
		res, err = attest.VerifyEvidence(attest.Completion{
			AK: akPub, Nonce: raw.Nonce, Quote: goattest.Quote{Quote: raw.Quote, Signature: raw.QuoteSignature}, PCRs: pcrs, EventLog: b.EventLog,
			DeviceKey:             goattest.CertificationParameters{Public: raw.DeviceKey.Public, CreateData: raw.DeviceKey.CreateData, CreateAttestation: raw.DeviceKey.CreateAttestation, CreateSignature: raw.DeviceKey.CreateSignature},
			CertifyQualifyingData: api.CertifyQualifyingData(raw.Nonce), CSR: raw.CSR,
		})
	}
	for _, c := range res.Checks {
		result := "fail"
		if c.Passed {
			result = "pass"
		}
		add(c.Name, result, c.Detail)
	}
	if rec.Stage == stageRenew && err == nil && res.DeviceKeySHA256 != rec.Evidence.DeviceKeySHA256 {
		add(attest.CheckCSRKey, "fail", "the CSR key is not the device key the record names")
	}
	if err == nil && rec.Policy != nil {
		add(recheckPolicy(b, rec, res.PCRs, res.EventLog))
	} else if _, ok := recorded[checkPolicy]; ok {
		add(checkPolicy, "not reached", "verification stopped before the policy")
	}
	rep.Reproduced = agreeAll(rep.Results)
	return rep
}

func agreeAll(rs []RecheckResult) bool {
	for _, r := range rs {
		if !r.Agrees {
			return false
		}
	}
	return len(rs) > 0
}

func recheckEK(rec cluster.AttestationRecord, raw *cluster.RawEvidence, roots []*x509.Certificate, opts []attest.EKOption) (string, string, string) {
	var detail string
	for _, c := range rec.Checks {
		if c.Name == attest.CheckEKChain {
			detail = c.Detail
		}
	}
	if strings.Contains(detail, "pre-registered") || strings.Contains(detail, "individual enrollment") {
		return attest.CheckEKChain, "not re-checkable", "vouched for by an operator: " + detail
	}
	if len(raw.EKCertificate) == 0 {
		return attest.CheckEKChain, "fail", "no EK certificate in the evidence"
	}
	ek, err := attest.ParseEKCertificate(raw.EKCertificate)
	if err != nil {
		return attest.CheckEKChain, "fail", err.Error()
	}
	if sum, _ := attest.PublicKeySHA256(ek.Cert.PublicKey); rec.Evidence.EK == nil || sum != rec.Evidence.EK.PublicSHA256 {
		return attest.CheckEKChain, "fail", "the EK certificate is not for the EK the record names"
	}
	chain, err := attest.NewEKVerifier(roots, append(slices.Clip(opts), attest.WithVerifyTime(rec.Time))...).Verify(ek)
	if err != nil {
		return attest.CheckEKChain, "fail", err.Error()
	}
	return attest.CheckEKChain, "pass", "anchor: " + attest.Name(chain[len(chain)-1].Subject) + " as of " + rec.Time.Format("2006-01-02")
}

func recheckPolicy(b EvidenceBundle, rec cluster.AttestationRecord, pcrs []goattest.PCR, log *attest.EventLog) (string, string, string) {
	var p *attest.Policy
	if len(b.Policy) == 0 {
		p = attest.DefaultPolicy()
	} else {
		var err error
		if p, err = attest.ParsePolicy(b.Policy); err != nil {
			return checkPolicy, "fail", "policy v" + strconv.Itoa(rec.Policy.PolicyVersion) + ": " + err.Error()
		}
		p.Version = rec.Policy.PolicyVersion
	}
	var ek cluster.EKInfo
	if rec.Evidence.EK != nil {
		ek = *rec.Evidence.EK
	}
	in := policyInput(rec.DeviceID, ek, rec.Evidence.Claims, rec.Evidence.Labels, pcrs, log)
	in.EnrolledGroup = rec.Evidence.EnrolledGroup
	d := p.Evaluate(in)
	if d.Passed != rec.Policy.Passed || d.Group != rec.Policy.Group || len(d.Outcomes) != len(rec.Policy.Outcomes) {
		return checkPolicy, verdict(d.Passed), fmt.Sprintf("policy v%d now decides passed=%v in group %q; the record says passed=%v in %q", d.PolicyVersion, d.Passed, d.Group, rec.Policy.Passed, rec.Policy.Group)
	}
	for i, o := range d.Outcomes {
		if r := rec.Policy.Outcomes[i]; o.Rule != r.Rule || o.Passed != r.Passed {
			return checkPolicy, "fail", fmt.Sprintf("rule %s now %s, recorded %s", o.Rule, verdict(o.Passed), verdict(r.Passed))
		}
	}
	return checkPolicy, verdict(d.Passed), fmt.Sprintf("policy v%d, group %s: the same verdict on every rule", d.PolicyVersion, d.Group)
}

func verdict(ok bool) string {
	if ok {
		return "pass"
	}
	return "fail"
}

func (a *Appliance) registerEvidenceAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	add(ca.RoleAuditor, "GET "+adminAttestation+"/{id}/evidence", a.read(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			writeProblem(w, malformed("attestation IDs are positive integers"))
			return
		}
		b, err := a.Evidence(id)
		writeResult(w, http.StatusOK, b, a.adminErr(err))
	}))
}

// Evidence fetches an attestation's evidence bundle.
func (c *AdminClient) Evidence(ctx context.Context, id uint64) (EvidenceBundle, error) {
	var b EvidenceBundle
	err := c.get(ctx, adminAttestation+"/"+strconv.FormatUint(id, 10)+"/evidence", &b)
	if err == nil && b.Format != EvidenceFormat {
		err = errors.New("not an evidence bundle")
	}
	return b, err
}
