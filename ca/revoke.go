package ca

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"
)

// Revocation errors.
var (
	ErrNoDatabase     = errors.New("revocation needs the CA database (WithDatabase)")
	ErrAlreadyRevoked = errors.New("certificate is already revoked")
)

// RevocationReason codes (RFC 5280) Gatehouse uses.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCessationOfOperation = 5
)

// Revoke revokes the certificate with serial through step-ca, which records
// it in its database. Revoking twice returns ErrAlreadyRevoked.
func (c *CA) Revoke(ctx context.Context, serial *big.Int, reasonCode int, reason string) error {
	if c.db == nil {
		return ErrNoDatabase
	}
	sn := serial.String() // step-ca keys serials in decimal
	crt, err := c.db.GetCertificate(sn)
	if err != nil {
		// Issued before the database existed, or never issued (issuance
		// failed after commit): revoke the serial all the same.
		crt = &x509.Certificate{SerialNumber: serial}
	}
	err = c.auth.Revoke(provisioner.NewContextWithMethod(ctx, provisioner.RevokeMethod), &authority.RevokeOptions{
		Serial: sn, ReasonCode: reasonCode, Reason: reason, MTLS: true, Crt: crt,
	})
	if err != nil && strings.Contains(err.Error(), "already revoked") {
		return fmt.Errorf("serial %x: %w", serial, ErrAlreadyRevoked)
	}
	if err != nil {
		return fmt.Errorf("step-ca revoke serial %x: %w", serial, err)
	}
	return nil
}

// IsRevoked reports whether step-ca has the serial as revoked.
func (c *CA) IsRevoked(serial *big.Int) (bool, error) {
	if c.db == nil {
		return false, nil
	}
	return c.auth.IsRevoked(serial.String())
}

// CRLValidity is how long a served CRL stays valid.
const CRLValidity = 24 * time.Hour

type crlCache struct {
	mu      sync.Mutex
	der     []byte
	key     string // revoked serials + validity hour
	expires time.Time
}

// CRL returns the DER CRL of everything step-ca has revoked, signed by the
// intermediate. It is rebuilt when the revocations change or half its
// validity has passed. Its number is thisUpdate in Unix seconds: increasing
// over time, and the same on every node without coordination. Its
// thisUpdate field is backdated past MaxClockSkew, as certificates are.
func (c *CA) CRL(now time.Time) ([]byte, error) {
	if c.db == nil {
		return nil, ErrNoDatabase
	}
	revoked, err := c.db.GetRevokedCertificates()
	if err != nil {
		return nil, fmt.Errorf("revoked certificates: %w", err)
	}
	var entries []x509.RevocationListEntry
	var keyB strings.Builder
	thisUpdate := now.UTC().Truncate(time.Hour)
	for _, r := range *revoked {
		sn, ok := new(big.Int).SetString(r.Serial, 10)
		if !ok {
			continue // not an X.509 serial of ours
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: r.RevokedAt.UTC().Truncate(time.Second), ReasonCode: r.ReasonCode})
		keyB.WriteString(r.Serial + ",")
		if t := r.RevokedAt.UTC().Truncate(time.Second); t.After(thisUpdate) && !t.After(now) {
			thisUpdate = t
		}
	}
	key := keyB.String() + thisUpdate.String()
	c.crl.mu.Lock()
	defer c.crl.mu.Unlock()
	if c.crl.der != nil && c.crl.key == key && now.Before(c.crl.expires) {
		return c.crl.der, nil
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(thisUpdate.Unix()),
		// Backdated like certificates: a CRL served by a node whose clock
		// runs MaxClockSkew fast is not "not yet valid" to a verifier
		// (OpenSSL checks) with the true time.
		ThisUpdate:                thisUpdate.Add(-backdate),
		NextUpdate:                thisUpdate.Add(CRLValidity),
		RevokedCertificateEntries: entries,
	}, c.intermediate, c.signer)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	c.crl.der, c.crl.key, c.crl.expires = der, key, thisUpdate.Add(CRLValidity/2)
	return der, nil
}

// initAuditKey derives the Ed25519 key that signs audit checkpoints and
// certifies it under the intermediate, so an auditor who trusts the root
// can check checkpoint signatures offline.
func (c *CA) initAuditKey() error {
	c.auditKey = ed25519.NewKeyFromSeed(deriveKey(c.signer, "gatehouse audit-key v1"))
	serial, err := c.NewSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "Gatehouse audit checkpoint key", Organization: c.intermediate.Subject.Organization},
		NotBefore:    c.intermediate.NotBefore,
		NotAfter:     c.intermediate.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		URIs:         []*url.URL{{Scheme: "urn", Opaque: "gatehouse:audit-key"}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.intermediate, c.auditKey.Public(), c.signer)
	if err != nil {
		return fmt.Errorf("audit key certificate: %w", err)
	}
	c.auditCert, err = x509.ParseCertificate(der)
	return err
}

// AuditKey is the checkpoint signing key and its certificate chain (leaf,
// then intermediate).
func (c *CA) AuditKey() (ed25519.PrivateKey, []*x509.Certificate) {
	return c.auditKey, []*x509.Certificate{c.auditCert, c.intermediate}
}

// VerifyAuditKey checks that chain (leaf first) certifies an audit key under
// root, and returns the key.
func VerifyAuditKey(chain []*x509.Certificate, root *x509.Certificate) (ed25519.PublicKey, error) {
	if len(chain) == 0 {
		return nil, errors.New("no audit key certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: leaf.NotBefore.Add(time.Minute)}); err != nil {
		return nil, fmt.Errorf("audit key certificate: %w", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:gatehouse:audit-key" {
		return nil, errors.New("certificate is not a Gatehouse audit key certificate")
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("audit key is not Ed25519")
	}
	return pub, nil
}

// Role names carried by admin certificates.
const (
	RoleOperator = "operator"
	RoleAuditor  = "auditor"
)

// IssueAdmin signs an admin client certificate for the CSR's key:
// URI SAN spiffe://<trust domain>/admin/<role>/<name>, client auth only.
func (c *CA) IssueAdmin(ctx context.Context, csr *x509.CertificateRequest, trustDomain, role, name string, validity time.Duration) ([]*x509.Certificate, error) {
	if role != RoleOperator && role != RoleAuditor {
		return nil, fmt.Errorf("%w: role %q (want %s or %s)", ErrBadProfile, role, RoleOperator, RoleAuditor)
	}
	if !idRE.MatchString(name) || !trustDomainRE.MatchString(trustDomain) || validity <= 0 || validity > maxLeafValidity {
		return nil, fmt.Errorf("%w: admin %q in %q for %v (names: a-z 0-9 -)", ErrBadProfile, name, trustDomain, validity)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: CSR signature: %v", ErrBadProfile, err)
	}
	id := Identity{Path: PathAdmin, Role: role, ID: name}.SPIFFEID(trustDomain)
	notBefore, notAfter := DeviceValidity(c.now(), validity)
	return c.sign(ctx, csr, notBefore, notAfter, PathAdmin, func(crt *x509.Certificate) {
		crt.Subject = pkix.Name{CommonName: "gatehouse " + role + " " + name}
		crt.DNSNames, crt.IPAddresses, crt.EmailAddresses = nil, nil, nil
		crt.URIs = []*url.URL{id}
		crt.KeyUsage = x509.KeyUsageDigitalSignature
		crt.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
}
