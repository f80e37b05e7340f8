package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/x509util"
)

func issueTestAK(t *testing.T, c *CA, deviceID string) ([]*x509.Certificate, *ecdsa.PublicKey, *rsa.PublicKey) {
	t.Helper()
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := c.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.IssueAK(AKProfile{DeviceID: deviceID, EK: &ek.PublicKey, AK: &ak.PublicKey,
		TPMManufacturer: "id:53573536", TPMModel: "swtpm", TPMVersion: "id:20191023", Serial: serial})
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("serial %v, reserved %v", chain[0].SerialNumber, serial)
	}
	return chain, &ek.PublicKey, &ak.PublicKey
}

// stepCAAccepts repeats, with the same libraries, the checks step-ca v0.30.2
// runs on an AK certificate in acme/challenge.go doTPMAttestationFormat and
// validateAKCertificate, and returns the permanent identifiers it would
// compare with the order's identifier.
func stepCAAccepts(akCert *x509.Certificate, intermediates []*x509.Certificate, root *x509.Certificate) ([]string, error) {
	// step-ca drops the SAN from the unhandled critical extensions.
	crt := *akCert
	var unhandled []asn1.ObjectIdentifier
	for _, o := range crt.UnhandledCriticalExtensions {
		if !o.Equal(oidExtSubjectAltName) {
			unhandled = append(unhandled, o)
		}
	}
	crt.UnhandledCriticalExtensions = unhandled
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	if _, err := crt.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now().Truncate(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, err
	}
	if crt.Version != 3 || crt.Subject.String() != "" || crt.IsCA {
		return nil, errors.New("version, subject or CA flag")
	}
	eku := false
	for _, ext := range crt.Extensions {
		if ext.Id.Equal(oidExtExtendedKeyUsage) {
			var ekus []asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(ext.Value, &ekus); err != nil || len(ekus) == 0 || !ekus[0].Equal(oidTCGKpAIKCertificate) {
				return nil, errors.New("first EKU is not tcg-kp-AIKCertificate")
			}
			eku = true
		}
	}
	if !eku {
		return nil, errors.New("no EKU")
	}
	sans, err := x509util.ParseSubjectAlternativeNames(&crt)
	if err != nil {
		return nil, err
	}
	if d := sans.TPMHardwareDetails; d.Manufacturer == "" || d.Model == "" || d.Version == "" {
		return nil, errors.New("TPM SAN incomplete")
	}
	var ids []string
	for _, p := range sans.PermanentIdentifiers {
		ids = append(ids, p.Identifier)
	}
	return ids, nil
}

func TestIssueAKAcceptedByStepCA(t *testing.T) {
	c, _ := openTestCA(t)
	chain, ek, ak := issueTestAK(t, c, "0123456789abcdef0123456789abcdef")
	if len(chain) != 2 || !bytes.Equal(chain[1].Raw, c.AKCA().Raw) {
		t.Fatal("chain is not AK certificate, AK CA")
	}
	ids, err := stepCAAccepts(chain[0], chain[1:], c.AKCA())
	if err != nil {
		t.Fatalf("step-ca would refuse the AK certificate: %v", err)
	}
	if len(ids) != 1 || ids[0] != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("permanent identifiers %q", ids)
	}
	leaf := chain[0]
	if !leaf.PublicKey.(*rsa.PublicKey).Equal(ak) {
		t.Fatal("the certificate is not for the AK")
	}
	if !leaf.Extensions[slicesIndexExt(leaf, oidExtSubjectAltName)].Critical {
		t.Fatal("SAN extension not critical with an empty subject")
	}
	// The URI exactly as the step CLI builds it (cautils generateKeyID, ekURL).
	der, _ := x509.MarshalPKIXPublicKey(ek)
	sum := sha256.Sum256(der)
	want := "urn:ek:sha256:" + base64.StdEncoding.EncodeToString(sum[:])
	if len(leaf.URIs) != 1 || !strings.EqualFold(leaf.URIs[0].String(), want) {
		t.Fatalf("URIs %v, want %s", leaf.URIs, want)
	}
	if d := leaf.NotAfter.Sub(time.Now().Add(AKValidity)); d > time.Minute || d < -time.Minute {
		t.Fatalf("notAfter %v, want about now+%v", leaf.NotAfter, AKValidity)
	}
	// A certificate for another device names that device, not this one.
	other, _, _ := issueTestAK(t, c, "ffffffffffffffffffffffffffffffff")
	if ids, err := stepCAAccepts(other[0], other[1:], c.AKCA()); err != nil || ids[0] != "ffffffffffffffffffffffffffffffff" {
		t.Fatalf("other device: %q %v", ids, err)
	}
}

