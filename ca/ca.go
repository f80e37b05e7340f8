// Package ca is Gatehouse's embedded step-ca: it creates the appliance PKI
// and issues device and server certificates through step-ca's authority.
//
// Guarantees:
//   - Private keys are encrypted at rest (PKCS#8, password-based); the data
//     directory alone does not yield a usable key.
//   - Device certificates carry exactly the identity the appliance decided:
//     CN = device ID and one SPIFFE URI SAN; whatever names the CSR asks
//     for are dropped. They are valid now, by every clock within MaxClockSkew
//     of the issuing node's (notBefore is backdated past it, notAfter set
//     explicitly), for client authentication only.
//   - The serial and the validity of a device certificate are chosen by the
//     caller (NewSerial, DeviceValidity), so they can be committed to the
//     registry before the certificate exists, and the certificate carries
//     exactly those.
//
// Non-guarantees:
//   - Nothing here checks that the caller verified the device; the caller
//     (server) issues only after attestation and a Raft commit.
//   - Revocation needs a database (WithDatabase); without one, Revoke fails
//     and IsRevoked reports false. step-ca itself checks revocation only on
//     renewal: callers authenticating a certificate must call IsRevoked.
//   - The decrypted intermediate key lives in process memory while open;
//     so do the session-token and audit keys derived from it.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
	"golang.org/x/crypto/hkdf"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// Files in a CA directory.
const (
	RootCertFile         = "root.crt"
	IntermediateCertFile = "intermediate.crt"
	rootKeyFile          = "root.key"
	intermediateKeyFile  = "intermediate.key"
)

// Sentinel errors.
var (
	ErrExists      = errors.New("a CA already exists in this directory")
	ErrNoPassword  = errors.New("a non-empty password is required to encrypt CA keys")
	ErrBadPassword = errors.New("CA key password is incorrect")
	ErrBadProfile  = errors.New("invalid certificate profile")
)

const (
	rootValidity         = 20 * 365 * 24 * time.Hour
	intermediateValidity = 10 * 365 * 24 * time.Hour
	// backdate exceeds MaxClockSkew: a certificate issued by a node whose
	// clock runs MaxClockSkew fast is already valid by everyone else's.
	backdate        = MaxClockSkew + time.Minute
	maxLeafValidity = 365 * 24 * time.Hour
)

// MaxClockSkew is how far one node's clock may run from true time (or a
// device's, a peer's, the step CLI's) without breaking a validity decision:
// every certificate is backdated by more than it (step-ca backdates one
// minute, Vault 30 seconds; a cluster of appliances whose clocks drift
// independently needs the larger margin). A clock further off than this is
// not tolerated: NTP is a deployment requirement.
const MaxClockSkew = 5 * time.Minute

// InitOption configures Init.
type InitOption func(*initOptions)

type initOptions struct{ org string }

// WithOrganization sets the organization in the CA names (default "Gatehouse").
func WithOrganization(org string) InitOption { return func(o *initOptions) { o.org = org } }

