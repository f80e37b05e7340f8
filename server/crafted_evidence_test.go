package server_test

import (
	"bytes"
	"context"
	"errors"
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

// An imported individual enrollment selects its group before any
// match, on enrollment and renewal. The dry run (and Capture) rebuilt the
// input without it, so they judged an individually enrolled device in
// whichever group matched first: a candidate the dry run showed passing
// could quarantine the device at its next renewal, and the reverse.
func TestDryRunHonoursIndividualEnrollment(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	doc := `{"groups":[{"name":"fleet","mode":"auto"},{"name":"lab","mode":"auto","match":{"labels":{"site":"lab"}}}]}`
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(doc)); err != nil {
		t.Fatal(err)
	}
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	node := e.App.Node()
	dev, err := node.Device(id.DeviceID)
	if err != nil || dev.Group != "fleet" {
		t.Fatalf("control: device %+v %v", dev, err)
	}
	res, err := e.App.ImportEnrollments(ctx, server.ImportRequest{Actor: "test", Source: "test", Rows: []server.ImportRow{{Row: 1, EKPublicSHA256: dev.EK.PublicSHA256, Group: "lab"}}})
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("import: %+v %v", res, err)
	}
	// Live: the renewal is judged in the enrolled group.
	if id, err = e.Client.Renew(ctx, d.TPM, id, nil); err != nil {
		t.Fatal(err)
	}
	if dev, err = node.Device(id.DeviceID); err != nil {
		t.Fatal(err)
	}
	rec, err := node.Attestation(dev.LastAttestationID)
	if err != nil || rec.Policy == nil || rec.Policy.Group != "lab" {
		t.Fatalf("live renewal decided %+v %v", rec.Policy, err)
	}
	// The dry run of the policy in force must decide as the live path did.
	p, err := attest.ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	dry, err := server.DryRun(node, p)
	if err != nil || len(dry) != 1 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if g := dry[0].Decision.Group; g != "lab" {
		t.Fatalf("dry run judged the individually enrolled device in group %q; live decided %q", g, rec.Policy.Group)
	}
}

// Raw evidence is stored only up to a bound, but the PCR values
// a request sends were copied into the committed record one by one before
// any check: an enrolled device's renewal (recorded, it is authenticated)
// with 10,000 copies of one PCR put all of them into the replicated
// record. A quote covers at most 24 PCRs of one bank, so more values for
// a bank are malformed, refused before they reach the record.
func TestPCRFloodNotRecorded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	m := e.mtlsDevice(t, d, id)
	ch := m.renewChallenge()
	q, err := m.AK.Quote(d.TPM.TPM, ch.Nonce, goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := fwclient.CSR(m.Key)
	if err != nil {
		t.Fatal(err)
	}
	req := api.RenewRequest{SessionToken: ch.SessionToken, AKPublic: m.AK.AttestationParameters().Public, Quote: api.Quote{Quote: q.Quote, Signature: q.Signature}, CSR: csr}
	for range 10000 {
		req.PCRs = append(req.PCRs, api.PCR{Index: 16, Bank: "sha256", Digest: make([]byte, 32)})
	}
	var resp api.CompleteResponse
	p := m.post(api.PathRenew, req, &resp)
	if p == nil || p.Status/100 != 4 {
		t.Fatalf("renewal with 10,000 PCR values: %+v", p)
	}
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if n := len(r.Evidence.PCRs); n > 4*24 {
			t.Fatalf("attestation %d (%s, %s) holds %d PCR values", r.ID, r.Stage, r.Code, n)
		}
	}
}

// A device refused by policy has no device record, and live
// enrollment then takes its labels from its individual enrollment; the dry
// run took none, so under a candidate that drops the enrolled group (and
// falls back to matching) it judged the device in another group than a
// live enrollment would.
func TestDryRunLabelsOfRefusedIndividualEnrollment(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	refuse := `{"groups":[{"name":"fleet","mode":"auto","require":{"pcrs":{"sha256":{"0":"` + bogus64 + `"}}}},{"name":"imported","mode":"auto"}]}`
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(refuse)); err != nil {
		t.Fatal(err)
	}
	d := servertest.NewDevice(t, e.Mfr)
	if _, err := e.Client.Enroll(ctx, d.TPM); err == nil {
		t.Fatal("control: enrolled against a bogus golden PCR")
	}
	node := e.App.Node()
	recs, err := node.Attestations(cluster.AttestationQuery{})
	if err != nil || len(recs) == 0 || recs[0].Policy == nil || recs[0].Evidence.EK == nil {
		t.Fatalf("refusal record: %+v %v", recs, err)
	}
	ekSum := recs[0].Evidence.EK.PublicSHA256
	res, err := e.App.ImportEnrollments(ctx, server.ImportRequest{Actor: "test", Source: "test", Rows: []server.ImportRow{{Row: 1, EKPublicSHA256: ekSum, Group: "imported", Labels: map[string]string{"site": "lab"}}}})
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("import: %+v %v", res, err)
	}
	// The candidate has no group "imported": matching decides, by labels.
	cand := `{"groups":[{"name":"lab","mode":"auto","match":{"labels":{"site":"lab"}}},{"name":"other","mode":"auto"}]}`
	p, err := attest.ParsePolicy([]byte(cand))
	if err != nil {
		t.Fatal(err)
	}
	dry, err := server.DryRun(node, p)
	if err != nil || len(dry) != 1 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	// Live, under the candidate.
	if _, err := e.App.ApplyPolicy(ctx, "test", []byte(cand)); err != nil {
		t.Fatal(err)
	}
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := node.Device(id.DeviceID)
	if err != nil || dev.Group != "lab" {
		t.Fatalf("live: device %+v %v", dev, err)
	}
	if g := dry[0].Decision.Group; g != dev.Group {
		t.Fatalf("dry run judged the device in group %q; live enrollment chose %q", g, dev.Group)
	}
}

