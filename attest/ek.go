package attest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// TCG EK credential profile OIDs.
var (
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer  = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel         = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion       = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidEKCertificateEKU = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
)

// EKCertificate is a parsed endorsement-key certificate with the TPM
// attributes from its subject alternative name.
type EKCertificate struct {
	Cert         *x509.Certificate
	Manufacturer string // e.g. "id:49465800" (IFX)
	Model        string
	Version      string
}

// ParseEKCertificate parses an EK certificate as read from NV. It tolerates
// the quirks of real TPMs: the TCG NV header, trailing 0xFF padding after the
// DER, and the critical SAN holding only a directoryName with TPM
// manufacturer/model/version, which Go's x509 reports as an unhandled
// critical extension. That SAN is parsed and then marked handled.
func ParseEKCertificate(der []byte) (*EKCertificate, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty EK certificate", ErrEKInvalid)
	}
	// go-attestation strips the NV header and any trailing bytes after the
	// outer SEQUENCE (the 0xFF padding read from a fixed-size NV index).
	cert, err := goattest.ParseEKCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: parse EK certificate: %v", ErrEKInvalid, err)
	}
	ek := &EKCertificate{Cert: cert}
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		if err := ek.parseTPMSAN(ext.Value); err != nil {
			return nil, fmt.Errorf("%w: EK certificate SAN: %v", ErrEKInvalid, err)
		}
		unhandled := cert.UnhandledCriticalExtensions[:0]
		for _, id := range cert.UnhandledCriticalExtensions {
			if !id.Equal(oidSubjectAltName) {
				unhandled = append(unhandled, id)
			}
		}
		cert.UnhandledCriticalExtensions = unhandled
	}
	return ek, nil
}

func (ek *EKCertificate) parseTPMSAN(value []byte) error {
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(value, &names); err != nil {
		return err
	} else if len(rest) != 0 {
		return errors.New("trailing data")
	}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != 4 { // directoryName
			continue
		}
		var rdns pkix.RDNSequence
		if _, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil {
			return fmt.Errorf("directoryName: %v", err)
		}
		for _, rdn := range rdns {
			for _, atv := range rdn {
				s, _ := atv.Value.(string)
				switch {
				case atv.Type.Equal(oidTPMManufacturer):
					ek.Manufacturer = s
				case atv.Type.Equal(oidTPMModel):
					ek.Model = s
				case atv.Type.Equal(oidTPMVersion):
					ek.Version = s
				}
			}
		}
	}
	return nil
}

// HasEKUsage reports whether the certificate carries the TCG EK certificate
// extended key usage (2.23.133.8.1).
func (ek *EKCertificate) HasEKUsage() bool {
	for _, u := range ek.Cert.UnknownExtKeyUsage {
		if u.Equal(oidEKCertificateEKU) {
			return true
		}
	}
	return false
}

// EKVerifier chains EK certificates to configured manufacturer CAs. Every
// configured certificate is a trust anchor, as in keylime's tpm_cert_store:
// vendors publish intermediates whose own roots are not distributed (STM's
// "ECC Root CA 01" is issued by a GlobalSign root that is not public), and
// configuring a CA is what trusting it means. It is safe for concurrent use.
type EKVerifier struct {
	anchors *x509.CertPool
	now     func() time.Time
	// noEvidence are CAs whose EK certificates carry neither the EK EKU
	// nor a TPM SAN, allowed explicitly (WithNoTPMEvidenceIssuers).
	noEvidence []*x509.Certificate
}

// EKOption configures an EKVerifier.
type EKOption func(*EKVerifier)

// WithVerifyTime checks validity periods at t instead of now: to ask whether
// a certificate was valid when a device enrolled.
func WithVerifyTime(t time.Time) EKOption {
	return func(v *EKVerifier) { v.now = func() time.Time { return t } }
}

// WithNoTPMEvidenceIssuers allows EK certificates issued directly by one
// of cas to carry no TPM evidence (neither the EK EKU nor the TPM SAN), as
// some vendors ship them (Google's GCE "EK/AK CA Intermediate"). They must
// still be end-entity certificates for a decryption key (key usage
// keyEncipherment or keyAgreement), which the same CA's AK certificates
// are not.
func WithNoTPMEvidenceIssuers(cas ...*x509.Certificate) EKOption {
	return func(v *EKVerifier) { v.noEvidence = append(v.noEvidence, cas...) }
}