// Init creates a root and an intermediate (ECDSA P-256) in dir. Both keys
// are written encrypted under password.
func Init(dir string, password []byte, opts ...InitOption) error {
	o := initOptions{org: "Gatehouse"}
	for _, fn := range opts {
		fn(&o)
	}
	if len(password) == 0 {
		return ErrNoPassword
	}
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); err == nil {
		return fmt.Errorf("%s: %w", dir, ErrExists)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	root, err := caCertificate(o.org+" Root CA", o.org, x509util.DefaultRootTemplate, rootKey, nil, rootKey, now, rootValidity)
	if err != nil {
		return fmt.Errorf("create root: %w", err)
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	inter, err := caCertificate(o.org+" Intermediate CA", o.org, x509util.DefaultIntermediateTemplate, intKey, root, rootKey, now, intermediateValidity)
	if err != nil {
		return fmt.Errorf("create intermediate: %w", err)
	}
	for _, f := range []struct {
		name string
		key  crypto.Signer
	}{{rootKeyFile, rootKey}, {intermediateKeyFile, intKey}} {
		blk, err := pemutil.Serialize(f.key, pemutil.WithPassword(password), pemutil.WithPKCS8(true))
		if err != nil {
			return fmt.Errorf("encrypt %s: %w", f.name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(blk), 0o600); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, IntermediateCertFile), pemCert(inter), 0o644); err != nil {
		return err
	}
	// The root certificate goes last: its presence marks a complete PKI.
	return os.WriteFile(filepath.Join(dir, RootCertFile), pemCert(root), 0o644)
}

func caCertificate(cn, org, tmpl string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	cr, err := x509util.CreateCertificateRequest(cn, nil, key)
	if err != nil {
		return nil, err
	}
	data := x509util.CreateTemplateData(cn, nil)
	data.SetSubject(x509util.Subject{CommonName: cn, Organization: x509util.MultiString{org}})
	cert, err := x509util.NewCertificate(cr, x509util.WithTemplate(tmpl, data))
	if err != nil {
		return nil, err
	}
	t := cert.GetCertificate()
	t.NotBefore, t.NotAfter = now.Add(-backdate), now.Add(validity)
	if parent == nil {
		parent = t
	}
	return x509util.CreateCertificate(t, parent, key.Public(), parentKey)
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// CA is an open, unlocked CA.
type CA struct {
	auth         *authority.Authority
	db           *authDB // nil without WithDatabase
	root         *x509.Certificate
	intermediate *x509.Certificate
	signer       *ecdsa.PrivateKey
	tokenKey     []byte
	auditKey     ed25519.PrivateKey
	auditCert    *x509.Certificate
	akKey        ed25519.PrivateKey // the AK CA's (akca.go)
	akCA         *x509.Certificate
	acme         acmeOptions
	crlURL       string
	crl          crlCache
	reserved     func() []string // DNS names no device certificate may carry
	now          func() time.Time
}

// Option configures Open.
type Option func(*CA)

// WithDatabase keeps step-ca's database (issued device certificates,
// revocations) in kv, normally the replicated registry.
func WithDatabase(kv KV) Option {
	return func(c *CA) { c.db = &authDB{DB: &db.DB{DB: nosqlKV{kv}}} }
}

// WithCRLDistributionPoint puts url into every device certificate as its
// CRL distribution point.
func WithCRLDistributionPoint(url string) Option { return func(c *CA) { c.crlURL = url } }

// WithReservedNames gives the DNS names of this appliance's nodes and
// servers, which no device certificate may carry. names is asked at every
// check that has DNS names to judge, so nodes that join later count.
func WithReservedNames(names func() []string) Option {
	return func(c *CA) { c.reserved = names }
}

// WithClock sets the clock certificates are dated by (default time.Now;
// tests skew it).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// Now is the time certificates are dated by (WithClock).
func (c *CA) Now() time.Time { return c.now() }

// Open decrypts the intermediate key in dir and starts an in-process step-ca
// authority that signs with it.
func Open(dir string, password []byte, opts ...Option) (*CA, error) {
	root, err := readCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, err
	}
	inter, err := readCert(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, intermediateKeyFile))
	if err != nil {
		return nil, err
	}
	key, err := pemutil.Parse(keyPEM, pemutil.WithPassword(password))
	if err != nil {
		// The encryption has no MAC: about one wrong password in 256 passes
		// the padding check and yields garbage that fails to parse. Every
		// failure to read an encrypted key is therefore the password's (or
		// a damaged file's, which cannot be told apart).
		if blk, _ := pem.Decode(keyPEM); blk != nil && blk.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, fmt.Errorf("%s: %w (or the file is damaged): %v", intermediateKeyFile, ErrBadPassword, err)
		}
		return nil, fmt.Errorf("%s: %w", intermediateKeyFile, err)
	}
	signer, ok := key.(*ecdsa.PrivateKey)
	if !ok || !signer.PublicKey.Equal(inter.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s", intermediateKeyFile, IntermediateCertFile)
	}
	c := &CA{root: root, intermediate: inter, signer: signer, tokenKey: deriveKey(signer, "gatehouse session-token v1"), now: time.Now}
	for _, fn := range opts {
		fn(c)
	}
	// Before the authority: the AK CA is the ACME provisioner's root.
	if err := c.initAKCA(); err != nil {
		return nil, err
	}
	authConf := &config.AuthConfig{Backdate: &provisioner.Duration{Duration: backdate}}
	authOpts := []authority.Option{
		authority.WithConfig(&config.Config{AuthorityConfig: authConf}),
		authority.WithX509RootCerts(root),
		authority.WithX509Signer(inter, signer),
		authority.WithQuietInit(),
	}
	if c.acme.roots != nil {
		acmeOpts, err := c.acmeAuthority(authConf)
		if err != nil {
			return nil, err
		}
		authOpts = append(authOpts, acmeOpts...)
	}
	if c.db != nil {
		authOpts = append(authOpts, authority.WithDatabase(c.db))
	}
	if c.auth, err = authority.NewEmbedded(authOpts...); err != nil {
		return nil, fmt.Errorf("start step-ca authority: %w", err)
	}
	if err := c.initAuditKey(); err != nil {
		return nil, err
	}
	return c, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return pemutil.ParseCertificate(b)
}

