package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/x509util"
)

type fakeHook struct {
	calls   int
	profile DeviceProfile
	err     error
	got     ACMERequest
}

func (h *fakeHook) ReserveACME(_ context.Context, req ACMERequest) (DeviceProfile, error) {
	h.calls++
	h.got = req
	return h.profile, h.err
}

func openACMECA(t *testing.T, hook ACMEHook) *CA {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, pw, WithOrganization("Test")); err != nil {
		t.Fatal(err)
	}
	akCA, _ := openTestCA(t) // any certificate serves as the attestation root here
	c, err := Open(dir, pw, WithCRLDistributionPoint("https://gh.test/crl"),
		WithACME(func(*CA) []*x509.Certificate { return []*x509.Certificate{akCA.Root()} }, hook))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// signACME signs csr as step-ca's ACME finalize does (the provisioner's
// sign options, the attested-leaf template with the permanent identifier),
// plus marks (ACMEOrderMark options).
func signACME(t *testing.T, c *CA, csr *x509.CertificateRequest, permanentID string, marks ...provisioner.SignOption) ([]*x509.Certificate, error) {
	t.Helper()
	p, err := c.auth.LoadProvisionerByName(ACMEProvisionerName)
	if err != nil {
		t.Fatal(err)
	}
	acmeProv := p.(*provisioner.ACME)
	ctx := provisioner.NewContextWithMethod(context.Background(), provisioner.SignMethod)
	opts, err := acmeProv.AuthorizeSign(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	data := x509util.NewTemplateData()
	data.SetCommonName(csr.Subject.CommonName)
	data.SetSubjectAlternativeNames(x509util.SubjectAlternativeName{Type: x509util.PermanentIdentifierType, Value: permanentID})
	tmpl, err := provisioner.CustomTemplateOptions(acmeProv.GetOptions(), data, x509util.DefaultAttestedLeafTemplate)
	if err != nil {
		t.Fatal(err)
	}
	opts = append(append(opts, tmpl), marks...)
	now := time.Now()
	return c.auth.SignWithContext(ctx, csr, provisioner.SignOptions{
		NotBefore: provisioner.NewTimeDuration(now), NotAfter: provisioner.NewTimeDuration(now.Add(time.Hour))}, opts...)
}

const devID = "0123456789abcdef0123456789abcdef"

func TestACMECASShapesDeviceCertificate(t *testing.T) {
	serial := big.NewInt(0x4242)
	hook := &fakeHook{profile: DeviceProfile{DeviceID: devID, TrustDomain: "td.test", Serial: serial, Validity: 48 * time.Hour}}
	c := openACMECA(t, hook)
	csr, key := csrWithDNS(t) // asks for CN "evil" and a DNS name
	chain, err := signACME(t, c, csr, devID, ACMEOrderMark("order-1"), ACMEOrderMark("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if hook.calls != 1 || hook.got.OrderID != "order-1" || len(hook.got.PermanentIdentifiers) != 1 || hook.got.PermanentIdentifiers[0] != devID {
		t.Fatalf("hook asked %d times with %+v", hook.calls, hook.got)
	}
	if leaf.SerialNumber.Cmp(serial) != 0 || leaf.Subject.CommonName != devID || len(leaf.DNSNames) != 0 {
		t.Fatalf("serial %x CN %q DNS %v", leaf.SerialNumber, leaf.Subject.CommonName, leaf.DNSNames)
	}
	if id, err := ParseIdentity(leaf, "td.test"); err != nil || id.Path != PathDevice || id.ID != devID {
		t.Fatalf("identity %+v %v", id, err)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 48*time.Hour+backdate {
		t.Fatalf("validity %v, want the hook's 48h (+ backdate)", got)
	}
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != devID {
		t.Fatalf("permanent identifiers %+v %v", sans.PermanentIdentifiers, err)
	}
	if len(leaf.CRLDistributionPoints) != 1 || !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatalf("CRL DP %v / key", leaf.CRLDistributionPoints)
	}
	for _, e := range leaf.Extensions {
		if isOrderMark(e) {
			t.Fatal("the internal order mark is in the signed certificate")
		}
	}
	if err := leaf.CheckSignatureFrom(c.intermediate); err != nil {
		t.Fatal(err)
	}
}

func TestACMECASRefuses(t *testing.T) {
	csr, _ := csrWithDNS(t)
	refusal := errors.New("device revoked")
	for name, tc := range map[string]struct {
		hook  *fakeHook
		pid   string
		marks []provisioner.SignOption
		calls int
	}{
		"no order mark":       {hook: &fakeHook{}, pid: devID},
		"hook refuses":        {hook: &fakeHook{err: refusal}, pid: devID, marks: []provisioner.SignOption{ACMEOrderMark("o")}, calls: 1},
		"hook names another":  {hook: &fakeHook{profile: DeviceProfile{DeviceID: "other", TrustDomain: "td.test", Serial: big.NewInt(9), Validity: time.Hour}}, pid: devID, marks: []provisioner.SignOption{ACMEOrderMark("o")}, calls: 1},
		"hook's bad validity": {hook: &fakeHook{profile: DeviceProfile{DeviceID: devID, TrustDomain: "td.test", Serial: big.NewInt(9), Validity: 0}}, pid: devID, marks: []provisioner.SignOption{ACMEOrderMark("o")}, calls: 1},
	} {
		t.Run(name, func(t *testing.T) {
			c := openACMECA(t, tc.hook)
			if _, err := signACME(t, c, csr, tc.pid, tc.marks...); err == nil {
				t.Fatal("signed")
			}
			if tc.hook.calls != tc.calls {
				t.Fatalf("hook called %d times, want %d", tc.hook.calls, tc.calls)
			}
		})
	}
	// A CSR carrying an order mark of its own: the finalize route's mark
	// replaces it, so the hook sees only the route's order.
	c := openACMECA(t, &fakeHook{profile: DeviceProfile{DeviceID: devID, TrustDomain: "td.test", Serial: big.NewInt(9), Validity: time.Hour}})
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: acmeOrderOID, Value: []byte("victim-order")}}}, k)
	evil, _ := x509.ParseCertificateRequest(der)
	hook := c.acme.hook.(*fakeHook)
	if _, err := signACME(t, c, evil, devID, ACMEOrderMark("mine")); err != nil || hook.got.OrderID != "mine" {
		t.Fatalf("order %q %v, want the route's", hook.got.OrderID, err)
	}
	// Without the route's mark, the CSR's own is not enough.
	hook.calls = 0
	if _, err := signACME(t, c, evil, devID); err == nil || hook.calls != 0 {
		t.Fatalf("a CSR's own order mark was honoured (%v, %d calls)", err, hook.calls)
	}
}

