package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// memKV is a fake KV with the same semantics as the registry's.
type memKV struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memKV) k(table string, key []byte) string { return table + "\x00" + string(key) }

func (s *memKV) Get(table string, key []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[s.k(table, key)]
	if !ok {
		return nil, fmt.Errorf("%s: %w", table, ErrKVNotFound)
	}
	return v, nil
}

func (s *memKV) List(table string) (keys, values [][]byte, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ks []string
	for k := range s.m {
		if len(k) > len(table) && k[:len(table)+1] == table+"\x00" {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	for _, k := range ks {
		keys, values = append(keys, []byte(k[len(table)+1:])), append(values, s.m[k])
	}
	return keys, values, nil
}

func (s *memKV) Update(ops []KVOp) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range ops {
		if cur, ok := s.m[s.k(op.Table, op.Key)]; op.Op == KVCmpAndSwap && (ok != (op.Old != nil) || !bytes.Equal(cur, op.Old)) {
			return false, nil
		}
	}
	for _, op := range ops {
		switch op.Op {
		case KVSet, KVCmpAndSwap:
			s.m[s.k(op.Table, op.Key)] = op.Value
		case KVDelete:
			delete(s.m, s.k(op.Table, op.Key))
		}
	}
	return true, nil
}

func openTestCAWithDB(t *testing.T) (*CA, *memKV) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, pw, WithOrganization("Test")); err != nil {
		t.Fatal(err)
	}
	kv := &memKV{m: map[string][]byte{}}
	c, err := Open(dir, pw, WithDatabase(kv), WithCRLDistributionPoint("https://gatehouse.example:8443/crl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, kv
}

// Issue two device certificates, revoke one through step-ca: the database
// says so, a second revocation is refused, and the CRL lists exactly it.
func TestRevokeAndCRL(t *testing.T) {
	c, kv := openTestCAWithDB(t)
	ctx := context.Background()
	var certs []*x509.Certificate
	for _, id := range []string{"dev-a", "dev-b"} {
		csr, _ := csrWithDNS(t)
		serial, _ := c.NewSerial()
		chain, err := c.IssueDevice(ctx, csr, DeviceProfile{DeviceID: id, TrustDomain: "t.example", Serial: serial, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].CRLDistributionPoints; len(got) != 1 || got[0] != "https://gatehouse.example:8443/crl" {
			t.Fatalf("CRL distribution points %v", got)
		}
		certs = append(certs, chain[0])
	}
	if _, err := c.IssueServer([]string{"localhost"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if keys, _, _ := kv.List("x509_certs"); len(keys) != 0 {
		t.Fatalf("step-ca stored %d device or server certificates; the registry keeps their serials", len(keys))
	}
	if err := c.Revoke(ctx, certs[0].SerialNumber, ReasonKeyCompromise, "stolen"); err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, certs[0].SerialNumber, ReasonKeyCompromise, "again"); !errors.Is(err, ErrAlreadyRevoked) {
		t.Fatalf("second revocation: %v", err)
	}
	for i, want := range []bool{true, false} {
		if got, err := c.IsRevoked(certs[i].SerialNumber); err != nil || got != want {
			t.Fatalf("IsRevoked(cert %d) = %v, %v", i, got, err)
		}
	}
	now := time.Now()
	der, err := c.CRL(now)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Intermediates()[0]); err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(certs[0].SerialNumber) != 0 || crl.RevokedCertificateEntries[0].ReasonCode != ReasonKeyCompromise {
		t.Fatalf("CRL entries %+v", crl.RevokedCertificateEntries)
	}
	if !crl.NextUpdate.After(now) || crl.ThisUpdate.After(now) {
		t.Fatalf("CRL validity %v..%v", crl.ThisUpdate, crl.NextUpdate)
	}
	// Served by this node with its clock MaxClockSkew fast, the CRL
	// (thisUpdate: the revocation, just now) is already valid for a
	// verifier with the true time.
	if verifier := now.Add(-MaxClockSkew); crl.ThisUpdate.After(verifier) {
		t.Fatalf("CRL thisUpdate %v is in the future for a verifier %v behind (%v)", crl.ThisUpdate, MaxClockSkew, verifier)
	}
	// Revoking the second moves the CRL forward.
	if err := c.Revoke(ctx, certs[1].SerialNumber, ReasonCessationOfOperation, "retired"); err != nil {
		t.Fatal(err)
	}
	der2, _ := c.CRL(time.Now())
	crl2, _ := x509.ParseRevocationList(der2)
	if len(crl2.RevokedCertificateEntries) != 2 || crl2.Number.Cmp(crl.Number) < 0 {
		t.Fatalf("second CRL: %d entries, number %v after %v", len(crl2.RevokedCertificateEntries), crl2.Number, crl.Number)
	}
}

func TestRevokeWithoutDatabase(t *testing.T) {
	c, _ := openTestCA(t)
	serial, _ := c.NewSerial()
	if err := c.Revoke(context.Background(), serial, 0, "x"); !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("got %v", err)
	}
}

func TestAuditKeyChainsToRoot(t *testing.T) {
	c, dir := openTestCA(t)
	key, chain := c.AuditKey()
	pub, err := VerifyAuditKey(chain, c.Root())
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(key.Public()) {
		t.Fatal("certified key differs from the signing key")
	}
	other, _ := openTestCA(t)
	if _, err := VerifyAuditKey(chain, other.Root()); err == nil {
		t.Fatal("audit key verified under a foreign root")
	}
	// Every node derives the same key from the shared intermediate.
	again, err := Open(dir, pw)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if k2, _ := again.AuditKey(); !k2.Equal(key) {
		t.Fatal("audit key differs between openings of one CA")
	}
}
