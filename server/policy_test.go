package server_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// Devices on swtpm boot by extending a real GCE Ubuntu event log into their
// PCRs. A policy captured from one of them admits a second booted the same
// way, and refuses a third whose bootloader measurement differs, naming
// PCR 4, the shim event and both digests. A dry run over the resulting
// registry sorts the devices by a candidate policy without changing it.
func TestPolicyOnRealBootLog(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	shim := parsed.Facts.BootApps[0]
	if !strings.HasSuffix(shim.Path, `\shimx64.efi`) {
		t.Fatalf("first boot application %q", shim.Path)
	}
	tampered, err := testvectors.FlipDigest(log, shim.Digests["sha256"])
	if err != nil {
		t.Fatal(err)
	}

	enroll := func(log []byte, model string) (*fwclient.Identity, error) {
		d := servertest.NewBootedDevice(t, e.Mfr, log)
		return e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(log), fwclient.WithClaims(api.Claims{Model: model}))
	}

	// Under the built-in default the booted device enrolls; its log is kept.
	ref, err := enroll(log, "edge-1")
	if err != nil {
		t.Fatalf("reference device: %v", err)
	}
	node := e.App.Node()
	captured, err := server.CapturePolicy(node, ref.DeviceID, "edge")
	if err != nil {
		t.Fatal(err)
	}
	g := captured.Groups[0]
	if g.Require.PCRs["sha256"]["4"] != hex.EncodeToString(parsed.Replay("sha256")[4]) || len(g.Require.PCRs["sha256"]) != len(parsed.Replay("sha256")) {
		t.Fatalf("captured PCRs %v", g.Require.PCRs)
	}
	if g.Require.SecureBoot == nil || *g.Require.SecureBoot || len(g.Require.BootDigests) == 0 || len(g.Require.Reference["4"]) == 0 {
		t.Fatalf("captured requirements %+v", g.Require)
	}
	// Devices of other models fall to a second group with no requirements.
	captured.Groups = append(captured.Groups, attest.Group{Name: "lab", Mode: attest.ModeApprove, Config: json.RawMessage(`{"ntp":"lab.example.com"}`)})
	g.Config = json.RawMessage(`{"ntp":"pool.example.com"}`)
	g.Certificate.DNSNames = []string{"{{.DeviceID}}.edge.example.com"}
	captured.Groups[0] = g
	doc, err := json.Marshal(captured)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.ParsePolicy(doc); err != nil {
		t.Fatal(err)
	}
	v, err := node.ApplyPolicy(ctx, "test", doc)
	if err != nil || v != 1 {
		t.Fatalf("apply: v%d %v", v, err)
	}

	// Same boot: admitted by group edge, with its profile and config.
	good, err := enroll(log, "edge-1")
	if err != nil {
		t.Fatalf("good device: %v", err)
	}
	if len(good.Certificate.DNSNames) != 1 || good.Certificate.DNSNames[0] != good.DeviceID+".edge.example.com" {
		t.Fatalf("DNS SANs %v", good.Certificate.DNSNames)
	}
	if !strings.Contains(string(good.Configuration), "pool.example.com") {
		t.Fatalf("configuration %s", good.Configuration)
	}
	rec, err := node.Attestation(good.AttestationID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Policy == nil || !rec.Policy.Passed || rec.Policy.PolicyVersion != 1 || rec.Policy.Group != "edge" {
		t.Fatalf("decision %+v", rec.Policy)
	}
	rules := map[string]bool{}
	for _, o := range rec.Policy.Outcomes {
		rules[o.Rule] = o.Passed
	}
	for _, r := range []string{attest.RuleGroup, attest.RulePCRs, attest.RuleEventLog, attest.RuleSecureBoot, attest.RuleBootDigests} {
		if pass, ok := rules[r]; !ok || !pass {
			t.Errorf("rule %s: recorded %v, passed %v", r, ok, pass)
		}
	}

	// Changed bootloader: refused, PCR 4 and the shim event named.
	before := e.App.CertificatesIssued()
	_, err = enroll(tampered, "edge-1")
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodePolicyDenied || p.Status != 403 {
		t.Fatalf("tampered boot: %v", err)
	}
	if !strings.Contains(p.Detail, "PCR 4 (sha256)") || !strings.Contains(p.Detail, `shimx64.efi`) || !strings.Contains(p.Detail, shim.Digests["sha256"]) {
		t.Fatalf("explanation: %s", p.Detail)
	}
	if e.App.CertificatesIssued() != before {
		t.Fatal("a refused device got a certificate")
	}
	bad, err := node.Attestation(p.AttestationID)
	if err != nil {
		t.Fatal(err)
	}
	if bad.Outcome != cluster.OutcomeRejected || bad.Policy == nil || bad.Policy.Passed || bad.CertificateSerial != "" {
		t.Fatalf("rejected record %+v", bad)
	}
	if _, err := node.Device(bad.DeviceID); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("refused device registered: %v", err)
	}
	var expl *attest.PCRExplanation
	for _, o := range bad.Policy.Outcomes {
		if o.Rule == attest.RulePCRs && len(o.PCRs) == 1 {
			expl = &o.PCRs[0]
		}
	}
	if expl == nil || expl.Index != 4 || expl.Event == nil || expl.Event.Number != shim.Event ||
		expl.Event.Expected != shim.Digests["sha256"] || expl.Event.Actual == shim.Digests["sha256"] || !strings.Contains(expl.Event.Description, "shimx64.efi") {
		t.Fatalf("structured explanation %+v", expl)
	}

	// Another model, no log: group lab, in approve mode, so pending.
	_, err = enroll(nil, "lab-7")
	var lab *api.Pending
	if !errors.As(err, &lab) {
		t.Fatalf("lab device: %v", err)
	}
	dev, err := node.Device(lab.DeviceID)
	if err != nil || dev.Group != "lab" || dev.Mode != attest.ModeApprove || dev.PolicyVersion != 1 || dev.Status != cluster.DevicePending {
		t.Fatalf("lab device %+v %v", dev, err)
	}

	// Dry run: requiring Secure Boot would fail the edge devices on that
	// rule, keep lab, and change nothing.
	on := true
	candidate := *captured
	candidate.Groups = append([]attest.Group(nil), captured.Groups...)
	candidate.Groups[0].Require.SecureBoot = &on
	hashBefore, _ := node.StateHash()
	res, err := server.DryRun(node, &candidate)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]string{}
	for _, r := range res {
		failed := ""
		for _, o := range r.Decision.Outcomes {
			if !o.Passed {
				failed += o.Rule + " "
			}
		}
		verdicts[r.DeviceID] = r.Current + "/" + strings.TrimSpace(failed)
	}
	want := map[string]string{
		ref.DeviceID:  "accepted/secure_boot",
		good.DeviceID: "accepted/secure_boot",
		bad.DeviceID:  "rejected/pcrs secure_boot boot_digests",
		lab.DeviceID:  "pending/",
	}
	for id, w := range want {
		if verdicts[id] != w {
			t.Errorf("device %s: %q, want %q", id, verdicts[id], w)
		}
	}
	if len(res) != len(want) {
		t.Errorf("%d devices judged, want %d", len(res), len(want))
	}
	if h, _ := node.StateHash(); h != hashBefore {
		t.Fatal("dry run changed the registry")
	}
	hist, err := node.PolicyHistory()
	if err != nil || len(hist) != 1 || hist[0].Actor != "test" {
		t.Fatalf("history %+v %v", hist, err)
	}
}

