package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"path/filepath"
	"testing"
	"time"
)

const td = "fleet.example.com"

// The device path never issues a name in the admin or node namespaces, a
// second SPIFFE ID, a Gatehouse URN, a wildcard, a non-host name or a name
// the CA reserves for its nodes.
func TestIssueDeviceRefusesReservedNames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, pw); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, pw, WithReservedNames(func() []string { return []string{"gatehouse.example.com", "localhost"} }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	csr, _ := csrWithDNS(t)
	good := DeviceProfile{DeviceID: "abc", TrustDomain: td, Serial: big.NewInt(7), Validity: time.Hour,
		DNSNames: []string{"abc.devices.example.com"}, URIs: []string{"https://inventory.example.com/devices/abc%2Fx"}}
	if _, err := c.IssueDevice(context.Background(), csr, good); err != nil {
		t.Fatalf("good profile: %v", err)
	}
	for name, mutate := range map[string]func(*DeviceProfile){
		"admin SPIFFE ID":           func(p *DeviceProfile) { p.URIs = []string{"spiffe://" + td + "/admin/operator/x"} },
		"node SPIFFE ID":            func(p *DeviceProfile) { p.URIs = []string{"spiffe://" + td + "/node/x"} },
		"its own SPIFFE ID again":   func(p *DeviceProfile) { p.URIs = []string{"spiffe://" + td + "/device/abc"} },
		"other device's SPIFFE ID":  func(p *DeviceProfile) { p.URIs = []string{"spiffe://" + td + "/device/other"} },
		"other trust domain":        func(p *DeviceProfile) { p.URIs = []string{"spiffe://other.example/admin/operator/x"} },
		"upper-case scheme":         func(p *DeviceProfile) { p.URIs = []string{"SPIFFE://" + td + "/admin/operator/x"} },
		"audit key URN":             func(p *DeviceProfile) { p.URIs = []string{"urn:gatehouse:audit-key"} },
		"wildcard":                  func(p *DeviceProfile) { p.DNSNames = []string{"*.devices.example.com"} },
		"bare wildcard":             func(p *DeviceProfile) { p.DNSNames = []string{"*"} },
		"empty label":               func(p *DeviceProfile) { p.DNSNames = []string{"a..example.com"} },
		"label over 63":             func(p *DeviceProfile) { p.DNSNames = []string{string(make64('a')) + ".example.com"} },
		"underscore":                func(p *DeviceProfile) { p.DNSNames = []string{"a_b.example.com"} },
		"node host name":            func(p *DeviceProfile) { p.DNSNames = []string{"gatehouse.example.com"} },
		"node host name, any case":  func(p *DeviceProfile) { p.DNSNames = []string{"GateHouse.Example.com"} },
		"reserved single-label one": func(p *DeviceProfile) { p.DNSNames = []string{"localhost"} },
	} {
		p := good
		mutate(&p)
		chain, err := c.IssueDevice(context.Background(), csr, p)
		if !errors.Is(err, ErrBadProfile) || chain != nil {
			t.Errorf("%s: issued (%v, %d certs)", name, err, len(chain))
		}
	}
}

func make64(b byte) []byte {
	out := make([]byte, 64)
	for i := range out {
		out[i] = b
	}
	return out
}

// Every issuance path marks its certificates, and ParseIdentity accepts a
// certificate only when the mark is the path owning its SPIFFE ID.
func TestIssuancePathMarks(t *testing.T) {
	c, _ := openTestCA(t)
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	csr, _ := x509.ParseCertificateRequest(der)

	dev, err := c.IssueDevice(ctx, csr, DeviceProfile{DeviceID: "dev-1", TrustDomain: td, Serial: big.NewInt(9), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	adm, err := c.IssueAdmin(ctx, csr, td, RoleOperator, "olga", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := c.IssueNode("node-1", td, []string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := c.IssueServer([]string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert *x509.Certificate
		want Identity
	}{
		{dev[0], Identity{Path: PathDevice, ID: "dev-1"}},
		{adm[0], Identity{Path: PathAdmin, Role: RoleOperator, ID: "olga"}},
		{node.Leaf, Identity{Path: PathNode, ID: "node-1"}},
	} {
		got, err := ParseIdentity(tc.cert, td)
		if err != nil || got != tc.want {
			t.Errorf("%v: %+v, %v", tc.cert.URIs, got, err)
		}
		if _, err := ParseIdentity(tc.cert, "other.example"); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%v accepted in another trust domain", tc.cert.URIs)
		}
	}
	if by, ok := IssuedBy(srv.Leaf); !ok || by != PathServer {
		t.Errorf("server certificate marked %q", by)
	}
	if _, err := ParseIdentity(srv.Leaf, td); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("server certificate has an identity: %v", err)
	}

	// Certificates signed by this CA's key but outside its issuance
	// functions (a forged path): right chain, wrong or missing mark.
	mark := func(p Path) []x509.OID { o, _ := PathOID(p); return []x509.OID{o} }
	uri := func(s string) *url.URL { u, _ := url.Parse(s); return u }
	for name, tc := range map[string]struct {
		uris     []*url.URL
		policies []x509.OID
	}{
		"admin ID, device mark":        {[]*url.URL{uri("spiffe://" + td + "/admin/operator/x")}, mark(PathDevice)},
		"node ID, device mark":         {[]*url.URL{uri("spiffe://" + td + "/node/x")}, mark(PathDevice)},
		"device ID, admin mark":        {[]*url.URL{uri("spiffe://" + td + "/device/x")}, mark(PathAdmin)},
		"admin ID, no mark":            {[]*url.URL{uri("spiffe://" + td + "/admin/operator/x")}, nil},
		"admin ID, server mark":        {[]*url.URL{uri("spiffe://" + td + "/admin/operator/x")}, mark(PathServer)},
		"admin ID, two marks":          {[]*url.URL{uri("spiffe://" + td + "/admin/operator/x")}, append(mark(PathAdmin), mark(PathDevice)...)},
		"two SPIFFE IDs":               {[]*url.URL{uri("spiffe://" + td + "/admin/operator/x"), uri("spiffe://" + td + "/device/x")}, mark(PathAdmin)},
		"admin ID with extra segments": {[]*url.URL{uri("spiffe://" + td + "/admin/operator/x/y")}, mark(PathAdmin)},
		"escaped segment":              {[]*url.URL{uri("spiffe://" + td + "/device/a%2Fb")}, mark(PathDevice)},
		"unknown role":                 {[]*url.URL{uri("spiffe://" + td + "/admin/root/x")}, mark(PathAdmin)},
		"query":                        {[]*url.URL{uri("spiffe://" + td + "/device/x?y=1")}, mark(PathDevice)},
	} {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			URIs: tc.uris, Policies: tc.policies, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, c.intermediate, key.Public(), c.signer)
		if err != nil {
			t.Fatal(err)
		}
		forged, _ := x509.ParseCertificate(der)
		if id, err := ParseIdentity(forged, td); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("%s: accepted as %+v", name, id)
		}
	}
}
