package agent

import (
	"bytes"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The agent enrolls through a swtpm, writes the identity without any
// software private key, does nothing on a second run, re-enrolls with
// --force, and proves the identity with whoami.
func TestAgentEnrollAndWhoAmI(t *testing.T) {
	e := servertest.New(t)
	p := swtpm.StartTest(t, e.Mfr)
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "root.crt")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.App.Root().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "identity")
	args := []string{"--server", e.URL(), "--server-root", rootFile, "--tpm", p.URI()}
	enroll := append([]string{"enroll", "--out", out, "--model", "gw-7"}, args...)

	if code := Run(enroll); code != 0 {
		t.Fatalf("enroll exited %d", code)
	}
	if n := e.App.CertificatesIssued(); n != 1 {
		t.Fatalf("%d certificates issued, want 1", n)
	}
	for _, f := range []string{fwclient.CertFile, fwclient.ChainFile, fwclient.ConfigFile, fwclient.KeyBlobFile, fwclient.IdentityFile} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatalf("%s not written: %v", f, err)
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Fatalf("%s contains a software private key", f)
		}
	}
	id, err := fwclient.LoadIdentity(out)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := e.App.Node().Device(id.DeviceID)
	if err != nil || dev.Claims.Model != "gw-7" || dev.CertificateSerial != id.Certificate.SerialNumber.Text(16) {
		t.Fatalf("registry has %+v (%v) for %s", dev, err, id.DeviceID)
	}

	// A second run with a valid certificate does nothing.
	if code := Run(enroll); code != 0 {
		t.Fatalf("second enroll exited %d", code)
	}
	if n := e.App.CertificatesIssued(); n != 1 {
		t.Fatalf("second run without --force issued a certificate (%d total)", n)
	}
	// --force enrolls again, as the same device.
	if code := Run(append(enroll, "--force")); code != 0 {
		t.Fatalf("forced enroll exited %d", code)
	}
	id2, err := fwclient.LoadIdentity(out)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.App.CertificatesIssued(); n != 2 || id2.DeviceID != id.DeviceID || id2.Certificate.SerialNumber.Cmp(id.Certificate.SerialNumber) == 0 {
		t.Fatalf("forced enroll: %d issued, device %s (was %s)", n, id2.DeviceID, id.DeviceID)
	}

	if code := Run(append([]string{"whoami", "--dir", out}, args...)); code != 0 {
		t.Fatalf("whoami exited %d", code)
	}
}

func TestAgentRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"enroll"}, // required flags missing
		{"enroll", "--server", "https://127.0.0.1:1", "--server-root", "/nonexistent", "--out", t.TempDir()},
		{"enroll", "--server", "https://127.0.0.1:1", "--server-root", "/nonexistent", "--out", t.TempDir(), "--ak", "dsa"},
		{"whoami", "--server", "https://127.0.0.1:1", "--server-root", "/nonexistent", "--dir", t.TempDir()},
	} {
		if code := Run(args); code == 0 {
			t.Fatalf("%s: exit 0", strings.Join(args, " "))
		}
	}
}
