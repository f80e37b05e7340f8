// Package loadgen drives a live Gatehouse cluster over HTTPS with simulated
// devices, for BENCHMARKS ONLY (cmd/gatehouse-load, `make loadtest`).
//
// Each simulated device is a tpmmodel.Device (a software TPM model whose
// EK certificate a test manufacturer issued) and runs the real device
// protocol code: fwclient.Client.Enroll for a fresh device, Client.Renew
// over mTLS for an enrolled one, and, for a herd, the agent's own loop
// (fwclient.Daemon) with its own backoff. What the appliance verifies is
// what it verifies for a real device; only the TPM is simulated.
//
// Guarantees: it talks to loopback addresses only (ErrNotLoopback for any
// other), each enrolling device from its own loopback source address (as
// a fleet comes from many addresses: the appliance rate-limits per
// address), and it stops by itself. Server CPU is read from
// /proc/PID/stat of the node processes it is given; it cannot see CPU
// spent elsewhere on the node's behalf (the kernel's TCP stack is charged
// to whichever process runs it). Non-guarantees: the generator shares the
// machine's cores with the nodes, so its own CPU (reported) is load the
// nodes do not get; a model device proves nothing about hardware.
package loadgen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-attestation/attest"
	"golang.org/x/time/rate"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
)

// Modes.
const (
	ModeEnroll = "enroll" // every operation enrolls a fresh device
	ModeRenew  = "renew"  // every operation renews an enrolled device over mTLS
	ModeMixed  = "mixed"  // enroll with probability EnrollFraction, else renew
)

var (
	// ErrNotLoopback refuses a server address that is not a loopback address.
	ErrNotLoopback = errors.New("loadgen: not a loopback address")
	// ErrConfig is an unusable configuration.
	ErrConfig = errors.New("loadgen: bad configuration")
)

// Node is one appliance node under load.
type Node struct {
	API     string // host:port of the device API
	PID     int    // its process, for CPU and RSS (0: not measured)
	DataDir string // its data directory, for the admin socket (verification)
}

// Config is one run.
type Config struct {
	Nodes []Node
	Root  *x509.Certificate // the appliance root the devices pin

	Manufacturer *tpmmodel.Manufacturer // the one the cluster trusts
	Platform     *tpmmodel.Platform     // shared by all devices
	EK           string                 // fwclient.EKECCP256 (default) or EKRSA2048
	AK           attest.Algorithm       // attest.ECDSA (default) or attest.RSA

	Mode           string
	Concurrency    int           // workers, each one device at a time
	Duration       time.Duration // the measured window
	Rate           float64       // operations per second over all workers; 0: as fast as possible
	EnrollFraction float64       // mixed: the share of enrollments (default 0.5)
	Pregen         int           // devices made before the window (the rest during it)
	Timeout        time.Duration // per operation (default 60s)

	// KillLeaderAfter, if set, SIGKILLs the leader's process this long into
	// the window (Nodes need PIDs), and Verify is implied.
	KillLeaderAfter time.Duration
	// Verify checks after the run, through a surviving node's admin
	// socket, that every acknowledged operation is in the registry.
	Verify bool

	Log func(format string, args ...any) // progress; nil: silent
}

// Latency is a latency distribution's summary.
type Latency struct{ P50, P95, P99, Max time.Duration }

// NodeResult is what a node cost during the window.
type NodeResult struct {
	Node
	ID        string        // its node ID (from /readyz)
	CPU       time.Duration // utime+stime during the window
	RSS, HWM  uint64        // bytes at the end (or when killed)
	Killed    bool
	MeasureOK bool
}

// Result is one run's outcome.
type Result struct {
	Mode                  string
	Concurrency           int
	Elapsed               time.Duration // window, until the last operation ended
	Enrollments, Renewals int           // acknowledged
	EnrollLat, RenewLat   Latency
	AllLat                Latency
	Errors                map[string]int // by problem code or transport error class
	ErrorCount            int
	// Deferred counts the answers that told a device to come back later
	// (429 or 503 with Retry-After: an overloaded node, no leader), by
	// code. The worker waits as told, as the agent does; they are not
	// errors.
	Deferred         map[string]int
	DeferredCount    int
	Nodes            []NodeResult
	ServerCPU        time.Duration // summed over the nodes
	GeneratorCPU     time.Duration // this process, during the window
	Setup            time.Duration // pre-generation and warm-up enrollments, before the window
	SetupCPU         time.Duration
	SetupDevices     int
	SetupEnrollments int
	LeaderKilled     string        // node ID, "" when none
	KilledAt         time.Duration // into the window
	NewLeaderAfter   time.Duration // kill → a survivor's /readyz names a new leader
	WritesBackAfter  time.Duration // kill → first acknowledged operation started after it; -1: never
	Verified, Lost   int           // acknowledged operations checked, and missing
	VerifyErr        error
}