// A device enrolls with swtpm's P-384 EK (certificate at NV 0x01c00016),
// which go-attestation does not read: the appliance wraps the credential for
// the EK's own SHA-384/AES-256 template from the public area the device
// sends, and refuses a public area that holds another key.
func TestEnrollWithECCP384EK(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithEK(fwclient.EKECCP384))
	if err != nil {
		t.Fatalf("ECC EK enrollment: %v", err)
	}
	rec, err := e.App.Node().Attestation(id.AttestationID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Outcome != cluster.OutcomeAccepted || rec.Evidence.EK == nil || rec.Evidence.EK.Manufacturer == "" {
		t.Fatalf("record %+v", rec)
	}
	if !strings.HasPrefix(rec.Evidence.EK.PublicSHA256, id.DeviceID) {
		t.Fatalf("device ID %s is not derived from the EK %s", id.DeviceID, rec.Evidence.EK.PublicSHA256)
	}
	// The same TPM's RSA EK is another identity.
	rsa, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if rsa.DeviceID == id.DeviceID {
		t.Fatal("RSA and ECC EKs enrolled as one device")
	}

	// A public area holding another EK's key (Infineon's, from the test
	// vectors) next to this TPM's certificate: refused, before possession
	// is proven, so not recorded.
	foreign, err := os.ReadFile(testvectors.Path("ek-certs/tpm2b_public/keylime_infineon_slb9670_rsa_ek.tpm2b_public"))
	if err != nil {
		t.Fatal(err)
	}
	ak := d.NewAK(t, goattest.ECDSA)
	req, err := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{})
	if err != nil {
		t.Fatal(err)
	}
	req.EKPublicArea = foreign
	before := e.App.CertificatesIssued()
	e.expectUnrecorded(e.postJSON(api.PathChallenge, req, &api.ChallengeResponse{}), http.StatusForbidden, api.CodeEKInvalid, before)
}
