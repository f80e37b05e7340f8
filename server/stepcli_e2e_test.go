package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	steptpm "go.step.sm/crypto/tpm"
	tpmstorage "go.step.sm/crypto/tpm/storage"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// cliDevice is a swtpm the stock step CLI reaches through a socat bridge,
// with the CLI's own storage directory (its AK, AK certificate and keys).
type cliDevice struct {
	id      string // attest.DeviceID of the EK the CLI sends (RSA)
	sock    string
	storage string
}

// newCLIDevice starts a fresh swtpm of m and bridges it. No handle stays
// open on it: swtpm serves one connection at a time, and the CLI needs it.
func newCLIDevice(t *testing.T, m *swtpm.Manufacturer) *cliDevice {
	t.Helper()
	p := swtpm.StartTest(t, m)
	tpm, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	ek, err := fwclient.EndorsementKey(tpm)
	tpm.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The CLI sends its preferred EK, the RSA one; the device ID is its.
	if _, ok := ek.Public.(*rsa.PublicKey); !ok {
		t.Fatalf("EK is %T, want the RSA EK the step CLI prefers", ek.Public)
	}
	id, err := attest.DeviceID(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	// The README's recipe for an operator gives the same ID from the EK
	// certificate.
	der := filepath.Join(t.TempDir(), "ek.der")
	if err := os.WriteFile(der, ek.Certificate.Raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", "openssl x509 -inform DER -in "+der+" -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -c1-32").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != id {
		t.Fatalf("the README's device ID recipe gives %q (%v), want %s", out, err, id)
	}
	return &cliDevice{id: id, sock: swtpm.BridgeTest(t, p), storage: t.TempDir()}
}

// stepRun is one run of `step ca certificate`.
type stepRun struct {
	args []string
	out  string // stdout and stderr
	err  error
	crt  string // the certificate file it was asked to write
}

// stepCertificate runs the stock CLI against node: ACME device-attest-01
// with provisioner device-attest, the TPM key named keyName created in the
// swtpm behind d's socket, Gatehouse as the attestation CA. STEPPATH and
// HOME are temporary, stdin is empty (a prompt fails instead of hanging),
// and the run is bounded; STEPDEBUG makes its errors name their causes.
func stepCertificate(t *testing.T, step, rootFile string, node *server.Appliance, d *cliDevice, subject, keyName string) stepRun {
	t.Helper()
	dir := t.TempDir()
	base := "https://" + node.Addr()
	r := stepRun{crt: filepath.Join(dir, "dev.crt")}
	r.args = []string{"ca", "certificate", subject, r.crt,
		"--provisioner", "device-attest",
		"--attestation-uri", "tpmkms:name=" + keyName + ";device=" + d.sock,
		"--attestation-ca-url", base + "/attestation",
		"--attestation-ca-root", rootFile,
		"--ca-url", base,
		"--root", rootFile,
		"--tpm-storage-directory", d.storage,
		"--force",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, step, r.args...)
	cmd.Env = append(os.Environ(), "STEPPATH="+filepath.Join(dir, "steppath"), "HOME="+filepath.Join(dir, "home"), "STEPDEBUG=1")
	cmd.Stdin = nil
	out, err := cmd.CombinedOutput()
	r.out, r.err = string(out), err
	if ctx.Err() != nil {
		t.Fatalf("step %s timed out: %s", strings.Join(r.args, " "), r.out)
	}
	t.Logf("$ step %s\n%s", strings.Join(r.args, " "), r.out)
	return r
}

func stepWritePEM(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func stepReadChain(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return chain
}

// stepRecords is what a node's registry holds for a device.
func stepRecords(t *testing.T, n *server.Appliance, id string) []cluster.AttestationRecord {
	t.Helper()
	recs, err := n.Node().Attestations(cluster.AttestationQuery{DeviceID: id})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func stepHasRecord(recs []cluster.AttestationRecord, stage, outcome, serial string) bool {
	for _, r := range recs {
		if r.Stage == stage && r.Outcome == outcome && (serial == "" || r.CertificateSerial == serial) {
			return true
		}
	}
	return false
}

func stepApplyPolicy(t *testing.T, n *server.Appliance, doc string) {
	t.Helper()
	if _, err := n.ApplyPolicy(context.Background(), "test", []byte(doc)); err != nil {
		t.Fatalf("apply policy %s: %v", doc, err)
	}
}

// The stock step CLI (v0.30.2, unmodified) enrolls a swtpm through ACME
// device-attest-01 against a three-node cluster, with Gatehouse as its
// attestation CA: the certificate chains to the Gatehouse root, its key is
// the TPM key the CLI created (the TPM signs with it), and every node holds
// the AK-certificate and ACME records. Refused, and leaving no certificate
// and no ACME record: a group without acme (a fresh device at /attest, a
// known one at its order), an EK from a manufacturer the cluster does not
// trust, an order for another device than the AK certificate names, and a
// device that was revoked. In an approve-mode group a fresh device waits
// pending until an operator approves it, then the same command succeeds.
func TestStepCLIDeviceAttest(t *testing.T) {
	step := servertest.StepCLI(t)
	e, nodes, _ := threeNodes(t)
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "root.crt")
	stepWritePEM(t, rootFile, e.App.Root())
	a := newCLIDevice(t, e.Mfr)

	// A group without acme. A fresh device (unknown to the registry: its
	// order is admitted, as nothing is written before proof) is refused at
	// /attest, before anything is recorded.
	stepApplyPolicy(t, e.App, `{"groups":[{"name":"fleet","mode":"auto"}]}`)
	ctx := context.Background()
	b := servertest.NewDevice(t, e.Mfr) // enrolled natively, reached only by ID
	bid, err := e.Client.Enroll(ctx, b.TPM)
	if err != nil {
		t.Fatal(err)
	}
	r := stepCertificate(t, step, rootFile, nodes[1], a, a.id, "k0")
	stepWantRefusedAt(t, r, "https://"+nodes[1].Addr()+"/attestation/attest", "403")
	for _, n := range nodes {
		if recs := stepRecords(t, n, a.id); len(recs) != 0 {
			t.Fatalf("group without acme: %d records for %s, want none (a refusal before possession is not recorded)", len(recs), a.id)
		}
	}
	// A known, active device of that group cannot even order.
	r = stepCertificate(t, step, rootFile, nodes[2], a, bid.DeviceID, "k0")
	if r.err == nil || !strings.Contains(r.out, "error creating new ACME order") {
		t.Fatalf("order for %s, whose group has no acme: %v, want the new order refused\n%s", bid.DeviceID, r.err, r.out)
	}

	// The group allows ACME: the CLI gets a certificate from node 2 (any
	// node serves every step).
	stepApplyPolicy(t, e.App, `{"groups":[{"name":"fleet","mode":"auto","acme":true}]}`)
	r = stepCertificate(t, step, rootFile, nodes[1], a, a.id, "k1")
	if r.err != nil {
		t.Fatalf("step ca certificate: %v\n%s", r.err, r.out)
	}
	chain := stepReadChain(t, r.crt)
	if len(chain) < 2 {
		t.Fatalf("%s holds %d certificates, want the leaf and the intermediate", r.crt, len(chain))
	}
	leaf := chain[0]
	interFile := filepath.Join(dir, "intermediate.crt")
	stepWritePEM(t, interFile, chain[1:]...)
	if out, err := exec.Command("openssl", "verify", "-CAfile", rootFile, "-untrusted", interFile, r.crt).CombinedOutput(); err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	if leaf.Subject.CommonName != a.id {
		t.Fatalf("certificate CN %q, want the device ID %s", leaf.Subject.CommonName, a.id)
	}
	wantURI := "spiffe://" + servertest.TrustDomain + "/device/" + a.id
	if len(leaf.URIs) == 0 || leaf.URIs[0].String() != wantURI {
		t.Fatalf("certificate URIs %v, want %s", leaf.URIs, wantURI)
	}

	// The certificate's key is the TPM's: the key the CLI created, read
	// back from its storage directory, signs through the TPM behind the
	// bridge, and the certificate's public key verifies it.
	st, err := steptpm.New(steptpm.WithDeviceName(a.sock), steptpm.WithStore(tpmstorage.NewDirstore(a.storage)))
	if err != nil {
		t.Fatal(err)
	}
	key, err := st.GetKey(ctx, "k1")
	if err != nil {
		t.Fatalf("the CLI's TPM key: %v", err)
	}
	signer, err := key.Signer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("gatehouse step CLI end-to-end"))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("sign with the TPM key: %v", err)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatalf("the certificate's key (%T) does not verify the TPM key's signature", leaf.PublicKey)
	}

	// Every node holds the AK-certificate record and the ACME record that
	// carries the certificate's serial.
	serial := leaf.SerialNumber.Text(16)
	for i, n := range nodes {
		servertest.WaitFor(t, fmt.Sprintf("node %d: records ak_certificate and acme (serial %s) for %s", i+1, serial, a.id), 15*time.Second, func() bool {
			recs := stepRecords(t, n, a.id)
			return stepHasRecord(recs, "ak_certificate", cluster.OutcomeAccepted, "") && stepHasRecord(recs, "acme", cluster.OutcomeAccepted, serial)
		})
	}

	// An order for another device than the AK certificate names: b is a
	// known, active device of the acme group now, but a's cached AK
	// certificate says a. The challenge fails; no certificate, no ACME
	// record for b.
	r = stepCertificate(t, step, rootFile, nodes[2], a, bid.DeviceID, "k2")
	if r.err == nil || !strings.Contains(strings.ToLower(r.out), "challenge") {
		t.Fatalf("order for %s with %s's AK certificate: %v, want a failed challenge\n%s", bid.DeviceID, a.id, r.err, r.out)
	}
	if _, err := os.Stat(r.crt); err == nil {
		t.Fatalf("a certificate was written for %s", bid.DeviceID)
	}
	for _, n := range nodes {
		if recs := stepRecords(t, n, bid.DeviceID); stepHasRecord(recs, "acme", cluster.OutcomeAccepted, "") {
			t.Fatalf("an ACME record for %s from %s's TPM", bid.DeviceID, a.id)
		}
	}

	// An EK from a manufacturer the cluster does not trust is refused at
	// /attest; nothing is recorded.
	u := newCLIDevice(t, swtpm.NewTestManufacturer(t))
	r = stepCertificate(t, step, rootFile, nodes[0], u, u.id, "k1")
	stepWantRefusedAt(t, r, "https://"+nodes[0].Addr()+"/attestation/attest", "403")
	for _, n := range nodes {
		if recs := stepRecords(t, n, u.id); len(recs) != 0 {
			t.Fatalf("untrusted EK: %d records for %s", len(recs), u.id)
		}
	}

	// A revoked device cannot order again (its cached AK certificate
	// still chains: the order is what is refused), and revoking it
	// revoked its ACME certificate on every node.
	// Revocation is idempotent and safe to rerun; a loaded machine can
	// cost the three in-process nodes an election meanwhile.
	servertest.WaitFor(t, "device "+a.id+" revoked", 30*time.Second, func() bool {
		_, err := e.App.RevokeDevice(ctx, a.id, "test", "lost")
		if err != nil {
			t.Logf("revoke (will retry): %v", err)
		}
		return err == nil
	})
	for i, n := range nodes {
		servertest.WaitFor(t, fmt.Sprintf("node %d: serial %s revoked", i+1, serial), 15*time.Second, func() bool {
			ok, err := n.IsRevoked(leaf.SerialNumber)
			return err == nil && ok
		})
	}
	before := len(stepRecords(t, e.App, a.id))
	r = stepCertificate(t, step, rootFile, nodes[0], a, a.id, "k3")
	if r.err == nil || !strings.Contains(r.out, "error creating new ACME order") {
		t.Fatalf("revoked device: %v, want the new order refused\n%s", r.err, r.out)
	}
	if _, err := os.Stat(r.crt); err == nil {
		t.Fatal("a certificate was written for a revoked device")
	}
	if after := stepRecords(t, e.App, a.id); len(after) != before {
		t.Fatalf("the refused order added %d records", len(after)-before)
	}

	// A group in approve mode: a fresh device proves possession, is
	// recorded pending and refused at /secret; once approved, the same
	// command gets its certificate.
	stepApplyPolicy(t, e.App, `{"groups":[{"name":"fleet","mode":"approve","acme":true}]}`)
	c := newCLIDevice(t, e.Mfr)
	r = stepCertificate(t, step, rootFile, nodes[2], c, c.id, "k1")
	stepWantRefusedAt(t, r, "https://"+nodes[2].Addr()+"/attestation/secret", "403")
	for i, n := range nodes {
		servertest.WaitFor(t, fmt.Sprintf("node %d: %s pending, its ak_certificate record pending", i+1, c.id), 15*time.Second, func() bool {
			d, err := n.Node().Device(c.id)
			return err == nil && d.Status == cluster.DevicePending && stepHasRecord(stepRecords(t, n, c.id), "ak_certificate", cluster.OutcomePending, "")
		})
	}
	if _, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, c.id, cluster.OpApprove, "test", "checked"); err != nil {
		t.Fatal(err)
	}
	r = stepCertificate(t, step, rootFile, nodes[2], c, c.id, "k2")
	if r.err != nil {
		t.Fatalf("step ca certificate after approval: %v\n%s", r.err, r.out)
	}
	cleaf := stepReadChain(t, r.crt)[0]
	for i, n := range nodes {
		servertest.WaitFor(t, fmt.Sprintf("node %d: the acme record of the approved %s", i+1, c.id), 15*time.Second, func() bool {
			return stepHasRecord(stepRecords(t, n, c.id), "acme", cluster.OutcomeAccepted, cleaf.SerialNumber.Text(16))
		})
	}
}

// stepWantRefusedAt asserts the CLI failed at url with HTTP status code.
func stepWantRefusedAt(t *testing.T, r stepRun, url, code string) {
	t.Helper()
	want := fmt.Sprintf("POST %q failed with HTTP status \"%s", url, code) // then the status text
	if r.err == nil || !strings.Contains(r.out, want) {
		t.Fatalf("step %s: %v, want it refused with %s\n%s", strings.Join(r.args, " "), r.err, want, r.out)
	}
	if _, err := os.Stat(r.crt); err == nil {
		t.Fatalf("a certificate was written although %s refused", url)
	}
}