type target struct {
	url    string
	client *fwclient.Client
}

// gen is one run's state.
type gen struct {
	cfg     Config
	tlsCfg  *tls.Config
	targets atomic.Pointer[[]*target] // the nodes still alive
	all     []*target
	limiter *rate.Limiter
	devices chan *tpmmodel.Device
	nextIP  atomic.Uint64
	killed  atomic.Int64 // unix nanos of the leader kill, 0 before
	backAt  atomic.Int64 // unix nanos of the first ack started after it
	acks    sync.Map     // attestation ID → ack (for Verify)
}

type ack struct {
	deviceID string
	serial   string
}

// worker-local statistics, merged at the end.
type stats struct {
	enroll, renew []time.Duration
	errors        map[string]int
	deferred      map[string]int
}

// failed counts err, and waits out a Retry-After (bounded by end) as the
// agent would.
func (st *stats) failed(ctx context.Context, end time.Time, err error) {
	var p *api.Problem
	if !errors.As(err, &p) || p.RetryAfter <= 0 || p.Status != http.StatusTooManyRequests && p.Status != http.StatusServiceUnavailable {
		st.errors[Classify(err)]++
		return
	}
	st.deferred[Classify(err)]++
	wait := min(p.RetryAfter+time.Duration(rand.Int64N(int64(p.RetryAfter/10)+1)), time.Until(end))
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// owned is an enrolled device a worker renews.
type owned struct {
	dev *tpmmodel.Device
	id  *fwclient.Identity
	t   *target
}

// CheckLoopback refuses an address (host:port or https://host:port) whose
// host is not, or does not resolve only to, loopback addresses.
func CheckLoopback(addr string) (hostport string, err error) {
	hostport = strings.TrimPrefix(strings.TrimPrefix(addr, "https://"), "http://")
	hostport = strings.TrimRight(hostport, "/")
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrNotLoopback, addr, err)
	}
	ips := []net.IP{net.ParseIP(host)}
	if ips[0] == nil {
		if ips, err = net.LookupIP(host); err != nil || len(ips) == 0 {
			return "", fmt.Errorf("%w: %q does not resolve: %v", ErrNotLoopback, addr, err)
		}
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return "", fmt.Errorf("%w: %q is %s", ErrNotLoopback, addr, ip)
		}
	}
	return hostport, nil
}

func (c *Config) check() error {
	if len(c.Nodes) == 0 || c.Root == nil || c.Manufacturer == nil || c.Platform == nil {
		return fmt.Errorf("%w: nodes, root, manufacturer and platform are required", ErrConfig)
	}
	for i := range c.Nodes {
		hp, err := CheckLoopback(c.Nodes[i].API)
		if err != nil {
			return err
		}
		c.Nodes[i].API = hp
	}
	if c.Mode == "" {
		c.Mode = ModeMixed
	}
	if c.Mode != ModeEnroll && c.Mode != ModeRenew && c.Mode != ModeMixed {
		return fmt.Errorf("%w: mode %q (enroll, renew or mixed)", ErrConfig, c.Mode)
	}
	if c.EK == "" {
		c.EK = fwclient.EKECCP256
	}
	if c.AK == "" {
		c.AK = attest.ECDSA
	}
	if c.Concurrency < 1 || c.Duration <= 0 || c.Rate < 0 {
		return fmt.Errorf("%w: concurrency ≥ 1, duration > 0 and rate ≥ 0 are required", ErrConfig)
	}
	if c.EnrollFraction == 0 {
		c.EnrollFraction = 0.5
	}
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	if c.KillLeaderAfter >= c.Duration {
		return fmt.Errorf("%w: the leader must be killed within the window", ErrConfig)
	}
	if c.KillLeaderAfter > 0 {
		c.Verify = true
		for _, n := range c.Nodes {
			if n.PID == 0 {
				return fmt.Errorf("%w: killing the leader needs every node's PID", ErrConfig)
			}
		}
	}
	if c.Verify {
		for _, n := range c.Nodes {
			if n.DataDir == "" {
				return fmt.Errorf("%w: verification needs every node's data directory (admin socket)", ErrConfig)
			}
		}
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	return nil
}

func newGen(cfg Config) *gen {
	pool := x509.NewCertPool()
	pool.AddCert(cfg.Root)
	g := &gen{cfg: cfg, tlsCfg: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	for _, n := range cfg.Nodes {
		u := "https://" + n.API
		g.all = append(g.all, &target{url: u, client: fwclient.NewClient(u, cfg.Root)})
	}
	alive := append([]*target(nil), g.all...)
	g.targets.Store(&alive)
	return g
}

// deviceIP is the i-th device's own loopback source address: 127.b.c.d
// with b from 1 (never 127.0.0.1) and d in 1..254.
func deviceIP(i uint64) net.IP {
	d := byte(i%254 + 1)
	i /= 254
	c := byte(i % 256)
	i /= 256
	b := byte(i%254 + 1)
	return net.IPv4(127, b, c, d)
}

// deviceHTTP is a fresh HTTP client for one device, as the agent makes
// one per run: its own connection (a full TLS handshake) from its own
// loopback address, with the TLS settings fwclient uses.
func (g *gen) deviceHTTP() *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: deviceIP(g.nextIP.Add(1))}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: g.cfg.Timeout, Transport: api.WrapTransport(&http.Transport{
		DialContext: d.DialContext, TLSClientConfig: g.tlsCfg,
	})}
}