// NoTPMEvidenceHeader marks, in an EK roots PEM bundle, a CA certificate
// whose EK certificates may carry no TPM evidence: a PEM header
// "Gatehouse-EK-Without-TPM-Evidence: allowed". The bundle travels with
// the cluster (join, backup), so the allowance does too.
const NoTPMEvidenceHeader = "Gatehouse-EK-Without-TPM-Evidence"

// EKRootsOptions returns the verifier options a PEM roots bundle carries:
// WithNoTPMEvidenceIssuers for the CAs marked with NoTPMEvidenceHeader.
func EKRootsOptions(bundle []byte) []EKOption {
	var cas []*x509.Certificate
	for rest := bundle; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" && blk.Headers[NoTPMEvidenceHeader] == "allowed" {
			if c, err := parseDER(blk.Bytes); err == nil {
				cas = append(cas, c)
			}
		}
	}
	if len(cas) == 0 {
		return nil
	}
	return []EKOption{WithNoTPMEvidenceIssuers(cas...)}
}

// EKRootPEM encodes one CA certificate (DER) for an EK roots bundle, marked
// with NoTPMEvidenceHeader when allowNoEvidence (what EKRootsOptions reads).
func EKRootPEM(der []byte, allowNoEvidence bool) []byte {
	blk := &pem.Block{Type: "CERTIFICATE", Bytes: der}
	if allowNoEvidence {
		blk.Headers = map[string]string{NoTPMEvidenceHeader: "allowed"}
	}
	return pem.EncodeToMemory(blk)
}

// AllowNoTPMEvidence marks the CAs of a PEM bundle whose subject (as Name
// prints it) is among subjects with NoTPMEvidenceHeader, keeping the rest
// of the bundle byte for byte. Every subject must name a CA in the bundle.
func AllowNoTPMEvidence(bundle []byte, subjects []string) ([]byte, error) {
	want := map[string]bool{}
	for _, s := range subjects {
		want[s] = false
	}
	var out []byte
	rest := bundle
	for {
		blk, next := pem.Decode(rest)
		if blk == nil {
			out = append(out, rest...)
			break
		}
		consumed := rest[:len(rest)-len(next)]
		rest = next
		c, err := parseDER(blk.Bytes)
		if err != nil || blk.Type != "CERTIFICATE" || !c.IsCA {
			out = append(out, consumed...)
			continue
		}
		if _, ok := want[Name(c.Subject)]; !ok {
			out = append(out, consumed...)
			continue
		}
		want[Name(c.Subject)] = true
		out = append(out, consumed[:bytes.Index(consumed, []byte("-----BEGIN"))]...)
		if blk.Headers == nil {
			blk.Headers = map[string]string{}
		}
		blk.Headers[NoTPMEvidenceHeader] = "allowed"
		out = append(out, pem.EncodeToMemory(blk)...)
		if !bytes.HasSuffix(consumed, []byte("\n")) {
			out = out[:len(out)-1]
		}
	}
	for s, found := range want {
		if !found {
			return nil, fmt.Errorf("no CA certificate with subject %q in the EK roots", s)
		}
	}
	return out, nil
}

// NoTPMEvidenceIssuers is WithNoTPMEvidenceIssuers for the CAs among roots
// whose subject (as Name prints it) is among subjects; every subject must
// name a CA there.
func NoTPMEvidenceIssuers(roots []*x509.Certificate, subjects []string) (EKOption, error) {
	var cas []*x509.Certificate
	for _, s := range subjects {
		i := slices.IndexFunc(roots, func(c *x509.Certificate) bool { return c.IsCA && Name(c.Subject) == s })
		if i < 0 {
			return nil, fmt.Errorf("no CA certificate with subject %q among the EK roots", s)
		}
		cas = append(cas, roots[i])
	}
	return WithNoTPMEvidenceIssuers(cas...), nil
}

// NewEKVerifier builds a verifier trusting certs. Intermediates among them
// are parsed once here, so verification does no parsing.
func NewEKVerifier(certs []*x509.Certificate, opts ...EKOption) *EKVerifier {
	v := &EKVerifier{anchors: x509.NewCertPool(), now: time.Now}
	for _, c := range certs {
		v.anchors.AddCert(c)
	}
	for _, o := range opts {
		o(v)
	}
	return v
}

