package server_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

func applyPolicy(t *testing.T, e *env, doc string) {
	t.Helper()
	if _, err := server.NewAdminClient(e.Dir).ApplyPolicy(context.Background(), "test", []byte(doc)); err != nil {
		t.Fatalf("apply policy: %v", err)
	}
}

func auditTypes(t *testing.T, n *cluster.Node, subject string) []string {
	t.Helper()
	entries, err := n.AuditEntries(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Subject == subject {
			out = append(out, e.Type)
		}
	}
	return out
}

func flagNames(d cluster.Device) []string {
	var out []string
	for _, f := range d.Flags {
		out = append(out, f.Name)
	}
	return out
}

// A group in approve mode: the device's complete answers 202 with a retry
// hint and no certificate; the agent's loop waits and enrolls again; once
// an operator approves, the next attempt gets the certificate.
func TestApproveModeOnSwtpm(t *testing.T) {
	e := newEnv(t)
	applyPolicy(t, e, `{"groups":[{"name":"floor","mode":"approve"}]}`)
	d := servertest.NewDevice(t, e.Mfr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	pendings := make(chan *api.Pending, 10)
	type result struct {
		id  *fwclient.Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := e.Client.EnrollWaiting(ctx, d.TPM, func(p *api.Pending) { pendings <- p })
		done <- result{id, err}
	}()
	var first *api.Pending
	select {
	case first = <-pendings:
	case r := <-done:
		t.Fatalf("enrollment finished without waiting: %+v %v", r.id, r.err)
	}
	if first.Status != cluster.DevicePending || first.RetryAfterSeconds != 1 || first.AttestationID == 0 || !strings.Contains(first.Detail, "approve mode") {
		t.Fatalf("pending answer %+v", first)
	}
	node := e.App.Node()
	dev, err := node.Device(first.DeviceID)
	if err != nil || dev.Status != cluster.DevicePending || dev.CertificateSerial != "" || len(dev.Serials) != 0 {
		t.Fatalf("pending device %+v %v", dev, err)
	}
	rec, _ := node.Attestation(first.AttestationID)
	if rec.Outcome != cluster.OutcomePending || rec.CertificateSerial != "" || rec.Policy == nil || rec.Policy.Mode != "approve" {
		t.Fatalf("pending record %+v", rec)
	}
	if e.App.CertificatesIssued() != 0 {
		t.Fatal("a pending device got a certificate")
	}
	// The raw HTTP answer carries Retry-After.
	pending, _ := server.NewAdminClient(e.Dir).Devices(ctx, cluster.DevicePending)
	if len(pending) != 1 || pending[0].ID != first.DeviceID {
		t.Fatalf("devices --state pending: %+v", pending)
	}
	// Let the agent retry at least once while still pending.
	select {
	case <-pendings:
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not retry")
	}
	if _, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, first.DeviceID, cluster.OpApprove, "alice", "serial matches the purchase order"); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("no certificate after approval")
	}
	if r.err != nil || r.id.DeviceID != first.DeviceID {
		t.Fatalf("after approval: %v", r.err)
	}
	who, err := e.Client.WhoAmI(ctx, d.TPM, r.id)
	if err != nil || who.Status != cluster.DeviceActive {
		t.Fatalf("whoami %+v %v", who, err)
	}
	dev, _ = node.Device(first.DeviceID)
	if dev.Status != cluster.DeviceActive || len(dev.Serials) != 1 || dev.History[0].Op != cluster.OpApprove || dev.History[0].Actor != "alice" || len(dev.Flags) != 0 {
		t.Fatalf("approved device %+v", dev)
	}
	types := auditTypes(t, node, dev.ID)
	if !slices.Contains(types, cluster.AuditEnrollmentPending) || !slices.Contains(types, cluster.AuditDeviceState) || types[len(types)-1] != cluster.AuditEnrollmentAccepted {
		t.Fatalf("audit trail of the device: %v", types)
	}
}