// pick chooses a node still alive for a new device.
func (g *gen) pick() *target {
	ts := *g.targets.Load()
	return ts[rand.IntN(len(ts))]
}

// device takes a pre-generated device, or makes one.
func (g *gen) device() (*tpmmodel.Device, error) {
	select {
	case d := <-g.devices:
		return d, nil
	default:
		return g.cfg.Manufacturer.NewDevice(g.cfg.Platform, g.cfg.EK)
	}
}

func (g *gen) enroll(ctx context.Context) (*owned, error) {
	dev, err := g.device()
	if err != nil {
		return nil, fmt.Errorf("new model device: %w", err)
	}
	t := g.pick()
	hc := g.deviceHTTP()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	id, err := t.client.Enroll(ctx, dev, fwclient.WithAKAlgorithm(g.cfg.AK), fwclient.WithHTTPClient(hc),
		fwclient.WithClaims(api.Claims{Model: "gatehouse-load"}))
	if err != nil {
		return nil, err
	}
	return &owned{dev: dev, id: id, t: t}, nil
}

func (g *gen) renew(ctx context.Context, o *owned) error {
	if !g.alive(o.t) {
		o.t = g.pick() // its node is gone: the device tries another
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	id, err := o.t.client.Renew(ctx, o.dev, o.id, nil)
	if err != nil {
		return err
	}
	o.id = id
	return nil
}

func (g *gen) alive(t *target) bool {
	for _, a := range *g.targets.Load() {
		if a == t {
			return true
		}
	}
	return false
}

func (g *gen) acked(start time.Time, id *fwclient.Identity) {
	if g.cfg.Verify {
		g.acks.Store(id.AttestationID, ack{deviceID: id.DeviceID, serial: id.Certificate.SerialNumber.Text(16)})
	}
	if k := g.killed.Load(); k != 0 && start.UnixNano() > k {
		g.backAt.CompareAndSwap(0, time.Now().UnixNano())
	}
}

// worker runs operations until the window closes.
func (g *gen) worker(ctx context.Context, end time.Time, mine []*owned, st *stats) {
	next := 0
	for time.Now().Before(end) && ctx.Err() == nil {
		if g.limiter != nil {
			wctx, cancel := context.WithDeadline(ctx, end)
			err := g.limiter.Wait(wctx)
			cancel()
			if err != nil {
				return
			}
		}
		doEnroll := g.cfg.Mode == ModeEnroll || len(mine) == 0 ||
			g.cfg.Mode == ModeMixed && rand.Float64() < g.cfg.EnrollFraction
		start := time.Now()
		if doEnroll {
			o, err := g.enroll(ctx)
			if err != nil {
				st.failed(ctx, end, err)
				continue
			}
			st.enroll = append(st.enroll, time.Since(start))
			g.acked(start, o.id)
			if g.cfg.Mode != ModeEnroll {
				mine = append(mine, o)
			}
			continue
		}
		o := mine[next%len(mine)]
		next++
		if err := g.renew(ctx, o); err != nil {
			st.failed(ctx, end, err)
			continue
		}
		st.renew = append(st.renew, time.Since(start))
		g.acked(start, o.id)
	}
}

// Run runs one load test and returns its result. It ends by itself after
// cfg.Duration (operations in flight then are finished, bounded by
// cfg.Timeout) or when ctx ends.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	g := newGen(cfg)
	res := &Result{Mode: cfg.Mode, Concurrency: cfg.Concurrency, Errors: map[string]int{}, Deferred: map[string]int{}, WritesBackAfter: -1}
	ids, err := g.nodeIDs(ctx)
	if err != nil {
		return nil, err
	}

	// Before the window: devices, and the enrolled devices renewals need.
	setup0, setupCPU0 := time.Now(), selfCPU()
	if cfg.Mode == ModeRenew {
		cfg.Pregen = min(cfg.Pregen, cfg.Concurrency) // the warm-up's only
	}
	if err := g.pregen(cfg.Pregen); err != nil {
		return nil, err
	}
	res.SetupDevices = cfg.Pregen
	owners := make([][]*owned, cfg.Concurrency)
	if cfg.Mode != ModeEnroll {
		if err := g.warmup(ctx, owners); err != nil {
			return nil, err
		}
		res.SetupEnrollments = cfg.Concurrency
	}
	res.Setup, res.SetupCPU = time.Since(setup0), selfCPU()-setupCPU0

	if cfg.Rate > 0 {
		g.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), max(1, int(cfg.Rate/100)))
	}
	for i, n := range cfg.Nodes {
		res.Nodes = append(res.Nodes, NodeResult{Node: n, ID: ids[i]})
	}
	nodeCPU0, err := startMeasure(cfg.Nodes)
	if err != nil {
		return nil, err
	}
	selfCPU0 := selfCPU()
	start := time.Now()
	end := start.Add(cfg.Duration)
	var killErr error
	killDone := make(chan struct{})
	if cfg.KillLeaderAfter > 0 {
		go func() {
			defer close(killDone)
			killErr = g.killLeader(ctx, start.Add(cfg.KillLeaderAfter), res, nodeCPU0, ids)
		}()
	} else {
		close(killDone)
	}
	sts := make([]stats, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		sts[w].errors, sts[w].deferred = map[string]int{}, map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.worker(ctx, end, owners[w], &sts[w])
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.GeneratorCPU = selfCPU() - selfCPU0
	<-killDone
	if killErr != nil {
		return nil, killErr
	}
	if err := finishMeasure(res.Nodes, nodeCPU0); err != nil {
		return nil, err
	}
	for _, n := range res.Nodes {
		res.ServerCPU += n.CPU
	}
	var en, rn []time.Duration
	for _, s := range sts {
		en, rn = append(en, s.enroll...), append(rn, s.renew...)
		for k, v := range s.errors {
			res.Errors[k] += v
			res.ErrorCount += v
		}
		for k, v := range s.deferred {
			res.Deferred[k] += v
			res.DeferredCount += v
		}
	}
	res.Enrollments, res.Renewals = len(en), len(rn)
	res.EnrollLat, res.RenewLat = summarize(en), summarize(append([]time.Duration(nil), rn...))
	res.AllLat = summarize(append(en, rn...))
	if k, b := g.killed.Load(), g.backAt.Load(); k != 0 && b != 0 {
		res.WritesBackAfter = time.Duration(b - k)
	}
	if cfg.Verify {
		res.Verified, res.Lost, res.VerifyErr = g.verify(ctx)
	}
	return res, nil
}

