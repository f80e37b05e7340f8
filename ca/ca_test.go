package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
)

var pw = []byte("test password")

func openTestCA(t testing.TB) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, pw, WithOrganization("Test")); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, pw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, dir
}

func csrWithDNS(t testing.TB) (*x509.CertificateRequest, *ecdsa.PrivateKey) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "evil"}, DNSNames: []string{"bank.example.com"},
	}, k)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	return csr, k
}

func TestIssueDevice(t *testing.T) {
	c, _ := openTestCA(t)
	csr, key := csrWithDNS(t)
	serial, err := c.NewSerial()
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	chain, err := c.IssueDevice(context.Background(), csr, DeviceProfile{DeviceID: "0123abcd", TrustDomain: "fleet.example.com", Serial: serial, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	now := time.Now()
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		t.Fatalf("not valid now: %v..%v", leaf.NotBefore, leaf.NotAfter)
	}
	if d := leaf.NotAfter.Sub(before.Add(24 * time.Hour)); d < -time.Second || d > 5*time.Second {
		t.Fatalf("notAfter %v, want about now+24h", leaf.NotAfter)
	}
	if leaf.SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("serial %v, reserved %v", leaf.SerialNumber, serial)
	}
	if leaf.Subject.String() != "CN=0123abcd" || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://fleet.example.com/device/0123abcd" {
		t.Fatalf("names: %s %v", leaf.Subject, leaf.URIs)
	}
	if len(leaf.DNSNames) != 0 || leaf.IsCA {
		t.Fatalf("CSR names leaked or CA leaf: %v", leaf.DNSNames)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatal("certificate is not for the CSR key")
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("EKU %v", leaf.ExtKeyUsage)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(c.Root())
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("chain: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("device certificate usable as a server certificate")
	}
}

// A validity decided before signing (and committed to the registry) is the
// certificate's, to the second; one no longer valid when signing comes is
// refused rather than signed as something else.
func TestIssueDeviceWithDecidedValidity(t *testing.T) {
	c, _ := openTestCA(t)
	csr, _ := csrWithDNS(t)
	notBefore, notAfter := DeviceValidity(time.Now().Add(-30*time.Second), 2*time.Hour)
	if notBefore.Location() != time.UTC || notBefore.Nanosecond() != 0 || notAfter.Sub(notBefore) != 2*time.Hour+backdate || backdate <= MaxClockSkew {
		t.Fatalf("DeviceValidity: %v..%v", notBefore, notAfter)
	}
	p := DeviceProfile{DeviceID: "abc", TrustDomain: "td.example", Serial: big.NewInt(11), Validity: time.Hour, NotBefore: notBefore, NotAfter: notAfter}
	chain, err := c.IssueDevice(context.Background(), csr, p)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotBefore.Equal(notBefore) || !chain[0].NotAfter.Equal(notAfter) {
		t.Fatalf("certificate valid %v..%v, decided %v..%v", chain[0].NotBefore, chain[0].NotAfter, notBefore, notAfter)
	}
	p.Serial, p.NotBefore, p.NotAfter = big.NewInt(12), notBefore.Add(-3*time.Hour), notAfter.Add(-3*time.Hour)
	if chain, err := c.IssueDevice(context.Background(), csr, p); err == nil {
		t.Fatalf("signed an expired window: %v..%v", chain[0].NotBefore, chain[0].NotAfter)
	}
}

func TestIssueDeviceRejectsBadProfiles(t *testing.T) {
	c, _ := openTestCA(t)
	csr, _ := csrWithDNS(t)
	good := DeviceProfile{DeviceID: "abc", TrustDomain: "td.example", Serial: big.NewInt(7), Validity: time.Hour}
	for name, mutate := range map[string]func(*DeviceProfile){
		"no serial":         func(p *DeviceProfile) { p.Serial = nil },
		"negative serial":   func(p *DeviceProfile) { p.Serial = big.NewInt(-1) },
		"zero validity":     func(p *DeviceProfile) { p.Validity = 0 },
		"negative validity": func(p *DeviceProfile) { p.Validity = -time.Hour },
		"too long":          func(p *DeviceProfile) { p.Validity = 2 * 365 * 24 * time.Hour },
		"bad ID":            func(p *DeviceProfile) { p.DeviceID = "../x" },
		"bad trust domain":  func(p *DeviceProfile) { p.TrustDomain = "Bad Domain" },
		"notBefore only":    func(p *DeviceProfile) { p.NotBefore = time.Now() },
		"window reversed":   func(p *DeviceProfile) { p.NotBefore, p.NotAfter = time.Now(), time.Now().Add(-time.Hour) },
		"window too long":   func(p *DeviceProfile) { p.NotBefore, p.NotAfter = time.Now(), time.Now().Add(2*365*24*time.Hour) },
	} {
		p := good
		mutate(&p)
		chain, err := c.IssueDevice(context.Background(), csr, p)
		if !errors.Is(err, ErrBadProfile) || chain != nil {
			t.Errorf("%s: %v, %d certs", name, err, len(chain))
		}
	}
	// A CSR whose signature does not verify is refused.
	bad := *csr
	bad.Signature = append([]byte(nil), csr.Signature...)
	bad.Signature[len(bad.Signature)-1] ^= 1
	if _, err := c.IssueDevice(context.Background(), &bad, good); err == nil {
		t.Error("signed a CSR with a broken signature")
	}
}