// Same EK, new AK under each group choice; a new AK while the old
// certificate is valid is also a possible clone.
func TestReprovisionPolicies(t *testing.T) {
	e := newEnv(t)
	applyPolicy(t, e, `{"groups":[
		{"name":"reissue","mode":"auto","match":{"models":["reissue"]},"reprovision":"reissue"},
		{"name":"approval","mode":"auto","match":{"models":["approval"]},"reprovision":"require-approval"},
		{"name":"strict","mode":"auto","match":{"models":["strict"]},"reprovision":"reject"}]}`)
	ctx := context.Background()
	node := e.App.Node()
	for _, model := range []string{"reissue", "approval", "strict"} {
		t.Run(model, func(t *testing.T) {
			d := servertest.NewDevice(t, e.Mfr)
			opt := fwclient.WithClaims(api.Claims{Model: model})
			first, err := e.Client.Enroll(ctx, d.TPM, opt)
			if err != nil {
				t.Fatal(err)
			}
			// The TPM was cleared: Enroll makes a new AK under the same EK.
			before := e.App.CertificatesIssued()
			_, err = e.Client.Enroll(ctx, d.TPM, opt)
			dev, _ := node.Device(first.DeviceID)
			if names := flagNames(dev); !slices.Equal(names, []string{cluster.FlagReprovisioned, cluster.FlagPossibleClone}) {
				t.Fatalf("flags %v", names)
			}
			if n := strings.Count(strings.Join(auditTypes(t, node, dev.ID), " "), cluster.AuditDeviceFlag); n != 2 {
				t.Fatalf("%d flag audit entries, want 2", n)
			}
			var p *api.Problem
			var pend *api.Pending
			switch model {
			case "reissue":
				if err != nil || dev.Status != cluster.DeviceActive || e.App.CertificatesIssued() != before+1 {
					t.Fatalf("reissue: %v, %s", err, dev.Status)
				}
			case "approval":
				if !errors.As(err, &pend) || dev.Status != cluster.DevicePending || e.App.CertificatesIssued() != before {
					t.Fatalf("require-approval: %v, %s", err, dev.Status)
				}
				if h := dev.History[len(dev.History)-1]; h.Op != "reprovision" || h.From != cluster.DeviceActive || h.To != cluster.DevicePending {
					t.Fatalf("history %+v", h)
				}
				// The agent waits with one AK; once approved, that AK is
				// accepted without raising anything new.
				seen := make(chan *api.Pending, 10)
				got := make(chan error, 1)
				go func() {
					_, err := e.Client.EnrollWaiting(ctx, d.TPM, func(p *api.Pending) { seen <- p }, opt)
					got <- err
				}()
				<-seen
				if _, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, dev.ID, cluster.OpApprove, "alice", "re-imaged at the depot"); err != nil {
					t.Fatal(err)
				}
				if err := <-got; err != nil {
					t.Fatalf("after approval: %v", err)
				}
				dev, _ = node.Device(first.DeviceID)
				if dev.Status != cluster.DeviceActive || len(dev.Flags) != 2 {
					t.Fatalf("after approval: %s, flags %v", dev.Status, flagNames(dev))
				}
			case "strict":
				if !errors.As(err, &p) || p.Code != api.CodeReprovisionRefused || dev.Status != cluster.DeviceActive {
					t.Fatalf("reject: %v, %s", err, dev.Status)
				}
				e.expectRejected(p, http.StatusForbidden, api.CodeReprovisionRefused, before)
			}
		})
	}

	// Once the old certificate has expired, a new AK is a re-provisioning
	// but not a possible clone.
	d := servertest.NewDevice(t, e.Mfr)
	opt := fwclient.WithClaims(api.Claims{Model: "reissue"})
	first, err := e.Client.Enroll(ctx, d.TPM, opt)
	if err != nil {
		t.Fatal(err)
	}
	e.Clock.Advance(31 * 24 * time.Hour)
	if _, err := e.Client.Enroll(ctx, d.TPM, opt); err != nil {
		t.Fatal(err)
	}
	dev, _ := node.Device(first.DeviceID)
	if names := flagNames(dev); !slices.Equal(names, []string{cluster.FlagReprovisioned}) {
		t.Fatalf("flags after expiry %v", names)
	}
}