// deriveKey derives a 32-byte key for purpose from the intermediate key, so
// every node that can issue holds the same session-token and audit keys, and
// no further secret has to be stored or replicated.
func deriveKey(k *ecdsa.PrivateKey, purpose string) []byte {
	key := make([]byte, 32)
	r := hkdf.New(sha256.New, k.D.Bytes(), nil, []byte(purpose))
	if _, err := io.ReadFull(r, key); err != nil {
		panic(err) // HKDF-SHA256 can produce 32 bytes
	}
	return key
}

// Root is the appliance root certificate.
func (c *CA) Root() *x509.Certificate { return c.root }

// Intermediates is the issuing chain below the root.
func (c *CA) Intermediates() []*x509.Certificate { return []*x509.Certificate{c.intermediate} }

// TokenKey is the 32-byte session-token sealing key.
func (c *CA) TokenKey() []byte { return append([]byte(nil), c.tokenKey...) }

// NewSerial returns a random 128-bit positive serial number.
func (c *CA) NewSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] &= 0x7f // positive in DER
	b[0] |= 0x40 // and always 16 bytes long
	return new(big.Int).SetBytes(b), nil
}

// DeviceProfile is what a device certificate says.
type DeviceProfile struct {
	DeviceID    string
	TrustDomain string
	Serial      *big.Int
	Validity    time.Duration
	// NotBefore and NotAfter, when set, are the certificate's validity as
	// the caller decided it before committing (DeviceValidity): it is
	// signed with exactly these. Zero: from Validity at signing.
	NotBefore, NotAfter time.Time
	// DNSNames and URIs come from the enrollment group's profile; the
	// SPIFFE ID is always the first URI, and the only one: URIs may hold
	// no other SPIFFE ID nor a Gatehouse URN.
	DNSNames []string
	URIs     []string
}

