package server_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

func resultOf(rep server.RecheckReport, check string) server.RecheckResult {
	for _, r := range rep.Results {
		if r.Check == check {
			return r
		}
	}
	return server.RecheckResult{}
}

// A past decision is reproduced from its evidence bundle alone, accepted or
// refused; a bundle whose bytes changed, or EK roots that do not cover the
// TPM, no longer reproduce it, and the report names the check.
func TestRecheckFromEvidence(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	b, roots := e.bundle(id.AttestationID)
	if b.Raw == nil || len(b.Raw.Quote) == 0 || len(b.Raw.EKCertificate) == 0 || len(b.Raw.DeviceKey.CreateAttestation) == 0 {
		t.Fatalf("bundle lacks raw evidence: %+v", b.Raw)
	}
	rep := server.Recheck(b, roots)
	if !rep.Reproduced {
		t.Fatalf("accepted enrollment not reproduced: %+v", rep.Results)
	}
	for check, want := range map[string]string{attest.CheckEKChain: "pass", attest.CheckAK: "pass", attest.CheckActivation: "not re-checkable",
		attest.CheckQuoteSignature: "pass", attest.CheckCertify: "pass", attest.CheckCSRKey: "pass", "policy": "pass"} {
		if r := resultOf(rep, check); r.Recheck != want || !r.Agrees {
			t.Fatalf("%s: %+v", check, r)
		}
	}

	// Changed bytes.
	bad := b
	raw := *b.Raw
	raw.Quote = append([]byte(nil), raw.Quote...)
	raw.Quote[len(raw.Quote)-1] ^= 1
	bad.Raw = &raw
	if rep := server.Recheck(bad, roots); rep.Reproduced || resultOf(rep, attest.CheckPCRDigest).Agrees {
		t.Fatalf("a flipped quote byte reproduced: %+v", rep.Results)
	}
	raw = *b.Raw
	raw.PCRs = append([]cluster.RawPCR(nil), raw.PCRs...)
	raw.PCRs[0].Digest = make([]byte, len(raw.PCRs[0].Digest))
	raw.PCRs[0].Digest[0] = 1
	bad.Raw = &raw
	if rep := server.Recheck(bad, roots); rep.Reproduced || resultOf(rep, attest.CheckPCRDigest).Agrees {
		t.Fatalf("a changed PCR reproduced: %+v", rep.Results)
	}
	// Roots that do not cover this TPM.
	other := swtpm.NewTestManufacturer(t)
	otherRoots, _ := attest.ParseCertificates(servertest.EKRoots(other))
	if rep := server.Recheck(b, otherRoots); rep.Reproduced || resultOf(rep, attest.CheckEKChain).Recheck != "fail" {
		t.Fatalf("foreign roots reproduced: %+v", rep.Results)
	}

	// A refusal by the policy is reproduced as a refusal.
	applyPolicy(t, e, `{"groups":[{"name":"pinned","mode":"auto","require":{"pcrs":{"sha256":{"16":"`+strings.Repeat("0", 62)+`01"}}}}]}`)
	d2 := servertest.NewDevice(t, e.Mfr)
	_, err = e.Client.Enroll(ctx, d2.TPM)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodePolicyDenied {
		t.Fatalf("want a policy refusal: %v", err)
	}
	b2, err := server.NewAdminClient(e.Dir).Evidence(ctx, p.AttestationID)
	if err != nil {
		t.Fatal(err)
	}
	rep = server.Recheck(b2, roots)
	if r := resultOf(rep, "policy"); !rep.Reproduced || r.Recheck != "fail" || r.Recorded != "fail" {
		t.Fatalf("refusal not reproduced: %+v", rep.Results)
	}
}

// bundle fetches attestation attID's evidence bundle as an auditor would,
// with the EK roots e's devices chain to.
func (e *env) bundle(attID uint64) (server.EvidenceBundle, []*x509.Certificate) {
	e.t.Helper()
	roots, err := attest.ParseCertificates(servertest.EKRoots(e.Mfr))
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := server.NewAdminClient(e.Dir).Evidence(context.Background(), attID)
	if err != nil {
		e.t.Fatal(err)
	}
	return b, roots
}