// Verify checks the EK certificate's chain to a configured CA and that the
// certificate is an EK certificate, and returns the chain. The chain must
// be valid now. Go does not know the EK EKU (2.23.133.8.1), so the chain is
// built with any EKU; instead the certificate itself must carry TPM
// evidence: that EKU, or the TPM manufacturer, model and version in its
// subjectAltName; or be issued directly by a CA allowed to omit both
// (WithNoTPMEvidenceIssuers). A CA certificate is never an EK certificate.
// Otherwise the error wraps ErrEKUntrusted: a certificate a trusted vendor
// CA issued for something else (a server, an AK) does not vouch for a TPM.
func (v *EKVerifier) Verify(ek *EKCertificate) ([]*x509.Certificate, error) {
	if ek.Cert.IsCA {
		return nil, fmt.Errorf("%w: a CA certificate is not an EK certificate", ErrEKUntrusted)
	}
	chains, err := ek.Cert.Verify(x509.VerifyOptions{
		Roots:       v.anchors,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime: v.now(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKUntrusted, err)
	}
	chain := chains[0]
	if ek.HasEKUsage() || ek.Manufacturer != "" && ek.Model != "" && ek.Version != "" {
		return chain, nil
	}
	if len(chain) > 1 && slices.ContainsFunc(v.noEvidence, func(ca *x509.Certificate) bool { return sameCA(ca, chain[1]) }) &&
		ek.Cert.KeyUsage&(x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement) != 0 {
		return chain, nil
	}
	return nil, fmt.Errorf("%w: the certificate carries no TPM evidence (no EK EKU 2.23.133.8.1, no TPM manufacturer, model and version in its subjectAltName) and its issuer %q is not allowed to omit it", ErrEKUntrusted, Name(ek.Cert.Issuer))
}

func sameCA(a, b *x509.Certificate) bool {
	return bytes.Equal(a.RawSubject, b.RawSubject) && bytes.Equal(a.RawSubjectPublicKeyInfo, b.RawSubjectPublicKeyInfo)
}

// LoadCertificates reads every certificate in the given files, PEM or DER.
func LoadCertificates(paths ...string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		cs, err := ParseCertificates(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		certs = append(certs, cs...)
	}
	return certs, nil
}

// ParseCertificates parses every CERTIFICATE block of a PEM file, or one DER
// certificate. Bytes after a DER certificate's outer SEQUENCE (some vendor
// CA files carry a trailing byte) are ignored.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := parseDER(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		c, err := parseDER(b)
		if err != nil {
			return nil, errors.New("no PEM certificates found, and not a DER certificate")
		}
		certs = append(certs, c)
	}
	return certs, nil
}

func parseDER(b []byte) (*x509.Certificate, error) {
	var seq asn1.RawValue
	if _, err := asn1.Unmarshal(b, &seq); err == nil {
		b = seq.FullBytes
	}
	return x509.ParseCertificate(b)
}

// PublicKeySHA256 is the hex SHA-256 of a public key's PKIX DER encoding.
func PublicKeySHA256(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// DeviceID derives a device's stable identifier from its EK public key: the
// first 128 bits of the SHA-256 of its PKIX DER, in lowercase hex. The same
// TPM always maps to the same ID; clearing the TPM's owner hierarchy does not
// change it, because the EK is derived from the endorsement seed.
func DeviceID(ekPub crypto.PublicKey) (string, error) {
	h, err := PublicKeySHA256(ekPub)
	if err != nil {
		return "", fmt.Errorf("%w: EK public key: %v", ErrEKInvalid, err)
	}
	return h[:32], nil
}

// Name returns a readable one-line form of a certificate's subject or issuer.
func Name(n pkix.Name) string {
	s := n.String()
	if s == "" {
		return "(empty)"
	}
	return strings.TrimSpace(s)
}

// ParseTPM2BPublic decodes a TPM2B_PUBLIC (or a bare TPMT_PUBLIC) as a TPM
// returns it, and gives its public key.
func ParseTPM2BPublic(b []byte) (crypto.PublicKey, error) {
	if len(b) > 2 && int(b[0])<<8|int(b[1]) == len(b)-2 {
		b = b[2:]
	}
	pub, err := tpm2.DecodePublic(b)
	if err != nil {
		return nil, fmt.Errorf("%w: TPM public area: %v", ErrEKInvalid, err)
	}
	return pub.Key()
}