// pregen makes n devices before the window, on every core.
func (g *gen) pregen(n int) error {
	g.devices = make(chan *tpmmodel.Device, n)
	var wg sync.WaitGroup
	var first atomic.Value
	per := make(chan struct{}, n)
	for range n {
		per <- struct{}{}
	}
	close(per)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				d, err := g.cfg.Manufacturer.NewDevice(g.cfg.Platform, g.cfg.EK)
				if err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				g.devices <- d
			}
		}()
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		return fmt.Errorf("pre-generate devices: %w", err)
	}
	return nil
}

// warmup enrolls one device per worker, for renewals to start from.
func (g *gen) warmup(ctx context.Context, owners [][]*owned) error {
	var wg sync.WaitGroup
	errs := make([]error, len(owners))
	sem := make(chan struct{}, 32)
	for w := range owners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			o, err := g.enroll(ctx)
			if err != nil {
				errs[w] = fmt.Errorf("warm-up enrollment: %w", err)
				return
			}
			owners[w] = []*owned{o}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Classify names an error for the error table: the appliance's problem
// code, "pending" for an enrollment awaiting approval, or the transport
// failure's class.
func Classify(err error) string {
	var p *api.Problem
	if errors.As(err, &p) {
		return fmt.Sprintf("%s (%d)", p.Code, p.Status)
	}
	var pend *api.Pending
	if errors.As(err, &pend) {
		return "pending"
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return "transport: timeout"
	case errors.Is(err, context.Canceled):
		return "transport: canceled"
	}
	var op *net.OpError
	if errors.As(err, &op) {
		s := op.Err.Error()
		if i := strings.LastIndex(s, ": "); i >= 0 {
			s = s[i+2:]
		}
		return "transport: " + op.Op + ": " + s
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return "transport: tls certificate"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "EOF"):
		return "transport: EOF"
	case strings.Contains(s, "tls"):
		return "transport: tls"
	}
	return "other: " + firstWords(s, 6)
}

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		f = f[:n]
	}
	return strings.Join(f, " ")
}