// Renewal with the enrolled AK and key gives a new certificate; after a
// PCR changes, renewal fails, the device is quarantined, and it may still
// ask whoami but not renew.
func TestRenewalAndQuarantine(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	pcrs, err := d.TPM.PCRs(goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	var pcr16 string
	for _, p := range pcrs {
		if p.Index == 16 {
			pcr16 = hex.EncodeToString(p.Digest)
		}
	}
	applyPolicy(t, e, `{"groups":[{"name":"pinned","mode":"auto","require":{"pcrs":{"sha256":{"16":"`+pcr16+`"}}}}]}`)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := e.Client.Renew(ctx, d.TPM, id, nil)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if renewed.Certificate.SerialNumber.Cmp(id.Certificate.SerialNumber) == 0 || !attest.PublicKeysEqual(renewed.Certificate.PublicKey, id.Certificate.PublicKey) {
		t.Fatal("renewal did not give a new certificate for the same key")
	}
	if who, err := e.Client.WhoAmI(ctx, d.TPM, renewed); err != nil || who.CertificateSerial != renewed.Certificate.SerialNumber.Text(16) {
		t.Fatalf("whoami with the renewed certificate: %+v %v", who, err)
	}
	node := e.App.Node()
	dev, _ := node.Device(id.DeviceID)
	if len(dev.Serials) != 2 || dev.CertificateSerial != renewed.Certificate.SerialNumber.Text(16) {
		t.Fatalf("device after renewal %+v", dev)
	}

	// The boot state changes: PCR 16 no longer matches.
	sum := sha256.Sum256([]byte("unexpected payload"))
	if err := d.TPM.ExtendPCR(16, sum[:]); err != nil {
		t.Fatal(err)
	}
	before := e.App.CertificatesIssued()
	_, err = e.Client.Renew(ctx, d.TPM, renewed, nil)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodePolicyDenied {
		t.Fatalf("renewal after a PCR change: %v", err)
	}
	rec := e.expectRejected(p, http.StatusForbidden, api.CodePolicyDenied, before)
	if rec.Stage != "renew" || !strings.Contains(rec.Reason, "PCR 16") {
		t.Fatalf("record %+v", rec)
	}
	dev, _ = node.Device(id.DeviceID)
	if dev.Status != cluster.DeviceQuarantined || dev.History[len(dev.History)-1].Actor != "gatehouse" {
		t.Fatalf("device not quarantined: %+v", dev)
	}
	if _, err := e.Client.Renew(ctx, d.TPM, renewed, nil); !errors.As(err, &p) || p.Code != api.CodeDeviceInactive {
		t.Fatalf("renewal while quarantined: %v", err)
	}
	if who, err := e.Client.WhoAmI(ctx, d.TPM, renewed); err != nil || who.Status != cluster.DeviceQuarantined {
		t.Fatalf("whoami while quarantined: %+v %v", who, err)
	}
	if _, err := e.Client.Config(ctx, d.TPM, renewed); !errors.As(err, &p) || p.Code != api.CodeDeviceInactive {
		t.Fatalf("config while quarantined: %v", err)
	}
}

// Revoke: every certificate of the device is revoked through step-ca, the
// CRL at the distribution point lists them, and whoami, renew and config
// refuse the device.
func TestRevocation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := e.Client.Renew(ctx, d.TPM, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := servertest.NewDevice(t, e.Mfr)
	bystander, err := e.Client.Enroll(ctx, other.TPM)
	if err != nil {
		t.Fatal(err)
	}
	cdp := renewed.Certificate.CRLDistributionPoints
	if len(cdp) != 1 || !strings.HasSuffix(cdp[0], "/crl") {
		t.Fatalf("CRL distribution points %v", cdp)
	}
	crl := fetchCRL(t, e, cdp[0])
	if len(crl.RevokedCertificateEntries) != 0 {
		t.Fatalf("fresh CRL lists %d certificates", len(crl.RevokedCertificateEntries))
	}

	admin := server.NewAdminClient(e.Dir)
	dev, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "stolen from the depot")
	if err != nil || dev.Status != cluster.DeviceRevoked {
		t.Fatalf("revoke: %+v %v", dev, err)
	}
	crl = fetchCRL(t, e, cdp[0])
	var listed []string
	for _, r := range crl.RevokedCertificateEntries {
		listed = append(listed, r.SerialNumber.Text(16))
	}
	slices.Sort(listed)
	want := []string{id.Certificate.SerialNumber.Text(16), renewed.Certificate.SerialNumber.Text(16)}
	slices.Sort(want)
	if !slices.Equal(listed, want) {
		t.Fatalf("CRL lists %v, want both certificates %v", listed, want)
	}
	if err := crl.CheckSignatureFrom(e.App.Intermediates()[0]); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	var p *api.Problem
	for _, ident := range []*fwclient.Identity{id, renewed} {
		if _, err := e.Client.WhoAmI(ctx, d.TPM, ident); !errors.As(err, &p) || p.Code != api.CodeCertificateRevoked || p.Status != http.StatusUnauthorized {
			t.Fatalf("whoami with a revoked certificate: %v", err)
		}
	}
	if _, err := e.Client.Renew(ctx, d.TPM, renewed, nil); !errors.As(err, &p) || p.Code != api.CodeCertificateRevoked {
		t.Fatalf("renew with a revoked certificate: %v", err)
	}
	if _, err := e.Client.Config(ctx, d.TPM, renewed); !errors.As(err, &p) || p.Code != api.CodeCertificateRevoked {
		t.Fatalf("config with a revoked certificate: %v", err)
	}
	if _, err := e.Client.WhoAmI(ctx, other.TPM, bystander); err != nil {
		t.Fatalf("another device was affected: %v", err)
	}
	// Revoked is final: the same device cannot enroll again.
	if _, err := e.Client.Enroll(ctx, d.TPM); !errors.As(err, &p) || p.Code != api.CodeDeviceInactive {
		t.Fatalf("revoked device enrolled: %v", err)
	}
	// Revoking again completes an interrupted revocation: not refused, and
	// no second state change.
	if again, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "again"); err != nil || again.Status != cluster.DeviceRevoked || len(again.History) != 1 {
		t.Fatalf("second revocation: %+v %v", again, err)
	}
	if _, err := admin.TransitionDevice(ctx, id.DeviceID, cluster.OpEnable, "alice", "undo"); !errors.As(err, &p) || p.Code != api.CodeIllegalTransition {
		t.Fatalf("enable after revocation: %v", err)
	}
}

func fetchCRL(t *testing.T, e *env, url string) *x509.RevocationList {
	t.Helper()
	// The distribution point names the configured host; reach this node.
	url = e.URL() + url[strings.Index(url[len("https://"):], "/")+len("https://"):]
	resp, err := e.HTTP.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/pkix-crl" {
		t.Fatalf("GET /crl: %s %s", resp.Status, der)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}
