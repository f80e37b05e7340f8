package attest

import (
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
}

// EKOption configures an EKVerifier.
type EKOption func(*EKVerifier)

// WithVerifyTime checks validity periods at t instead of now: to ask whether
// a certificate was valid when a device enrolled.
func WithVerifyTime(t time.Time) EKOption {
	return func(v *EKVerifier) { v.now = func() time.Time { return t } }
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

// Verify checks the EK certificate's chain to a configured CA and returns
// the chain. EK certificates carry EKU 2.23.133.8.1, which Go does not know,
// so any EKU is accepted; the chain itself must be valid now.
func (v *EKVerifier) Verify(ek *EKCertificate) ([]*x509.Certificate, error) {
	chains, err := ek.Cert.Verify(x509.VerifyOptions{
		Roots:       v.anchors,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime: v.now(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKUntrusted, err)
	}
	return chains[0], nil
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
