// Package server wires a Gatehouse appliance node together: the device API
// over HTTPS, the admin API over a unix socket, and the enrollment path
// attest (verify) → cluster (commit) → ca (issue).
package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Files and folders inside a data directory.
const (
	configFile  = "config.json"
	caDir       = "ca"
	raftDir     = "raft"
	ekRootsFile = "ek-roots.pem"
	adminSocket = "admin.sock"
)

// ErrNotInitialized is returned by Open for a directory without an appliance.
var ErrNotInitialized = errors.New("data directory is not initialized (run gatehouse init)")

// ErrAlreadyInitialized is returned by Init for a directory that has one.
var ErrAlreadyInitialized = errors.New("data directory is already initialized")

// Config is a node's configuration, written by Init to DATADIR/config.json.
type Config struct {
	NodeID       string   `json:"node_id"`
	TrustDomain  string   `json:"trust_domain"`
	Listen       string   `json:"listen"`    // device API (HTTPS)
	RaftAddr     string   `json:"raft_addr"` // Raft transport
	Hostnames    []string `json:"hostnames"` // names and IPs in the HTTPS server certificate
	CertValidity Duration `json:"cert_validity"`
	SessionTTL   Duration `json:"session_ttl"`
	// ApprovalRetry is the Retry-After given to a device pending approval.
	ApprovalRetry Duration `json:"approval_retry"`
	// AuditCheckpointEvery is how often the leader signs the audit head.
	AuditCheckpointEvery Duration `json:"audit_checkpoint_every"`
	// AuditSink receives each checkpoint this node makes, outside the
	// appliance: file:PATH, syslog or syslog:NETWORK:ADDRESS (auditsink.go).
	AuditSink string `json:"audit_sink,omitempty"`
	// JoinSeed is the API address (host:port) this node joined through;
	// empty for the node that created the cluster.
	JoinSeed string `json:"join_seed,omitempty"`
	// Admission control (DESIGN.md "Admission control"): requests without
	// a client certificate, per client address, per second (RateLimit)
	// with bursts of up to RateBurst; RefusalSummaryEvery is how often a
	// node audits the refusals it did not record one by one.
	RateLimit           float64  `json:"rate_limit"`
	RateBurst           int      `json:"rate_burst"`
	RefusalSummaryEvery Duration `json:"refusal_summary_every"`
	// MaxInFlight bounds the anonymous enrollment requests a node works
	// on at once (challenges; completions get twice as many); past it they
	// are shed with 503 and a Retry-After. 0 means DefaultMaxInFlight.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// Retention (DESIGN.md "Retention"): refused attestation records and
	// raw evidence older than these are removed by the leader, audited.
	// Zero keeps them forever.
	RetainRefused     Duration `json:"retain_refused"`
	RetainRawEvidence Duration `json:"retain_raw_evidence"`
}

// Duration is a time.Duration that reads and writes as "24h0m0s".
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	d.Duration = v
	return err
}

var trustDomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$`)

// DefaultConfig returns the configuration Init fills in for omitted fields.
func DefaultConfig() Config {
	return Config{
		NodeID:               "node-1",
		TrustDomain:          "gatehouse.local",
		Listen:               "127.0.0.1:8443",
		RaftAddr:             "127.0.0.1:8300",
		Hostnames:            []string{"localhost", "127.0.0.1"},
		CertValidity:         Duration{30 * 24 * time.Hour},
		SessionTTL:           Duration{5 * time.Minute},
		ApprovalRetry:        Duration{30 * time.Second},
		AuditCheckpointEvery: Duration{5 * time.Minute},
		RateLimit:            20,
		RateBurst:            40,
		RefusalSummaryEvery:  Duration{time.Minute},
		RetainRefused:        Duration{90 * 24 * time.Hour},
		RetainRawEvidence:    Duration{365 * 24 * time.Hour},
	}
}

// maxSessionTTL bounds how long an enrollment or renewal challenge stays
// answerable (and a used one is remembered): a round trip takes seconds.
const maxSessionTTL = time.Hour

func (c Config) validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("config: node_id is empty")
	case !trustDomainRE.MatchString(c.TrustDomain):
		return fmt.Errorf("config: trust domain %q is not a valid SPIFFE trust domain", c.TrustDomain)
	case c.CertValidity.Duration <= 0 || c.CertValidity.Duration > 365*24*time.Hour:
		return fmt.Errorf("config: cert_validity %v must be in (0, 8760h]", c.CertValidity)
	case len(c.Hostnames) == 0:
		return errors.New("config: hostnames is empty (the HTTPS certificate needs a name)")
	case c.SessionTTL.Duration <= 0 || c.SessionTTL.Duration > maxSessionTTL:
		return fmt.Errorf("config: session_ttl %v must be in (0, %v]", c.SessionTTL, maxSessionTTL)
	case c.ApprovalRetry.Duration < time.Second:
		return errors.New("config: approval_retry must be at least 1s")
	case c.AuditCheckpointEvery.Duration < time.Second:
		return errors.New("config: audit_checkpoint_every must be at least 1s")
	case !(c.RateLimit > 0) || c.RateBurst < 1:
		return errors.New("config: rate_limit must be positive and rate_burst at least 1")
	case c.MaxInFlight < 0:
		return errors.New("config: max_in_flight must not be negative (0: the default)")
	case c.RefusalSummaryEvery.Duration < time.Second:
		return errors.New("config: refusal_summary_every must be at least 1s")
	case c.RetainRefused.Duration < 0 || c.RetainRawEvidence.Duration < 0:
		return errors.New("config: retain_refused and retain_raw_evidence must not be negative (0 keeps forever)")
	}
	if err := parseAuditSink(c.AuditSink); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// Init creates a new appliance in dataDir: its configuration, its PKI with
// keys encrypted under password, and the manufacturer roots that EK
// certificates must chain to (PEM). The Raft state is created on first
// start.
func Init(dataDir string, password []byte, cfg Config, ekRootsPEM []byte) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dataDir, configFile)); err == nil {
		return fmt.Errorf("%s: %w", dataDir, ErrAlreadyInitialized)
	}
	if _, err := attest.ParseCertificates(ekRootsPEM); err != nil {
		return fmt.Errorf("EK roots: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	if err := ca.Init(filepath.Join(dataDir, caDir), password, ca.WithOrganization("Gatehouse "+cfg.TrustDomain)); err != nil {
		return fmt.Errorf("init CA: %w", err)
	}
	return writeNodeFiles(dataDir, cfg, ekRootsPEM)
}

// writeNodeFiles writes the EK roots and, last, the configuration: its
// presence marks a complete data directory.
func writeNodeFiles(dataDir string, cfg Config, ekRootsPEM []byte) error {
	if err := os.WriteFile(filepath.Join(dataDir, ekRootsFile), ekRootsPEM, 0o644); err != nil {
		return err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dataDir, configFile), append(b, '\n'), 0o600)
}

// LoadConfig reads DATADIR/config.json.
func LoadConfig(dataDir string) (Config, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, configFile))
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("%s: %w", dataDir, ErrNotInitialized)
	} else if err != nil {
		return Config{}, err
	}
	cfg := DefaultConfig()
	path := filepath.Join(dataDir, configFile)
	// A misspelt key would otherwise be dropped silently, leaving the
	// default in force: refuse it, naming the key and the file.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		if key, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return Config{}, fmt.Errorf("%s: %w %s", path, ErrUnknownConfigKey, key)
		}
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("%s: trailing data after the configuration object", path)
	}
	return cfg, cfg.validate()
}

// ErrUnknownConfigKey: config.json has a key this version does not know (a
// typo, or a setting from a newer version); the node refuses to start.
var ErrUnknownConfigKey = errors.New("unknown configuration key")

// Option configures Open.
type Option func(*options)

type options struct {
	logger      *slog.Logger
	listen      string
	clusterOpts []cluster.Option
	now         func() time.Time
	caNow       func() time.Time // the CA's clock; nil: time.Now
	rateLimit   float64
	rateBurst   int
	maxInFlight int
	acmeRoots   func(*ca.CA) []*x509.Certificate // nil: the AK CA (acme.go)
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithListen overrides the configured device API address ("127.0.0.1:0" in tests).
func WithListen(addr string) Option { return func(o *options) { o.listen = addr } }

// WithClusterOptions passes options to the Raft node (tests shorten timeouts).
func WithClusterOptions(opts ...cluster.Option) Option {
	return func(o *options) { o.clusterOpts = append(o.clusterOpts, opts...) }
}

// WithRateLimit overrides the configured admission rate limit: requests
// per second per client address without a client certificate, and burst.
func WithRateLimit(perSecond float64, burst int) Option {
	return func(o *options) { o.rateLimit, o.rateBurst = perSecond, burst }
}

// WithMaxInFlight overrides the configured bound on anonymous enrollment
// requests in progress at once (Config.MaxInFlight).
func WithMaxInFlight(n int) Option { return func(o *options) { o.maxInFlight = n } }

// WithClock sets the clock used for session expiry, records and the
// node's decisions (tests). Certificates are dated by the CA's clock
// (WithCAClock), so a test that moves this one to let time pass still gets
// certificates its clients accept now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithCAClock sets the clock the node's CA dates certificates by (default
// time.Now): tests of a node whose clock is skewed.
func WithCAClock(now func() time.Time) Option { return func(o *options) { o.caNow = now } }

// Appliance is one running Gatehouse node.
type Appliance struct {
	cfg      Config
	dataDir  string
	log      *slog.Logger
	ca       *ca.CA
	node     *cluster.Node
	enroller *Enroller
	conf     *replicatedConf // the replicated EK roots and cluster settings

	deviceLn, adminLn net.Listener
	deviceSrv         *http.Server
	adminSrv          *http.Server
	serverCert        *certSource
	nodeCert          *certSource
	nodeHTTP          *http.Client
	ctx               context.Context // cancelled by Close: stops background loops
	cancel            context.CancelFunc
	closeOnce         sync.Once
	closeErr          error
	deniedLimit       deniedLimiter
	sink              *checkpointSink       // nil: no audit_sink
	revokeHook        func(deviceID string) // tests: runs between RevokeDevice's two steps
	tlsRefusedLimit   deniedLimiter
	admission         *clientLimiter
	work              *workGate
	crlCache          crlCache
	health            healthState
	peerCmds          peerCommands             // what each member applies (version.go)
	validityGate      commandGate              // whether every member applies the v3 accepts (version.go)
	envelopeGate      commandGate              // whether every member applies the binary accepts (version.go)
	commandsHook      atomic.Pointer[[]string] // tests: the commands this node claims to apply (an older build's)
	featureHook       atomic.Pointer[int64]    // tests: the feature version this node claims to apply (an older build's)
	acme              http.Handler             // step-ca's ACME API and GET /provisioners (acme.go)
	acmeDB            *acme.DB
}

// Open starts a node from an initialized data directory: it unlocks the CA
// with password, starts Raft, and starts serving the device API and the
// admin socket. Close stops everything.
func Open(dataDir string, password []byte, opts ...Option) (_ *Appliance, err error) {
	o := options{logger: slog.New(slog.DiscardHandler), now: time.Now}
	for _, fn := range opts {
		fn(&o)
	}
	cfg, err := LoadConfig(dataDir)
	if err != nil {
		return nil, err
	}
	if o.listen != "" {
		cfg.Listen = o.listen
	}
	if o.rateLimit > 0 && o.rateBurst > 0 {
		cfg.RateLimit, cfg.RateBurst = o.rateLimit, o.rateBurst
	}
	if o.maxInFlight > 0 {
		cfg.MaxInFlight = o.maxInFlight
	}
	rootsPEM, err := os.ReadFile(filepath.Join(dataDir, ekRootsFile))
	if err != nil {
		return nil, fmt.Errorf("EK roots: %w", err)
	}
	if _, err := attest.ParseCertificates(rootsPEM); err != nil {
		return nil, fmt.Errorf("EK roots: %w", err)
	}
	a := &Appliance{cfg: cfg, dataDir: dataDir, log: o.logger,
		conf: &replicatedConf{local: cfg, localRoots: rootsPEM, log: o.logger}}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	// Listen first: the CRL distribution point in certificates names the port.
	if a.deviceLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("device API listen %s: %w", cfg.Listen, err)
	}
	kv := &registryKV{}
	caOpts := []ca.Option{
		ca.WithDatabase(kv),
		ca.WithCRLDistributionPoint("https://" + a.publicAddr() + "/crl"),
		ca.WithReservedNames(a.reservedNames),
	}
	if o.caNow != nil {
		caOpts = append(caOpts, ca.WithClock(o.caNow))
	}
	acmeHook := &acmeIssuer{}
	if o.acmeRoots == nil {
		o.acmeRoots = akCARoots
	}
	caOpts = append(caOpts, ca.WithACME(o.acmeRoots, acmeHook))
	if a.ca, err = ca.Open(filepath.Join(dataDir, caDir), password, caOpts...); err != nil {
		return nil, fmt.Errorf("open CA: %w", err)
	}
	if err := checkClusterRoot(filepath.Join(dataDir, raftDir), rootHash(a.ca.Root())); err != nil {
		return nil, err
	}
	sealer, err := newSealer(a.ca.TokenKey())
	if err != nil {
		return nil, err
	}
	if a.serverCert, err = newCertSource(func() (tls.Certificate, error) { return a.ca.IssueServer(cfg.Hostnames, serverCertValidity) }, a.log); err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	if a.nodeCert, err = newCertSource(func() (tls.Certificate, error) {
		return a.ca.IssueNode(cfg.NodeID, cfg.TrustDomain, cfg.Hostnames, nodeCertValidity)
	}, a.log); err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	a.nodeHTTP = a.nodeClient()
	if a.sink, err = openCheckpointSink(cfg.AuditSink); err != nil {
		return nil, err
	}
	installRaftMetrics()
	// A node rebuilt from its peers (RebuildNode) waits for its leader
	// instead of bootstrapping a cluster of its own.
	rebuilt := rebuilding(dataDir)
	a.node, err = cluster.Open(cluster.Config{
		NodeID:    cfg.NodeID,
		DataDir:   filepath.Join(dataDir, raftDir),
		RaftAddr:  cfg.RaftAddr,
		TLS:       a.raftTLS(),
		Bootstrap: cfg.JoinSeed == "" && !rebuilt,
		Rebuilt:   rebuilt,
		Logger:    o.logger.With("component", "raft"),
	}, append([]cluster.Option{cluster.WithForwarder(forwarder{a}), cluster.WithSettingsValidator(validateSettingsDocument), cluster.WithEnvelope(a.binaryEnvelope)}, o.clusterOpts...)...)
	if errors.Is(err, cluster.ErrCorruptState) {
		return nil, fmt.Errorf("open cluster node: %w; to rebuild this node from its peers (its identity and credentials are kept), stop it and run `gatehouse cluster rebuild --data-dir %s`, then serve again; or restore the cluster from a backup", err, dataDir)
	} else if err != nil {
		return nil, fmt.Errorf("open cluster node: %w", err)
	}
	if rebuilt {
		// The marker stays until the node has caught up: restarted before,
		// it waits again (no vote, no election) instead of trusting a log
		// it may not have finished receiving.
		a.log.Warn("rebuilt node: waiting for the leader to send the registry (snapshot or log); no vote and no election until caught up")
		go func() {
			select {
			case <-a.node.CaughtUp():
			case <-a.ctx.Done():
				return
			}
			if err := os.Remove(filepath.Join(dataDir, raftDir, rebuildMarker)); err != nil {
				a.log.Warn("cannot remove the rebuild marker", "err", err)
			}
		}()
	}
	kv.node.Store(a.node)
	a.conf.node = a.node
	a.enroller = &Enroller{
		conf:        a.conf,
		reg:         a.node,
		policies:    &policyCache{store: a.node},
		ca:          a.ca,
		akCA:        a.ca,
		tokens:      sealer,
		nodeID:      cfg.NodeID,
		trustDomain: cfg.TrustDomain,
		now:         o.now,
		log:         o.logger,
		metrics:     newEnrollMetrics(),
		unproven:    newRefusalCounts(o.now),
	}
	a.enroller.recordValidity = a.recordsValidity
	a.enroller.leaderless = a.node.LeaderlessFor
	a.enroller.attestCA = acme.NewAttestationCA(a.enroller, acme.WithClock(o.now))
	if err := a.openACME(acmeHook, kv); err != nil {
		return nil, err
	}
	a.admission = newClientLimiter(cfg.RateLimit, cfg.RateBurst)
	a.work = newWorkGate(cmp.Or(cfg.MaxInFlight, DefaultMaxInFlight), time.Now())
	if err := a.serveDevices(); err != nil {
		return nil, err
	}
	if err := a.serveAdmin(); err != nil {
		return nil, err
	}
	go a.registerLoop(cfg.JoinSeed, a.node.Fresh())
	go a.seedLoop()
	go a.leaderLoop()
	go a.featureLoop()
	go a.refusalSummaryLoop(cfg.RefusalSummaryEvery.Duration)
	return a, nil
}

// serveDevices starts the HTTPS device API. Client certificates are optional
// at the TLS layer (enrollment has none yet) and required by the handlers
// that need them.
func (a *Appliance) serveDevices() error {
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(a.ca.Root())
	for _, c := range a.ca.Intermediates() {
		clientCAs.AddCert(c) // lets devices that send only their leaf authenticate
	}
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: a.serverCert.get,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      clientCAs,
	}
	ln := a.deviceLn
	a.deviceSrv = &http.Server{
		Handler:           a.apiHandler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          log.New(tlsRefusals{a}, "", 0),
	}
	go func() {
		if err := a.deviceSrv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("device API stopped", "err", err)
		}
	}()
	a.log.Info("device API listening", "addr", "https://"+ln.Addr().String())
	return nil
}

// Addr is the device API's address (host:port).
func (a *Appliance) Addr() string { return a.deviceLn.Addr().String() }

// Root is the appliance's root certificate, which devices pin.
func (a *Appliance) Root() *x509.Certificate { return a.ca.Root() }

// Intermediates is the chain that signs device certificates and the CRL.
func (a *Appliance) Intermediates() []*x509.Certificate { return a.ca.Intermediates() }

// AuditKey is the checkpoint signing key and its certificate chain.
func (a *Appliance) AuditKey() (ed25519.PrivateKey, []*x509.Certificate) { return a.ca.AuditKey() }

// IsRevoked reports whether step-ca has revoked serial, as this node's
// replica of the registry says.
func (a *Appliance) IsRevoked(serial *big.Int) (bool, error) { return a.ca.IsRevoked(serial) }

// CertificatesIssued counts device certificates this node issued since it started.
func (a *Appliance) CertificatesIssued() uint64 { return a.enroller.issued.Load() }

// Enroller runs enrollments in-process, without HTTP (benchmarks, embedding).
func (a *Appliance) Enroller() *Enroller { return a.enroller }

// Node exposes the Raft node (tests and the admin API read from it).
func (a *Appliance) Node() *cluster.Node { return a.node }

// WaitReady blocks until the node can commit and, on a node that creates
// its cluster now (no Raft state yet), until the replicated EK roots and
// settings are written and its build's feature version raised (ekroots.go
// seedLoop), so what it serves next is
// the cluster's state. A node that restarts does not wait for them: in a
// cluster being upgraded they wait for the last old member
// (membersApply), and its local files stand in meanwhile.
func (a *Appliance) WaitReady(ctx context.Context) error {
	if err := a.node.WaitLeader(ctx); err != nil {
		return err
	}
	// The node creating a cluster is ready once its own first writes (the
	// seed and its member record, both asynchronous) are in: nothing it
	// serves afterwards races them.
	for a.cfg.JoinSeed == "" && a.node.Fresh() && !(a.seeded() && a.registered() && a.featureSeeded()) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("writing the initial EK roots, settings and member record to the cluster: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// registered: this node's member record is in its replica.
func (a *Appliance) registered() bool {
	_, err := a.node.Member(a.cfg.NodeID)
	return err == nil
}

// Close stops serving and shuts the node down.
func (a *Appliance) Close() error {
	a.closeOnce.Do(func() {
		if a.cancel != nil {
			a.cancel()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var errs []error
		for _, s := range []*http.Server{a.deviceSrv, a.adminSrv} {
			if s != nil {
				errs = append(errs, s.Shutdown(ctx))
			}
		}
		if a.deviceSrv == nil && a.deviceLn != nil {
			a.deviceLn.Close()
		}
		if a.node != nil {
			errs = append(errs, a.node.Close())
		}
		if a.ca != nil {
			errs = append(errs, a.ca.Close())
		}
		errs = append(errs, a.sink.Close())
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// certSource hands out a certificate issued in memory and reissues it when
// two thirds of its lifetime have passed. A failed reissue, while the
// current certificate is still served, is retried at most every
// certRetryEvery: get runs on every TLS handshake and every /readyz probe
// (exempt from the rate limit), which must not each sign, propose and log.
type certSource struct {
	issue    func() (tls.Certificate, error)
	log      *slog.Logger
	mu       sync.Mutex
	cert     *tls.Certificate
	failedAt time.Time // of the last failed reissue; zero after a success
}

const certRetryEvery = 10 * time.Second

const serverCertValidity = 7 * 24 * time.Hour

func newCertSource(issue func() (tls.Certificate, error), log *slog.Logger) (*certSource, error) {
	s := &certSource{issue: issue, log: log}
	if _, err := s.get(nil); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *certSource) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil {
		leaf := s.cert.Leaf
		if time.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)) {
			return s.cert, nil
		}
	}
	if s.cert != nil && time.Since(s.failedAt) < certRetryEvery {
		return s.cert, nil
	}
	c, err := s.issue()
	if err != nil {
		if s.cert != nil { // keep serving the old one while it is valid
			s.failedAt = time.Now()
			s.log.Error("certificate renewal failed; retrying later", "err", err, "retry_in", certRetryEvery)
			return s.cert, nil
		}
		return nil, err
	}
	s.cert, s.failedAt = &c, time.Time{}
	return s.cert, nil
}
