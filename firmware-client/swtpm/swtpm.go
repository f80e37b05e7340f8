// Package swtpm runs software TPMs (swtpm) as devices for tests and the
// demo. Each device gets a hermetic TPM state whose EK certificate is issued
// by a test manufacturer CA that this package generates, through
// swtpm_setup's own certificate tool (swtpm_localca), so the EK certificate
// has a vendor's shape: a critical SAN with TPM manufacturer, model and
// version, and the EK EKU. (swtpm_localca puts CN=unknown in the subject,
// where vendors leave it empty.)
//
// swtpm processes are children of the test process, stopped by PID.
package swtpm

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// Tools this package runs. `make deps` installs them (Debian: swtpm, swtpm-tools).
var tools = []string{"swtpm", "swtpm_setup", "swtpm_localca"}

// ErrNotInstalled means a swtpm tool is not on PATH.
var ErrNotInstalled = errors.New("swtpm is not installed (run `make deps`, which apt-get installs swtpm and swtpm-tools)")

// Check reports whether every swtpm tool is on PATH.
func Check() error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s", ErrNotInstalled, strings.Join(missing, ", "))
	}
	return nil
}

// Require fails the test when swtpm is missing. It never skips: a TPM test
// that does not run must not look like one that passed.
func Require(t testing.TB) {
	t.Helper()
	if err := Check(); err != nil {
		t.Fatal(err)
	}
}

// Files of a manufacturer directory, as swtpm_localca expects them.
const (
	rootFile       = "root.pem"
	issuerCertFile = "issuercert.pem"
	signKeyFile    = "signkey.pem"
	certSerialFile = "certserial"
	localCAConf    = "swtpm-localca.conf"
	localCAOptions = "swtpm-localca.options"
	setupConf      = "swtpm_setup.conf"
)

// Manufacturer is a test TPM manufacturer: an ECDSA P-256 root and an
// intermediate ("EK CA") that signs EK certificates.
type Manufacturer struct {
	Dir          string
	Root         *x509.Certificate
	Intermediate *x509.Certificate
}

// NewManufacturer creates a manufacturer CA in dir, or loads the one there.
func NewManufacturer(dir, name string) (*Manufacturer, error) {
	if _, err := os.Stat(filepath.Join(dir, signKeyFile)); err == nil {
		return LoadManufacturer(dir)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " TPM Root CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	ekcaKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ekcaTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " TPM EK CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(15, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	ekcaDER, err := x509.CreateCertificate(rand.Reader, ekcaTmpl, root, &ekcaKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ekcaKey)
	if err != nil {
		return nil, err
	}
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	files := map[string][]byte{
		rootFile:       pemCert(rootDER),
		issuerCertFile: pemCert(ekcaDER),
		signKeyFile:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		certSerialFile: []byte("1000\n"),
		localCAConf: []byte(fmt.Sprintf("statedir = %s\nsigningkey = %s\nissuercert = %s\ncertserial = %s\n",
			dir, filepath.Join(dir, signKeyFile), filepath.Join(dir, issuerCertFile), filepath.Join(dir, certSerialFile))),
		localCAOptions: []byte("--platform-manufacturer Gatehouse\n--platform-version 2.1\n--platform-model swtpm\n"),
		setupConf: []byte(fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			localca, filepath.Join(dir, localCAConf), filepath.Join(dir, localCAOptions))),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	ekca, _ := x509.ParseCertificate(ekcaDER)
	return &Manufacturer{Dir: dir, Root: root, Intermediate: ekca}, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// LoadManufacturer loads a manufacturer created by NewManufacturer.
func LoadManufacturer(dir string) (*Manufacturer, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	m := &Manufacturer{Dir: dir}
	for name, dst := range map[string]**x509.Certificate{rootFile: &m.Root, issuerCertFile: &m.Intermediate} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: not PEM", name)
		}
		if *dst, err = x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return m, nil
}

// SigningKey loads the EK CA's private key, for issuers other than
// swtpm_localca (the software TPM model) that issue EK certificates of
// this manufacturer.
func (m *Manufacturer) SigningKey() (crypto.Signer, error) {
	b, err := os.ReadFile(filepath.Join(m.Dir, signKeyFile))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: not PEM", signKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", signKeyFile, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: %T is not a signing key", signKeyFile, k)
	}
	return signer, nil
}

// RootPEM is the manufacturer root in PEM.
func (m *Manufacturer) RootPEM() []byte { return pemCert(m.Root.Raw) }

// Device is a TPM state directory.
type Device struct{ StateDir string }

// NewDevice creates a TPM state in stateDir with RSA and ECC EKs and their
// certificates, a platform certificate, and a persisted SRK (so creating
// keys does not pay for an SRK), with only the SHA-256 PCR bank active.
func (m *Manufacturer) NewDevice(stateDir string) (*Device, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir,
		"--create-ek-cert", "--create-platform-cert", "--create-spk", "--lock-nvram",
		"--pcr-banks", "sha256", "--config", filepath.Join(m.Dir, setupConf))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("swtpm_setup %s: %v\n%s", stateDir, err, out)
	}
	return &Device{StateDir: stateDir}, nil
}

