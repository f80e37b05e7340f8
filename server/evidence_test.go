package server_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"unicode/utf16"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
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
	if _, err := e.App.Node().ApplyPolicy(context.Background(), "test", doc); err != nil {
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
	if _, err := e.App.Node().ApplyPolicy(ctx, "test", []byte(doc)); err != nil {
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
		for bank, d := range ev.Digests {
			old, _ := hex.DecodeString(d)
			h, _ := attest.BankHash(bank)
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
