package attest_test

import (
	"bytes"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// EKRootPEM writes what ParseCertificates and EKRootsOptions read back: the
// same certificate, with the allowance only when asked.
func TestEKRootPEM(t *testing.T) {
	roots, err := attest.ParseCertificates(attest.ManufacturerRootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	der := roots[0].Raw
	for _, allow := range []bool{false, true} {
		b := attest.EKRootPEM(der, allow)
		got, err := attest.ParseCertificates(b)
		if err != nil || len(got) != 1 || !bytes.Equal(got[0].Raw, der) {
			t.Fatalf("allow %v: read back %d certificates, %v", allow, len(got), err)
		}
		if opts := attest.EKRootsOptions(b); (len(opts) == 1) != allow {
			t.Errorf("allow %v: %d verifier options", allow, len(opts))
		}
	}
}