// NewDevices creates n device states under parentDir (tpm-001, …), several
// at a time: swtpm_setup spends most of its 0.6 s idle.
func (m *Manufacturer) NewDevices(parentDir string, n int) ([]*Device, error) {
	devs := make([]*Device, n)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range devs {
		g.Go(func() error {
			d, err := m.NewDevice(filepath.Join(parentDir, fmt.Sprintf("tpm-%03d", i+1)))
			devs[i] = d
			return err
		})
	}
	return devs, g.Wait()
}

// Process is a running swtpm.
type Process struct {
	Addr string // data port, host:port
	PID  int

	cmd      *exec.Cmd
	done     chan struct{}
	stopOnce sync.Once
	stopErr  error
	logFile  string
}

// Start runs swtpm on d's state as a child process on free loopback ports.
func (d *Device) Start() (*Process, error) {
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		p, err := d.start()
		if err == nil {
			return p, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func (d *Device) start() (*Process, error) {
	port, err := freePortPair()
	if err != nil {
		return nil, err
	}
	logFile := filepath.Join(d.StateDir, "swtpm.log")
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--tpmstate", "dir="+d.StateDir,
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+logFile+",level=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start swtpm: %w", err)
	}
	p := &Process{Addr: fmt.Sprintf("127.0.0.1:%d", port), PID: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), logFile: logFile}
	go func() { cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("swtpm exited at start: %s %s", strings.TrimSpace(stderr.String()), p.logTail())
		default:
		}
		if c, err := net.DialTimeout("tcp", p.Addr, 200*time.Millisecond); err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("swtpm did not accept on %s within 5s: %s", p.Addr, p.logTail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *Process) logTail() string {
	b, _ := os.ReadFile(p.logFile)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// freePortPair finds P such that P and P+1 are free on loopback (swtpm's
// control port is the data port plus one, by convention here).
func freePortPair() (int, error) {
	for i := 0; i < 50; i++ {
		p := 20000 + 2*mrand.IntN(6000) // below the ephemeral range (32768 up)
		l1, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l1.Close()
		if err != nil {
			continue
		}
		l2.Close()
		return p, nil
	}
	return 0, errors.New("no free loopback port pair")
}

// URI is the TPM URI fwclient.OpenTPM takes.
func (p *Process) URI() string { return "swtpm://" + p.Addr }

// Open connects go-attestation to the TPM.
func (p *Process) Open() (*fwclient.TPM, error) { return fwclient.OpenTPM(p.URI()) }

// Stop terminates swtpm (SIGTERM, then SIGKILL after 3 s) and reaps it.
// It is idempotent.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			p.stopErr = fmt.Errorf("swtpm %d ignored SIGTERM; killed", p.PID)
		}
	})
	return p.stopErr
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// NewTestManufacturer creates a manufacturer in a temporary directory.
func NewTestManufacturer(t testing.TB) *Manufacturer {
	t.Helper()
	Require(t)
	m, err := NewManufacturer(t.TempDir(), "Test TPM Vendor")
	if err != nil {
		t.Fatalf("test manufacturer: %v", err)
	}
	return m
}

// StartTest creates a fresh device of m, starts it, and stops it when the
// test ends, whether it passed or not.
func StartTest(t testing.TB, m *Manufacturer) *Process {
	t.Helper()
	Require(t)
	d, err := m.NewDevice(t.TempDir())
	if err != nil {
		t.Fatalf("new swtpm device: %v", err)
	}
	p, err := d.Start()
	if err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() { p.Stop() })
	return p
}