var (
	idRE          = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)
	trustDomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$`)
)

// Validate checks a profile before anything depends on it. A device
// profile never names anything in the admin or node namespaces: no SPIFFE
// ID but the device's own (added by IssueDevice), no Gatehouse URN, only
// plain host names (no wildcards). CheckDevice also refuses the CA's
// reserved names.
func (p DeviceProfile) Validate() error {
	switch {
	case !idRE.MatchString(p.DeviceID):
		return fmt.Errorf("%w: device ID %q", ErrBadProfile, p.DeviceID)
	case !trustDomainRE.MatchString(p.TrustDomain):
		return fmt.Errorf("%w: trust domain %q", ErrBadProfile, p.TrustDomain)
	case p.Serial == nil || p.Serial.Sign() <= 0:
		return fmt.Errorf("%w: a positive serial is required", ErrBadProfile)
	case p.Validity <= 0 || p.Validity > maxLeafValidity:
		return fmt.Errorf("%w: validity %v must be in (0, %v]", ErrBadProfile, p.Validity, maxLeafValidity)
	case (p.NotBefore.IsZero() || p.NotAfter.IsZero()) && p.NotBefore != p.NotAfter:
		return fmt.Errorf("%w: notBefore and notAfter are set together", ErrBadProfile)
	case !p.NotBefore.IsZero() && (!p.NotAfter.After(p.NotBefore) || p.NotAfter.Sub(p.NotBefore) > maxLeafValidity+backdate):
		return fmt.Errorf("%w: validity %v..%v must be at most %v", ErrBadProfile, p.NotBefore, p.NotAfter, maxLeafValidity)
	}
	for _, d := range p.DNSNames {
		if !attest.ValidHostname(d) {
			return fmt.Errorf("%w: DNS name %q is not a host name (LDH labels, no wildcard)", ErrBadProfile, d)
		}
	}
	for _, u := range p.URIs {
		parsed, err := url.Parse(u)
		if err != nil || parsed.Scheme == "" {
			return fmt.Errorf("%w: URI %q", ErrBadProfile, u)
		}
		if strings.EqualFold(parsed.Scheme, "spiffe") || strings.HasPrefix(strings.ToLower(u), "urn:gatehouse:") {
			return fmt.Errorf("%w: URI %q: a device certificate carries no SPIFFE ID but its own and no Gatehouse URN", ErrBadProfile, u)
		}
	}
	return nil
}

// CheckDevice is Validate plus the names this CA reserves for its nodes
// and servers (WithReservedNames). IssueDevice runs it; callers run it
// before committing to issue.
func (c *CA) CheckDevice(p DeviceProfile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if len(p.DNSNames) == 0 || c.reserved == nil {
		return nil
	}
	reserved := c.reserved()
	for _, d := range p.DNSNames {
		for _, n := range reserved {
			if strings.EqualFold(strings.TrimSuffix(n, "."), d) {
				return fmt.Errorf("%w: DNS name %q is reserved for the appliance's nodes", ErrBadProfile, d)
			}
		}
	}
	return nil
}

func (p DeviceProfile) uris() []*url.URL {
	out := []*url.URL{Identity{Path: PathDevice, ID: p.DeviceID}.SPIFFEID(p.TrustDomain)}
	for _, u := range p.URIs {
		parsed, _ := url.Parse(u) // validated
		out = append(out, parsed)
	}
	return out
}

// DeviceValidity is the validity of a certificate valid for validity from
// now: notBefore backdated past MaxClockSkew, both in UTC and to the
// second, as X.509 encodes them, so a value recorded before signing equals
// the signed certificate's.
func DeviceValidity(now time.Time, validity time.Duration) (notBefore, notAfter time.Time) {
	now = now.UTC().Truncate(time.Second)
	return now.Add(-backdate), now.Add(validity)
}

// IssueDevice signs a device certificate for the CSR's key through step-ca,
// valid exactly for the profile's NotBefore..NotAfter when set. It returns
// the leaf followed by the intermediate.
func (c *CA) IssueDevice(ctx context.Context, csr *x509.CertificateRequest, p DeviceProfile) ([]*x509.Certificate, error) {
	if err := c.CheckDevice(p); err != nil {
		return nil, err
	}
	notBefore, notAfter := p.NotBefore, p.NotAfter
	if notBefore.IsZero() {
		notBefore, notAfter = DeviceValidity(c.now(), p.Validity)
	}
	return c.sign(ctx, csr, notBefore, notAfter, PathDevice, func(crt *x509.Certificate) { c.shapeDevice(crt, p) })
}

// shapeDevice makes crt say what the device profile p says: the one shaping
// of device certificates, native (IssueDevice) and ACME (acmeCAS).
func (c *CA) shapeDevice(crt *x509.Certificate, p DeviceProfile) {
	crt.SerialNumber = new(big.Int).Set(p.Serial)
	crt.Subject = pkix.Name{CommonName: p.DeviceID}
	crt.DNSNames, crt.IPAddresses, crt.EmailAddresses = p.DNSNames, nil, nil
	crt.URIs = p.uris()
	crt.KeyUsage = x509.KeyUsageDigitalSignature
	crt.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if c.crlURL != "" {
		crt.CRLDistributionPoints = []string{c.crlURL}
	}
}

// sign runs step-ca's SignWithContext with validity set explicitly: a bare
// step-ca sign yields notBefore == notAfter, an already-expired certificate.
// It marks the certificate with path (see Path) after shape, so only the
// issuing function chooses the mark, and checks the result carries it and
// exactly notBefore..notAfter, and is valid now.
func (c *CA) sign(ctx context.Context, csr *x509.CertificateRequest, notBefore, notAfter time.Time, path Path, shape func(*x509.Certificate)) ([]*x509.Certificate, error) {
	mark, ok := pathOIDs[path]
	if !ok {
		return nil, fmt.Errorf("%w: unknown issuance path %q", ErrBadProfile, path)
	}
	now := c.now()
	chain, err := c.auth.SignWithContext(ctx, csr, provisioner.SignOptions{
		NotBefore: provisioner.NewTimeDuration(notBefore),
		NotAfter:  provisioner.NewTimeDuration(notAfter),
	}, provisioner.CertificateModifierFunc(func(crt *x509.Certificate, _ provisioner.SignOptions) error {
		// step-ca copies the CSR's extensions into ExtraExtensions, which
		// would override the SANs set here: the CSR requests nothing.
		crt.ExtraExtensions = nil
		shape(crt)
		finish(crt, mark, notBefore, notAfter)
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("step-ca sign: %w", err)
	}
	if err := checkIssued(chain[0], now, notBefore, notAfter, path); err != nil {
		return nil, err
	}
	return chain, nil
}

// finish sets what every path's certificate has in common, after the
// path's own shaping: the path mark, the validity, not a CA.
func finish(crt *x509.Certificate, mark x509.OID, notBefore, notAfter time.Time) {
	crt.Policies, crt.PolicyIdentifiers = []x509.OID{mark}, nil
	crt.NotBefore, crt.NotAfter = notBefore, notAfter
	crt.BasicConstraintsValid, crt.IsCA = true, false
}

// checkIssued is sign's check of a signed leaf: valid now, exactly
// notBefore..notAfter, and carrying exactly one issuance mark, path's.
func checkIssued(leaf *x509.Certificate, now, notBefore, notAfter time.Time, path Path) error {
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return fmt.Errorf("step-ca issued a certificate not valid now (%v..%v)", leaf.NotBefore, leaf.NotAfter)
	} else if !leaf.NotBefore.Equal(notBefore.Truncate(time.Second)) || !leaf.NotAfter.Equal(notAfter.Truncate(time.Second)) {
		return fmt.Errorf("step-ca issued a certificate valid %v..%v, not %v..%v", leaf.NotBefore, leaf.NotAfter, notBefore, notAfter)
	}
	if by, ok := IssuedBy(leaf); !ok || by != path {
		return fmt.Errorf("step-ca issued a certificate without the %s issuance mark", path)
	}
	return nil
}

// IssueServer issues the appliance's HTTPS certificate for hosts (DNS names
// or IP addresses), with a fresh P-256 key that never touches disk.
func (c *CA) IssueServer(hosts []string, validity time.Duration) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, fmt.Errorf("%w: no server hosts", ErrBadProfile)
	}
	return c.issueWithFreshKey(validity, PathServer, func(crt *x509.Certificate) {
		crt.Subject = pkix.Name{CommonName: hosts[0]}
		setHosts(crt, hosts)
		crt.KeyUsage = x509.KeyUsageDigitalSignature
		crt.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
}

func setHosts(crt *x509.Certificate, hosts []string) {
	crt.DNSNames, crt.IPAddresses = nil, nil
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			crt.IPAddresses = append(crt.IPAddresses, ip)
		} else {
			crt.DNSNames = append(crt.DNSNames, h)
		}
	}
}

// issueWithFreshKey signs a certificate for a new in-memory P-256 key.
func (c *CA) issueWithFreshKey(validity time.Duration, path Path, shape func(*x509.Certificate)) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	notBefore, notAfter := DeviceValidity(c.now(), validity)
	chain, err := c.sign(context.Background(), csr, notBefore, notAfter, path, func(crt *x509.Certificate) {
		crt.URIs, crt.EmailAddresses = nil, nil
		shape(crt)
	})
	if err != nil {
		return tls.Certificate{}, err
	}
	out := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, crt := range chain {
		out.Certificate = append(out.Certificate, crt.Raw)
	}
	return out, nil
}

// IssueNode issues a cluster node's certificate: client and server auth, URI
// SAN spiffe://<trust domain>/node/<id>, a fresh P-256 key in memory. Peers
// admit each other on Raft and cluster RPC by this identity.
func (c *CA) IssueNode(nodeID, trustDomain string, hosts []string, validity time.Duration) (tls.Certificate, error) {
	if !idRE.MatchString(nodeID) || !trustDomainRE.MatchString(trustDomain) || validity <= 0 || validity > maxLeafValidity {
		return tls.Certificate{}, fmt.Errorf("%w: node %q in %q for %v", ErrBadProfile, nodeID, trustDomain, validity)
	}
	id := Identity{Path: PathNode, ID: nodeID}.SPIFFEID(trustDomain)
	return c.issueWithFreshKey(validity, PathNode, func(crt *x509.Certificate) {
		crt.Subject = pkix.Name{CommonName: "gatehouse node " + nodeID}
		crt.URIs = []*url.URL{id}
		setHosts(crt, hosts)
		crt.KeyUsage = x509.KeyUsageDigitalSignature
		crt.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	})
}

// EncryptedKeyPEM returns the intermediate key exactly as stored: encrypted.
// A joining node receives it and unlocks it with its own password file.
func EncryptedKeyPEM(dir string) ([]byte, error) {
	return os.ReadFile(filepath.Join(dir, intermediateKeyFile))
}

// CheckPassword reports whether password decrypts a cluster's encrypted CA
// key (ErrBadPassword otherwise). A joining node calls it before it spends
// its join token.
func CheckPassword(encryptedKeyPEM, password []byte) error {
	if _, err := pemutil.Parse(encryptedKeyPEM, pemutil.WithPassword(password)); err != nil {
		return fmt.Errorf("the cluster's CA key: %w (every node needs the same password file)", ErrBadPassword)
	}
	return nil
}

// Install writes a CA received from a cluster (root and intermediate
// certificates, the encrypted intermediate key) into dir, then checks that
// password unlocks it.
func Install(dir string, rootPEM, intermediatePEM, encryptedKeyPEM, password []byte) error {
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); err == nil {
		return fmt.Errorf("%s: %w", dir, ErrExists)
	}
	if err := CheckPassword(encryptedKeyPEM, password); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{intermediateKeyFile, encryptedKeyPEM, 0o600}, {IntermediateCertFile, intermediatePEM, 0o644}, {RootCertFile, rootPEM, 0o644}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// Close releases the authority.
func (c *CA) Close() error {
	return c.auth.Shutdown()
}
