package swtpm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"testing"

	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// swtpm provisions a P-384 EK whose certificate sits at NV 0x01c00016, where
// go-attestation does not look. Read there, it parses with the TPM SAN,
// matches the persistent EK, and chains to the manufacturer like the RSA EK.
func TestECCP384EKCertificate(t *testing.T) {
	m := NewTestManufacturer(t)
	p := StartTest(t, m)
	rw, err := fwclient.OpenTransport(p.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	certs := map[string]*gatehouse.EKCertificate{}
	for name, at := range map[string][2]uint32{
		"ecc-p384": {fwclient.NVIndexECCP384EKCert, fwclient.HandleECCP384EK},
		"rsa-2048": {fwclient.NVIndexRSA2048EKCert, fwclient.HandleRSA2048EK},
	} {
		e, err := fwclient.ReadEK(rw, at[0], at[1])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pub := e.Public
		ek, err := gatehouse.ParseEKCertificate(e.Certificate)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		area, err := gatehouse.ParseTPM2BPublic(e.Area)
		if err != nil || !gatehouse.PublicKeysEqual(area, pub) {
			t.Fatalf("%s: public area %v", name, err)
		}
		if !gatehouse.PublicKeysEqual(pub, ek.Cert.PublicKey) {
			t.Fatalf("%s: certificate does not certify the persistent EK", name)
		}
		if ek.Manufacturer == "" || !ek.HasEKUsage() {
			t.Fatalf("%s: TPM SAN %q / EK usage %v", name, ek.Manufacturer, ek.HasEKUsage())
		}
		roots := []*x509.Certificate{m.Root, m.Intermediate}
		if _, err := gatehouse.NewEKVerifier(roots).Verify(ek); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		certs[name] = ek
	}
	k, ok := certs["ecc-p384"].Cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P384() {
		t.Fatalf("ECC EK key %T", certs["ecc-p384"].Cert.PublicKey)
	}
	// One TPM, two EKs: two different device IDs, so a device's ID names
	// the EK it enrolled with.
	a, _ := gatehouse.DeviceID(certs["ecc-p384"].Cert.PublicKey)
	b, _ := gatehouse.DeviceID(certs["rsa-2048"].Cert.PublicKey)
	if a == b {
		t.Fatal("RSA and ECC EKs map to one device ID")
	}
}