func TestACMENeedsRoots(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, pw); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, pw, WithACME(func(*CA) []*x509.Certificate { return []*x509.Certificate{nil} }, &fakeHook{})); err == nil {
		t.Fatal("an ACME provisioner without attestation roots started")
	}
}

// A CSR cannot smuggle anything into an ACME device certificate: whatever
// names, key usages, policies, name constraints, access information,
// custom (critical) extensions, subject attributes or order mark it asks
// for, the certificate carries exactly the device shape: subject CN =
// device ID, SAN (permanent identifier, SPIFFE ID), key usage, client-auth
// EKU, basic constraints (not a CA), the device path mark, the CRL
// distribution point, and the key identifiers Go adds.
func TestACMECASDropsCSRExtensions(t *testing.T) {
	hook := &fakeHook{profile: DeviceProfile{DeviceID: devID, TrustDomain: "td.test", Serial: big.NewInt(0x77), Validity: time.Hour}}
	c := openACMECA(t, hook)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ext := func(oid asn1.ObjectIdentifier, critical bool, v any) pkix.Extension {
		b, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return pkix.Extension{Id: oid, Critical: critical, Value: b}
	}
	basicCA := ext(asn1.ObjectIdentifier{2, 5, 29, 19}, true, struct {
		IsCA bool
		Len  int
	}{true, 5})
	eku := ext(asn1.ObjectIdentifier{2, 5, 29, 37}, false, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}, {1, 3, 6, 1, 4, 1, 311, 20, 2, 2}, {2, 5, 29, 37, 0}})
	policy := ext(asn1.ObjectIdentifier{2, 5, 29, 32}, false, []struct{ ID asn1.ObjectIdentifier }{{asn1.ObjectIdentifier{2, 5, 29, 32, 0}}})
	custom := ext(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, true, "admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"Gatehouse"}, ExtraNames: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{2, 5, 4, 12}, Value: "operator"}}},
		DNSNames:       []string{"gatehouse.example"},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{{Scheme: "spiffe", Host: "td.test", Path: "/admin/operator/mallory"}},
		IPAddresses:    []net.IP{net.IPv4(10, 0, 0, 1)},
		ExtraExtensions: []pkix.Extension{basicCA, eku, policy, custom,
			{Id: asn1.ObjectIdentifier{2, 5, 29, 30}, Critical: true, Value: []byte{0x30, 0x00}}, // name constraints
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 1}, Value: []byte{0x30, 0x00}},    // authority information access
			{Id: acmeOrderOID, Value: []byte("victim-order")}},
	}, k)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	chain, err := signACME(t, c, csr, devID, ACMEOrderMark("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	want := map[string]bool{"2.5.29.15": true, "2.5.29.37": true, "2.5.29.19": true, "2.5.29.14": true, "2.5.29.35": true,
		"2.5.29.17": true, "2.5.29.31": true, "2.5.29.32": true}
	for _, e := range leaf.Extensions {
		if !want[e.Id.String()] {
			t.Errorf("the certificate carries extension %s (critical %v)", e.Id, e.Critical)
		}
		delete(want, e.Id.String())
	}
	if len(want) != 0 {
		t.Errorf("the certificate lacks %v", want)
	}
	if leaf.Subject.String() != "CN="+devID || leaf.IsCA || len(leaf.DNSNames) != 0 || len(leaf.EmailAddresses) != 0 || len(leaf.IPAddresses) != 0 {
		t.Fatalf("subject %q, CA %v, DNS %v, email %v, IP %v", leaf.Subject, leaf.IsCA, leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(leaf.UnknownExtKeyUsage) != 0 || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("key usage %v, EKU %v %v", leaf.KeyUsage, leaf.ExtKeyUsage, leaf.UnknownExtKeyUsage)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://td.test/device/"+devID || hook.got.OrderID != "order-1" {
		t.Fatalf("URIs %v, order %q", leaf.URIs, hook.got.OrderID)
	}
	if id, err := ParseIdentity(leaf, "td.test"); err != nil || id.Path != PathDevice || id.ID != devID {
		t.Fatalf("identity %+v %v", id, err)
	}
}
