package swtpm

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	steptpm "go.step.sm/crypto/tpm"
	tpmstorage "go.step.sm/crypto/tpm/storage"
)

// The step CLI's TPM library (go.step.sm/crypto/tpm, what `tpmkms:...;
// device=SOCK` opens) reads a swtpm through the socat bridge: the TPM info,
// the same EK (with its manufacturer certificate) that go-attestation reads
// over TCP, and it creates an AK kept in a storage directory. Stop removes
// the socket and ends socat's whole process group.
func TestBridgeServesStepTPM(t *testing.T) {
	m := NewTestManufacturer(t)
	p := StartTest(t, m)
	b, err := p.Bridge()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })

	direct, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	eks, err := direct.EKs()
	direct.Close()
	if err != nil || len(eks) == 0 {
		t.Fatalf("EKs over TCP: %v %d", err, len(eks))
	}
	wantEK, _ := x509.MarshalPKIXPublicKey(eks[0].Public)

	ctx := context.Background()
	st, err := steptpm.New(steptpm.WithDeviceName(b.Path), steptpm.WithStore(tpmstorage.NewDirstore(t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("TPM info through %s: %v", b.Path, err)
	}
	// swtpm reports IBM's manufacturer ID.
	if info.Manufacturer.ASCII != "IBM" {
		t.Fatalf("manufacturer through the bridge: %+v, want IBM (swtpm)", info.Manufacturer)
	}
	seks, err := st.GetEKs(ctx)
	if err != nil {
		t.Fatalf("EKs through the bridge: %v", err)
	}
	var found bool
	for _, ek := range seks {
		got, _ := x509.MarshalPKIXPublicKey(ek.Public())
		if string(got) == string(wantEK) {
			found = true
			if ek.Certificate() == nil || ek.Certificate().Issuer.CommonName != m.Intermediate.Subject.CommonName {
				t.Fatalf("EK certificate through the bridge: %v, want one issued by %q", ek.Certificate(), m.Intermediate.Subject.CommonName)
			}
		}
	}
	if !found {
		t.Fatalf("the EKs read through the bridge (%d) do not include the swtpm's RSA EK: a different TPM answered", len(seks))
	}
	ak, err := st.CreateAK(ctx, "bridge-ak")
	if err != nil {
		t.Fatalf("create AK through the bridge: %v", err)
	}
	if _, err := st.GetAK(ctx, ak.Name()); err != nil {
		t.Fatalf("AK not kept in the storage directory: %v", err)
	}

	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket %s left behind: %v", b.Path, err)
	}
	if err := syscall.Kill(-b.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("socat's process group %d still exists after Stop: %v", b.PID, err)
	}
	if p.Exited() {
		t.Fatal("stopping the bridge stopped swtpm")
	}
}

// Without socat, Bridge fails with the error that says how to install it.
func TestBridgeWithoutSocat(t *testing.T) {
	m := NewTestManufacturer(t)
	p := StartTest(t, m)
	t.Setenv("PATH", t.TempDir())
	_, err := p.Bridge()
	if !errors.Is(err, ErrSocatNotInstalled) || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("Bridge without socat: %v, want ErrSocatNotInstalled naming make deps", err)
	}
}