func slicesIndexExt(c *x509.Certificate, id asn1.ObjectIdentifier) int {
	for i, e := range c.Extensions {
		if e.Id.Equal(id) {
			return i
		}
	}
	return -1
}

// Every node derives the same AK CA from the shared intermediate; another
// CA derives another.
func TestAKCADeterministic(t *testing.T) {
	c1, dir := openTestCA(t)
	c2, err := Open(dir, pw)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if !bytes.Equal(c1.AKCA().Raw, c2.AKCA().Raw) {
		t.Fatal("two opens of the same intermediate built different AK CA certificates")
	}
	a := c1.AKCA()
	if !a.IsCA || !a.MaxPathLenZero || a.MaxPathLen != 0 || a.KeyUsage&x509.KeyUsageCertSign == 0 || a.Subject.CommonName != "Gatehouse AK CA" {
		t.Fatalf("AK CA shape: CA %v pathlen %d/%v usage %v %s", a.IsCA, a.MaxPathLen, a.MaxPathLenZero, a.KeyUsage, a.Subject)
	}
	if !a.NotBefore.Equal(c1.intermediate.NotBefore) || !a.NotAfter.Equal(c1.intermediate.NotAfter) {
		t.Fatal("AK CA validity is not the intermediate's")
	}
	if err := a.CheckSignatureFrom(a); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
	c3, _ := openTestCA(t)
	if bytes.Equal(c3.AKCA().Raw, a.Raw) || bytes.Equal(c3.AKCA().RawSubjectPublicKeyInfo, a.RawSubjectPublicKeyInfo) {
		t.Fatal("another intermediate gave the same AK CA")
	}
}

// An AK certificate is no Gatehouse identity and does not chain to the
// Gatehouse root; a Gatehouse device certificate does not chain to the AK CA.
func TestAKCASeparation(t *testing.T) {
	c, _ := openTestCA(t)
	chain, _, _ := issueTestAK(t, c, "0123456789abcdef0123456789abcdef")
	ak := chain[0]
	if _, err := ParseIdentity(ak, "fleet.example.com"); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("ParseIdentity accepted an AK certificate: %v", err)
	}
	if _, ok := IssuedBy(ak); ok {
		t.Fatal("an AK certificate carries an issuance-path mark")
	}
	gh := x509.NewCertPool()
	gh.AddCert(c.Root())
	inter := x509.NewCertPool()
	inter.AddCert(c.intermediate)
	inter.AddCert(c.AKCA()) // even offered as an intermediate
	if _, err := ak.Verify(x509.VerifyOptions{Roots: gh, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Fatal("an AK certificate chains to the Gatehouse root")
	}

	csr, _ := csrWithDNS(t)
	serial, _ := c.NewSerial()
	dev, err := c.IssueDevice(context.Background(), csr, DeviceProfile{DeviceID: "0123456789abcdef0123456789abcdef", TrustDomain: "fleet.example.com", Serial: serial, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stepCAAccepts(dev[0], dev[1:], c.AKCA()); err == nil {
		t.Fatal("a device certificate chains to the AK CA")
	}
	// Positive control: the device certificate is an identity under the root.
	if _, err := ParseIdentity(dev[0], "fleet.example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := dev[0].Verify(x509.VerifyOptions{Roots: gh, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
}

func TestIssueAKRefusesBadProfiles(t *testing.T) {
	c, _ := openTestCA(t)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ak, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := AKProfile{DeviceID: "0123abcd", EK: &ek.PublicKey, AK: &ak.PublicKey, TPMManufacturer: "m", TPMModel: "x", TPMVersion: "1", Serial: big.NewInt(7)}
	if _, err := c.IssueAK(good); err != nil {
		t.Fatalf("positive control: %v", err)
	}
	for name, mod := range map[string]func(*AKProfile){
		"bad device ID": func(p *AKProfile) { p.DeviceID = "spiffe://x/device/y" },
		"no serial":     func(p *AKProfile) { p.Serial = nil },
		"no TPM model":  func(p *AKProfile) { p.TPMModel = "" },
		"no EK":         func(p *AKProfile) { p.EK = nil },
		"no AK":         func(p *AKProfile) { p.AK = nil },
		"too long":      func(p *AKProfile) { p.Validity = 2 * maxLeafValidity },
	} {
		p := good
		mod(&p)
		if _, err := c.IssueAK(p); !errors.Is(err, ErrBadProfile) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
