package tpmmodel_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// bootLog is the real event log the policy tests boot swtpm devices with.
const bootLog = "eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"

func readBootLog(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(testvectors.Path(bootLog))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// modelManufacturer issues model EK certificates with swtpm manufacturer m's
// EK CA, which the appliance was initialised to trust.
func modelManufacturer(t testing.TB, m *swtpm.Manufacturer) *tpmmodel.Manufacturer {
	t.Helper()
	key, err := m.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	mfr, err := tpmmodel.NewManufacturer(m.Intermediate, key)
	if err != nil {
		t.Fatal(err)
	}
	return mfr
}

// The appliance's unchanged verification accepts model devices: each
// enrolls through the real HTTP API with the real client code (EK chain,
// AK creation checks, credential activation, quote, event-log replay,
// certify binding, CSR), renews over mTLS with a fresh quote, and
// authenticates with the issued certificate.
func TestModelEnrollsAndRenews(t *testing.T) {
	e := servertest.New(t)
	mfr := modelManufacturer(t, e.Mfr)
	log := readBootLog(t)
	plat, err := tpmmodel.NewPlatform(log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		ek     string
		ak     goattest.Algorithm
		akName string
	}{
		{fwclient.EKECCP256, goattest.ECDSA, "ecdsa-P-256"},
		{fwclient.EKRSA2048, goattest.RSA, "rsa-2048"},
	} {
		t.Run(tc.ek, func(t *testing.T) {
			dev, err := mfr.NewDevice(plat, tc.ek)
			if err != nil {
				t.Fatal(err)
			}
			id, err := e.Client.Enroll(ctx, dev, fwclient.WithAKAlgorithm(tc.ak), fwclient.WithClaims(api.Claims{Model: "tpmmodel"}))
			if err != nil {
				t.Fatalf("enroll: %v", err)
			}
			ek, _ := dev.Endorsement("")
			if want, _ := gatehouse.DeviceID(ek.Public); id.DeviceID != want {
				t.Fatalf("device ID %s, want %s (from the model's EK)", id.DeviceID, want)
			}
			rec, err := e.App.Node().Attestation(id.AttestationID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Outcome != cluster.OutcomeAccepted || rec.Evidence.AKAlgorithm != tc.akName || rec.Evidence.EventLogEvents == 0 {
				t.Fatalf("record %+v", rec)
			}
			if rec.Evidence.EK == nil || rec.Evidence.EK.Model != tpmmodel.DefaultTPMModel {
				t.Fatalf("record's EK %+v, want the model's TPM model %q", rec.Evidence.EK, tpmmodel.DefaultTPMModel)
			}
			passed := map[string]bool{}
			for _, c := range rec.Checks {
				passed[c.Name] = c.Passed
			}
			for _, c := range []string{gatehouse.CheckEKChain, gatehouse.CheckAK, gatehouse.CheckActivation, gatehouse.CheckQuoteSignature,
				gatehouse.CheckPCRDigest, gatehouse.CheckEventLog, gatehouse.CheckCertifyBinding, gatehouse.CheckCertify, gatehouse.CheckCSRKey} {
				if !passed[c] {
					t.Errorf("check %s did not pass: %+v", c, rec.Checks)
				}
			}
			who, err := e.Client.WhoAmI(ctx, dev, id)
			if err != nil || who.DeviceID != id.DeviceID {
				t.Fatalf("whoami %+v, %v", who, err)
			}
			next, err := e.Client.Renew(ctx, dev, id, nil)
			if err != nil {
				t.Fatalf("renew: %v", err)
			}
			if next.DeviceID != id.DeviceID || next.Certificate.SerialNumber.Cmp(id.Certificate.SerialNumber) == 0 ||
				!bytes.Equal(next.Certificate.RawSubjectPublicKeyInfo, id.Certificate.RawSubjectPublicKeyInfo) {
				t.Fatalf("renewal gave device %s serial %s, want device %s, a new serial, the same key", next.DeviceID, next.Certificate.SerialNumber, id.DeviceID)
			}
			rn, err := e.App.Node().Attestation(next.AttestationID)
			if err != nil || rn.Outcome != cluster.OutcomeAccepted || rn.Evidence.EventLogEvents == 0 {
				t.Fatalf("renewal record %+v, %v", rn, err)
			}
		})
	}
}

// The same verification refuses what it must: a model device whose EK
// certificate another manufacturer issued is not trusted, and the refusal
// is recorded (a positive control for the test above).
func TestModelUntrustedManufacturerRefused(t *testing.T) {
	e := servertest.New(t)
	other := modelManufacturer(t, swtpm.NewTestManufacturer(t))
	plat, err := tpmmodel.NewPlatform(nil)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := other.NewDevice(plat, fwclient.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Client.Enroll(context.Background(), dev)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodeEKUntrusted {
		t.Fatalf("enroll with an untrusted EK: %v, want problem %s", err, api.CodeEKUntrusted)
	}
}

// The agent's own loop (fwclient.Daemon) runs on a model device: it
// enrolls, saves the identity (the blobs refer to the model's keys), and
// renews from the saved identity, as a load generator's herd runs it.
func TestModelDaemon(t *testing.T) {
	e := servertest.New(t)
	plat, err := tpmmodel.NewPlatform(readBootLog(t))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := modelManufacturer(t, e.Mfr).NewDevice(plat, fwclient.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	ids := e.RunDaemon(t, dev, t.TempDir(), 50*time.Millisecond, 2)
	if ids[1].DeviceID != ids[0].DeviceID || ids[1].Certificate.SerialNumber.Cmp(ids[0].Certificate.SerialNumber) == 0 {
		t.Fatalf("enrolled %s serial %s, then %s serial %s: want one device, a renewed certificate", ids[0].DeviceID, ids[0].Certificate.SerialNumber, ids[1].DeviceID, ids[1].Certificate.SerialNumber)
	}
	dv, err := e.App.Node().Device(ids[0].DeviceID)
	if err != nil || dv.CertificateSerial == "" {
		t.Fatalf("registry: %+v, %v", dv, err)
	}
}
