package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// The shared verification core: a genuine export verifies under the
// appliance root; an edited one is reported at its line; a CSV export
// needs a key certificate from the caller; another root, or bytes that are
// no export, are errors.
func TestVerifyAuditExport(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	applyPolicy(t, e, `{"groups":[{"name":"g","mode":"auto"}]}`)
	admin := server.NewAdminClient(e.Dir)
	export := func(format string) []byte {
		var buf bytes.Buffer
		if err := admin.ExportAudit(ctx, time.Time{}, format, &buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	root := e.App.Root()
	jsonl := export(cluster.AuditJSONL)
	rep, key, err := server.VerifyAuditExport(bytes.NewReader(jsonl), root, nil)
	if err != nil || !rep.OK() || rep.Entries == 0 || rep.Range == nil || !strings.Contains(key, root.Subject.CommonName) {
		t.Fatalf("genuine export: %+v %q %v", rep, key, err)
	}
	tampered := bytes.Replace(jsonl, []byte(`"policy.applied"`), []byte(`"policy.applieD"`), 1)
	if bytes.Equal(tampered, jsonl) {
		t.Fatal("nothing to tamper with")
	}
	if rep, _, err := server.VerifyAuditExport(bytes.NewReader(tampered), root, nil); err != nil || rep.OK() {
		t.Fatalf("tampered export: %+v %v", rep, err)
	}

	csv := export(cluster.AuditCSV)
	if _, _, err := server.VerifyAuditExport(bytes.NewReader(csv), root, nil); !errors.Is(err, server.ErrNoAuditKeyCert) {
		t.Fatalf("CSV without a key certificate: %v", err)
	}
	keyCert, err := admin.AuditKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rep, _, err = server.VerifyAuditExport(bytes.NewReader(csv), root, func(header []byte) ([]byte, error) {
		if len(header) != 0 {
			t.Errorf("a CSV export handed a header certificate")
		}
		return keyCert, nil
	})
	if err != nil || !rep.OK() {
		t.Fatalf("CSV with the key certificate: %+v %v", rep, err)
	}

	if _, _, err := server.VerifyAuditExport(bytes.NewReader(jsonl), otherRoot(t), nil); err == nil {
		t.Fatal("verified under a root that certifies no audit key")
	}
	if _, _, err := server.VerifyAuditExport(strings.NewReader("not an export\x00"), root, nil); !errors.Is(err, server.ErrAuditExportUnreadable) {
		t.Fatalf("garbage: %v", err)
	}
}

func otherRoot(t *testing.T) *x509.Certificate {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Other Root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