func TestKeysEncryptedAtRest(t *testing.T) {
	_, dir := openTestCA(t)
	for _, f := range []string{rootKeyFile, intermediateKeyFile} {
		p := filepath.Join(dir, f)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("ENCRYPTED PRIVATE KEY")) {
			t.Fatalf("%s is not encrypted", f)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", f, st.Mode().Perm())
		}
		if _, err := pemutil.Parse(b, pemutil.WithPassword([]byte("wrong"))); err == nil {
			t.Fatalf("%s decrypts with a wrong password", f)
		}
		if _, err := pemutil.Parse(b, pemutil.WithPassword(pw)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

func TestOpenAndInitErrors(t *testing.T) {
	_, dir := openTestCA(t)
	if _, err := Open(dir, []byte("wrong")); !errors.Is(err, ErrBadPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if err := Init(dir, pw); !errors.Is(err, ErrExists) {
		t.Fatalf("second init: %v", err)
	}
	if err := Init(t.TempDir(), nil); !errors.Is(err, ErrNoPassword) {
		t.Fatalf("empty password: %v", err)
	}
}

// The key's encryption has no MAC: about one wrong password in 256 decrypts
// to garbage instead of failing (this flaked TestOpenAndInitErrors). So
// every unreadable encrypted key is ErrBadPassword, naming a damaged file as
// the other cause; shown here with the right password and a damaged
// ciphertext, which decrypts to garbage the same way.
func TestUnreadableEncryptedKeyIsBadPassword(t *testing.T) {
	_, dir := openTestCA(t)
	path := filepath.Join(dir, intermediateKeyFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	var info struct {
		Algo asn1.RawValue
		Data []byte
	}
	if _, err := asn1.Unmarshal(blk.Bytes, &info); err != nil || len(info.Data) < 48 {
		t.Fatalf("encrypted key: %v (%d bytes of ciphertext)", err, len(info.Data))
	}
	// The second cipher block: the PKCS #8 header decrypts to garbage, the
	// padding in the last block stays valid.
	blk.Bytes[len(blk.Bytes)-len(info.Data)+20] ^= 0xff
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, pw)
	if !errors.Is(err, ErrBadPassword) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged encrypted key: %v, want ErrBadPassword naming a damaged file", err)
	}
}

func TestIssueServer(t *testing.T) {
	c, _ := openTestCA(t)
	cert, err := c.IssueServer([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if conn, err := ln.Accept(); err == nil {
			conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(c.Root())
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	conn, err := tls.Dial("tcp", "localhost:"+port, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS handshake with the server certificate: %v", err)
	}
	conn.Close()
}

func TestTokenKey(t *testing.T) {
	c1, dir := openTestCA(t)
	c2, err := Open(dir, pw)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	other, _ := openTestCA(t)
	if len(c1.TokenKey()) != 32 || !bytes.Equal(c1.TokenKey(), c2.TokenKey()) {
		t.Fatal("token key not stable across opens of one PKI")
	}
	if bytes.Equal(c1.TokenKey(), other.TokenKey()) {
		t.Fatal("two PKIs derive the same token key")
	}
	// Two CAs in one process both issue (step-ca keeps some global state).
	csr, _ := csrWithDNS(t)
	for _, c := range []*CA{c1, other} {
		if _, err := c.IssueDevice(context.Background(), csr, DeviceProfile{DeviceID: "x", TrustDomain: "td", Serial: big.NewInt(1), Validity: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkIssueDevice(b *testing.B) {
	c, _ := openTestCA(b)
	csr, _ := csrWithDNS(b)
	p := DeviceProfile{DeviceID: "bench", TrustDomain: "td.example", Validity: time.Hour}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.Serial, _ = c.NewSerial()
		if _, err := c.IssueDevice(context.Background(), csr, p); err != nil {
			b.Fatal(err)
		}
	}
}
