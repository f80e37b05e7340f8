// Package servertest starts real appliance nodes and swtpm devices for
// tests in any package. Nothing here is faked: the node runs Raft, step-ca
// and the HTTPS device API on loopback.
package servertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/hashicorp/raft"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
)

// TrustDomain is the trust domain of test appliances.
const TrustDomain = "test.gatehouse.internal"

// Password unlocks test appliances' CA keys.
var Password = []byte("correct horse battery staple")

// Clock is a settable clock shared with the appliance.
type Clock struct {
	mu     sync.Mutex
	offset time.Duration
}

// Now is the appliance's idea of the time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// Advance moves the clock.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// FastRaft shortens Raft's timeouts so a single node elects itself quickly.
// It also keeps few trailing logs, so a forced snapshot truncates the log
// and a late joiner must install the snapshot.
func FastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 150 * time.Millisecond
	c.ElectionTimeout = 150 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.TrailingLogs = 16
}

// Env is one appliance node on loopback plus a test TPM manufacturer whose
// CA the appliance trusts.
type Env struct {
	T      testing.TB
	Dir    string
	Mfr    *swtpm.Manufacturer
	App    *server.Appliance
	Client *fwclient.Client
	Clock  *Clock
	// HTTP is a plain HTTPS client trusting the appliance root.
	HTTP *http.Client
	opts []cluster.Option
}

// New initializes and starts an appliance. Everything stops when the test
// ends. opts go to its Raft node after FastRaft (WithRaftConfig replaces it).
func New(t testing.TB, opts ...cluster.Option) *Env {
	t.Helper()
	return NewWithConfig(t, nil, opts...)
}

// NewWithConfig is New with edit applied to the configuration before init.
func NewWithConfig(t testing.TB, edit func(*server.Config), opts ...cluster.Option) *Env {
	t.Helper()
	m := swtpm.NewTestManufacturer(t)
	e := &Env{T: t, Dir: t.TempDir(), Mfr: m, Clock: &Clock{}, opts: opts}
	cfg := server.DefaultConfig()
	cfg.TrustDomain = TrustDomain
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = FreeAddr(t) // fixed: the cluster configuration records it
	cfg.ApprovalRetry = server.Duration{Duration: time.Second}
	Unthrottled(&cfg)
	if edit != nil {
		edit(&cfg)
	}
	if err := server.Init(e.Dir, Password, cfg, EKRoots(m)); err != nil {
		t.Fatalf("init appliance: %v", err)
	}
	e.Start()
	return e
}

// Unthrottled lifts the admission rate limit: tests and benchmarks enroll
// many devices from one loopback address. (TestAdmissionRateLimit runs
// with the limit on.)
func Unthrottled(cfg *server.Config) { cfg.RateLimit, cfg.RateBurst = 1e9, 1<<30 }

// EKRoots is the PEM bundle trusting m's EK certificates.
func EKRoots(m *swtpm.Manufacturer) []byte {
	return append(m.RootPEM(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Intermediate.Raw})...)
}

// Start opens the appliance in e.Dir (again, after Close: a restart), with
// opts after the Env's own (e's clock, fast Raft).
func (e *Env) Start(opts ...server.Option) {
	e.T.Helper()
	app, err := server.Open(e.Dir, Password, append([]server.Option{
		server.WithClock(e.Clock.Now),
		server.WithClusterOptions(append([]cluster.Option{cluster.WithRaftConfig(FastRaft)}, e.opts...)...)}, opts...)...)
	if err != nil {
		e.T.Fatalf("open appliance: %v", err)
	}
	e.T.Cleanup(func() { app.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := app.WaitReady(ctx); err != nil {
		e.T.Fatalf("appliance not ready: %v", err)
	}
	e.App = app
	e.Client = fwclient.NewClient(e.URL(), app.Root())
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	e.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: api.WrapTransport(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}})}
}

// URL is the device API's base URL.
func (e *Env) URL() string { return "https://" + e.App.Addr() }

// Seed stops the node, builds fleet in its registry (cluster.LoadSynthetic:
// the commands' apply without a Raft commit each, so 100,000 devices take
// about a minute, not hours) and starts it again, which reads them back.
func (e *Env) Seed(fleet cluster.SyntheticFleet) {
	e.T.Helper()
	e.App.Close()
	t0 := time.Now()
	if err := cluster.LoadSynthetic(filepath.Join(e.Dir, "raft"), fleet); err != nil {
		e.T.Fatalf("seed: %v", err)
	}
	e.T.Logf("seeded %d devices, %d attestation records and %d audit entries in %s", fleet.Devices, fleet.Attestations, fleet.Audit, time.Since(t0).Round(time.Millisecond))
	e.Start()
}