const bogus64 = "1111111111111111111111111111111111111111111111111111111111111111"

// Recheck promises that a bundle changed after the fact no longer
// reproduces its record. For a renewal it verified the bundle's quote with
// the bundle's own AK over the bundle's own nonce, comparing neither with
// the record: a quote made afterwards by any TPM, with any nonce and any
// PCRs, reproduced the record. The AK and nonce must be the record's.
func TestRecheckRenewalBundleBoundToRecord(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	if id, err = e.Client.Renew(ctx, d.TPM, id, nil); err != nil {
		t.Fatal(err)
	}
	b, roots := e.bundle(id.AttestationID)
	if b.Record.Stage != "renew" {
		t.Fatalf("attestation %d is a %s", id.AttestationID, b.Record.Stage)
	}
	if rep := server.Recheck(b, roots); !rep.Reproduced {
		t.Fatalf("control not reproduced: %+v", rep.Results)
	}

	// Another TPM's AK quotes its own PCRs over a nonce of its choosing.
	other := servertest.NewDevice(t, e.Mfr)
	ak := other.NewAK(t, goattest.RSA)
	nonce := []byte("a nonce the appliance never sent")
	q, err := ak.Quote(other.TPM.TPM, nonce, goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := other.TPM.PCRs(goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	raw := *b.Raw
	raw.AK = cluster.RawKey{Public: ak.AttestationParameters().Public}
	raw.Nonce, raw.Quote, raw.QuoteSignature, raw.PCRs = nonce, q.Quote, q.Signature, nil
	for _, p := range pcrs {
		raw.PCRs = append(raw.PCRs, cluster.RawPCR{Index: p.Index, Bank: "sha256", Digest: p.Digest})
	}
	b.Raw = &raw
	if rep := server.Recheck(b, roots); rep.Reproduced {
		t.Fatalf("a bundle with another TPM's quote reproduced the renewal record: %+v", rep.Results)
	}
}

// The record names its event log by digest, but Recheck judged
// whatever log the bundle carried: a bundle without its log, or with a
// log whose unmeasured parts (event types) were changed, still replayed to
// the quote and reproduced the record.
func TestRecheckEventLogBoundToRecord(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	d := servertest.NewBootedDevice(t, e.Mfr, log)
	id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(log))
	if err != nil {
		t.Fatal(err)
	}
	b, roots := e.bundle(id.AttestationID)
	if len(b.EventLog) == 0 {
		t.Fatal("the bundle has no event log")
	}
	if rep := server.Recheck(b, roots); !rep.Reproduced {
		t.Fatalf("control not reproduced: %+v", rep.Results)
	}
	relabelled := bytes.Clone(b.EventLog)
	i := bytes.Index(relabelled, []byte{4, 0, 0, 0, 0x03, 0, 0, 0x80}) // PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION
	if i < 0 {
		t.Fatal("no boot application event")
	}
	relabelled[i+4] = 0x01 // EV_POST_CODE
	for name, l := range map[string][]byte{"without its log": nil, "with a relabelled log": relabelled} {
		bb := b
		bb.EventLog = l
		if rep := server.Recheck(bb, roots); rep.Reproduced {
			t.Errorf("a bundle %s reproduced the record: %+v", name, rep.Results)
		}
	}
}

// Over the wire: a device whose log shows a boot application the
// group does not allow relabels that event's type (not measured) and
// enrolls. It is refused on boot_digests; the same device allowed its
// application, the control, enrolls.
func TestRelabelledBootApplicationRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := attest.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, ev := range l.Events {
		if ev.Type == "EV_EFI_BOOT_SERVICES_APPLICATION" {
			all = append(all, `"`+ev.Digests.Get("sha256")+`"`)
		}
	}
	if len(all) < 2 {
		t.Fatalf("%d boot applications", len(all))
	}
	policy := func(allowed []string) []byte {
		return []byte(`{"groups":[{"name":"edge","mode":"auto","require":{"event_log":true,"boot_digests":[` + strings.Join(allowed, ",") + `]}}]}`)
	}
	if _, err := e.App.ApplyPolicy(ctx, "test", policy(all)); err != nil {
		t.Fatal(err)
	}
	good := servertest.NewBootedDevice(t, e.Mfr, log)
	if _, err := e.Client.Enroll(ctx, good.TPM, fwclient.WithEventLog(log)); err != nil {
		t.Fatalf("control: %v", err)
	}

	// The first application (a tampered shim) is no longer allowed.
	if _, err := e.App.ApplyPolicy(ctx, "test", policy(all[1:])); err != nil {
		t.Fatal(err)
	}
	relabelled := bytes.Clone(log)
	i := bytes.Index(relabelled, []byte{4, 0, 0, 0, 0x03, 0, 0, 0x80})
	if i < 0 {
		t.Fatal("no boot application event")
	}
	relabelled[i+4] = 0x01 // EV_POST_CODE
	d := servertest.NewBootedDevice(t, e.Mfr, log)
	before := e.App.CertificatesIssued()
	_, err = e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(relabelled))
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodePolicyDenied {
		t.Fatalf("relabelled boot application: %v, want %s", err, api.CodePolicyDenied)
	}
	if e.App.CertificatesIssued() != before {
		t.Fatal("a certificate was issued")
	}
}
