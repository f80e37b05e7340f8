package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"path/filepath"
	"testing"
	"time"
)

// A CA whose clock runs MaxClockSkew fast or slow issues certificates of
// every kind that are valid at the true time: no peer, device or CLI with a
// right clock finds one not yet valid (or already expired).
func TestSkewedClockIssuesValidNow(t *testing.T) {
	for _, skew := range []time.Duration{MaxClockSkew, -MaxClockSkew} {
		t.Run(skew.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if err := Init(dir, pw); err != nil {
				t.Fatal(err)
			}
			c, err := Open(dir, pw, WithClock(func() time.Time { return time.Now().Add(skew) }))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			validNow := func(what string, leaf *x509.Certificate) {
				t.Helper()
				if now := time.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
					t.Errorf("%s from a CA %v off: valid %v..%v, not at the true time %v", what, skew, leaf.NotBefore, leaf.NotAfter, now)
				}
			}
			srv, err := c.IssueServer([]string{"127.0.0.1"}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			validNow("server certificate", srv.Leaf)
			node, err := c.IssueNode("node-1", "td.example", []string{"127.0.0.1"}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			validNow("node certificate", node.Leaf)
			csr, _ := csrWithDNS(t)
			dev, err := c.IssueDevice(context.Background(), csr, DeviceProfile{DeviceID: "abc", TrustDomain: "td.example", Serial: big.NewInt(5), Validity: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			validNow("device certificate", dev[0])
			admin, err := c.IssueAdmin(context.Background(), csr, "td.example", RoleOperator, "ops", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			validNow("admin certificate", admin[0])
			ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			ak, _ := rsa.GenerateKey(rand.Reader, 2048)
			akc, err := c.IssueAK(AKProfile{DeviceID: "0123abcd", EK: &ek.PublicKey, AK: &ak.PublicKey, TPMManufacturer: "m", TPMModel: "x", TPMVersion: "1", Serial: big.NewInt(7)})
			if err != nil {
				t.Fatal(err)
			}
			validNow("AK certificate", akc[0])
		})
	}
}