// AdminCert has the node issue an admin certificate of role for a fresh
// key, through its admin socket.
func (e *Env) AdminCert(t testing.TB, role, name string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := server.NewAdminClient(e.Dir).IssueAdminCert(context.Background(), role, name, csr, time.Hour)
	if err != nil {
		t.Fatalf("issue %s certificate: %v", role, err)
	}
	var cert tls.Certificate
	for rest := resp.Chain; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, blk.Bytes)
	}
	cert.PrivateKey = key
	return cert
}

// Device is a running swtpm with an open go-attestation handle.
type Device struct {
	Proc *swtpm.Process
	TPM  *fwclient.TPM
	EK   goattest.EK
}

// NewDevice starts a fresh swtpm whose EK certificate m issued.
func NewDevice(t testing.TB, m *swtpm.Manufacturer) *Device {
	t.Helper()
	return NewBootedDevice(t, m, nil)
}

// NewBootedDevice starts a fresh swtpm and, when log is set, extends the
// log's events into its PCRs first, as firmware would (see Process.Boot).
func NewBootedDevice(t testing.TB, m *swtpm.Manufacturer, log []byte) *Device {
	t.Helper()
	p := swtpm.StartTest(t, m)
	if log != nil {
		if err := p.Boot(log); err != nil {
			t.Fatal(err)
		}
	}
	tpm, err := p.Open()
	if err != nil {
		t.Fatalf("open swtpm: %v", err)
	}
	t.Cleanup(func() { tpm.Close() })
	ek, err := fwclient.EndorsementKey(tpm)
	if err != nil {
		t.Fatal(err)
	}
	return &Device{Proc: p, TPM: tpm, EK: ek}
}

// NewAK creates an AK that is flushed when the test ends.
func (d *Device) NewAK(t testing.TB, alg goattest.Algorithm) *goattest.AK {
	t.Helper()
	ak, err := d.TPM.NewAK(&goattest.AKConfig{Algorithm: alg})
	if err != nil {
		t.Fatalf("NewAK: %v", err)
	}
	t.Cleanup(func() { ak.Close(d.TPM.TPM) })
	return ak
}

// Join adds a node to e's cluster through e's API with a fresh join token,
// starts it, and waits until it sees a leader. It stops when the test ends.
func (e *Env) Join(t testing.TB, nodeID string, opts ...cluster.Option) (*server.Appliance, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatalf("join token: %v", err)
	}
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.NodeID = nodeID
	cfg.Listen = "127.0.0.1:0"
	cfg.RaftAddr = FreeAddr(t)
	Unthrottled(&cfg)
	if err := server.Join(ctx, dir, Password, e.App.Addr(), tok.String(), cfg); err != nil {
		t.Fatalf("join %s: %v", nodeID, err)
	}
	return StartNode(t, dir, opts...), dir
}

// StartNode opens the node in dir and waits until it sees a leader.
func StartNode(t testing.TB, dir string, opts ...cluster.Option) *server.Appliance {
	t.Helper()
	app, err := server.Open(dir, Password, server.WithClusterOptions(append([]cluster.Option{cluster.WithRaftConfig(FastRaft)}, opts...)...))
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { app.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := app.WaitReady(ctx); err != nil {
		t.Fatalf("node in %s not ready: %v", dir, err)
	}
	return app
}

// FreeAddr returns a loopback address with a port nobody listens on. Raft
// addresses are part of the cluster configuration, so they must be fixed,
// and the port stays unbound from here until the node opens. It is drawn
// at random from 10000-17999: below the kernel's ephemeral range (32768
// up), where a connection or a ":0" listener in a parallel test package
// could take it meanwhile, and apart from cluster.sh's ports (18300 up) and
// swtpm's (20000 up).
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mrand.IntN(8000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		l.Close()
		return addr
	}
	t.Fatal("no free loopback port in 10000-17999")
	return ""
}

// WaitFor polls cond every 20 ms until it holds, failing the test after d.
func WaitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	WaitEvery(t, what, d, 20*time.Millisecond, cond)
}

// WaitEvery is WaitFor polling every interval (a condition that costs the
// nodes something, such as a /metrics scrape, is polled slowly).
func WaitEvery(t testing.TB, what string, d, interval time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
}
