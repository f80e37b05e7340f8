package ca

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// AKValidity is how long an AK certificate is valid. The step CLI keeps the
// AK and its certificate and goes through the attestation CA again only
// when the certificate no longer names its EK, so the validity bounds how
// long a cached AK certificate is accepted by ACME device-attest-01 without
// a new credential activation (the ACME order itself still checks the
// device's state in the registry).
const AKValidity = 30 * 24 * time.Hour

// OIDs of an AK certificate (TCG EK Credential Profile, RFC 4043).
var (
	oidTCGKpAIKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 3}
	oidTPMManufacturer     = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel            = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion          = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidPermanentIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 3}
	oidExtSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtExtendedKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}
)

var errAKProfile = fmt.Errorf("%w: AK certificate", ErrBadProfile)

// initAKCA derives the AK CA key from the intermediate key and builds its
// self-signed certificate. Every field is a function of the intermediate
// (key and certificate), and Ed25519 signatures are deterministic, so every
// node that holds the intermediate builds the byte-identical certificate:
// nothing is stored, replicated or handed over at join.
//
// The AK CA is deliberately not under the Gatehouse root: nothing that
// trusts the root (device mTLS, the admin API, node authentication) accepts
// an AK certificate, and no AK certificate carries a SPIFFE ID or an
// issuance-path mark, so ParseIdentity refuses it whatever it chains to.
func (c *CA) initAKCA() error {
	c.akKey = ed25519.NewKeyFromSeed(deriveKey(c.signer, "gatehouse ak-ca v1"))
	pub := c.akKey.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(append([]byte("gatehouse ak-ca serial v1"), pub...))
	serial := sum[:16]
	serial[0] &= 0x7f
	serial[0] |= 0x40
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(serial),
		Subject:               pkix.Name{CommonName: "Gatehouse AK CA", Organization: c.intermediate.Subject.Organization},
		NotBefore:             c.intermediate.NotBefore,
		NotAfter:              c.intermediate.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, c.akKey)
	if err != nil {
		return fmt.Errorf("AK CA certificate: %w", err)
	}
	c.akCA, err = x509.ParseCertificate(der)
	return err
}

// AKCA is the attestation-key CA certificate: the only attestation root of
// the ACME device-attest provisioner. It is self-signed and outside the
// Gatehouse hierarchy.
func (c *CA) AKCA() *x509.Certificate { return c.akCA }

// AKProfile is what an AK certificate says. The caller has verified all of
// it: the EK (its certificate chain or its pre-registration), the AK (made
// in the TPM, restricted signing key) and the credential activation that
// binds the two.
type AKProfile struct {
	// DeviceID becomes the PermanentIdentifier SAN: attest.DeviceID of EK.
	DeviceID string
	// EK is the endorsement key's public key; its SHA-256 (PKIX DER) becomes
	// the URI urn:ek:sha256:<base64>, which the step CLI looks for before it
	// reuses a cached AK certificate.
	EK crypto.PublicKey
	// AK is the certified attestation key.
	AK crypto.PublicKey
	// TPM manufacturer, model and version for the TPM SAN (directoryName),
	// which step-ca requires to be non-empty.
	TPMManufacturer, TPMModel, TPMVersion string
	// Serial is chosen by the caller (NewSerial), so it can be committed
	// before the certificate exists.
	Serial *big.Int
	// Validity; 0 means AKValidity.
	Validity time.Duration
}

// EKURI is the URI an AK certificate carries for its EK, computed exactly
// as the step CLI does (cautils generateKeyID and ekURL): "urn:ek:sha256:"
// and the standard base64 of SHA-256 over the EK's PKIX DER.
func EKURI(ek crypto.PublicKey) (*url.URL, error) {
	der, err := x509.MarshalPKIXPublicKey(ek)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public key: %v", errAKProfile, err)
	}
	sum := sha256.Sum256(der)
	return &url.URL{Scheme: "urn", Opaque: "ek:sha256:" + base64.StdEncoding.EncodeToString(sum[:])}, nil
}

// IssueAK signs an AK certificate with the AK CA, in the shape step-ca's
// device-attest-01 "tpm" format accepts: version 3, empty subject, first
// EKU tcg-kp-AIKCertificate (2.23.133.8.3), a critical SAN extension with
// the TPM directoryName, the PermanentIdentifier (the device ID) and the EK
// URI, not a CA. It returns the AK certificate followed by the AK CA.
//
// Guarantees: the certificate names exactly p's device and EK, and no
// Gatehouse identity (no SPIFFE ID, no issuance-path mark); it chains only
// to the AK CA. Non-guarantees: it is not recorded anywhere by this
// function (the caller commits the serial first), and step-ca checks
// neither revocation nor the device's state from it.
func (c *CA) IssueAK(p AKProfile) ([]*x509.Certificate, error) {
	if !idRE.MatchString(p.DeviceID) {
		return nil, fmt.Errorf("%w: device ID %q", errAKProfile, p.DeviceID)
	}
	if p.Serial == nil || p.Serial.Sign() <= 0 {
		return nil, fmt.Errorf("%w: a positive serial is required", errAKProfile)
	}
	if p.TPMManufacturer == "" || p.TPMModel == "" || p.TPMVersion == "" {
		return nil, fmt.Errorf("%w: TPM manufacturer, model and version are required", errAKProfile)
	}
	validity := p.Validity
	if validity == 0 {
		validity = AKValidity
	}
	if validity < 0 || validity > maxLeafValidity {
		return nil, fmt.Errorf("%w: validity %v", errAKProfile, validity)
	}
	ekURI, err := EKURI(p.EK)
	if err != nil {
		return nil, err
	}
	if p.AK == nil {
		return nil, fmt.Errorf("%w: no AK public key", errAKProfile)
	}
	san, err := akSAN(p, ekURI)
	if err != nil {
		return nil, err
	}
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{oidTCGKpAIKCertificate})
	if err != nil {
		return nil, err
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).Set(p.Serial),
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		ExtraExtensions: []pkix.Extension{
			// Critical: the subject is empty (RFC 5280 §4.2.1.6).
			{Id: oidExtSubjectAltName, Critical: true, Value: san},
			{Id: oidExtExtendedKeyUsage, Value: eku},
		},
	}
	if c.akCA.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = c.akCA.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.akCA, p.AK, c.akKey)
	if err != nil {
		return nil, fmt.Errorf("AK certificate: %w", err)
	}
	crt, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{crt, c.akCA}, nil
}

// akSAN encodes the GeneralNames of an AK certificate: a directoryName with
// the TPM attributes, an otherName PermanentIdentifier and the EK URI.
func akSAN(p AKProfile, ekURI *url.URL) ([]byte, error) {
	utf8 := func(s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagUTF8String, Bytes: []byte(s)}
	}
	rdn := pkix.RDNSequence{{
		{Type: oidTPMManufacturer, Value: utf8(p.TPMManufacturer)},
		{Type: oidTPMModel, Value: utf8(p.TPMModel)},
		{Type: oidTPMVersion, Value: utf8(p.TPMVersion)},
	}}
	rdnDER, err := asn1.Marshal(rdn)
	if err != nil {
		return nil, err
	}
	// PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String OPTIONAL,
	// assigner OBJECT IDENTIFIER OPTIONAL }, as the value of
	// OtherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }
	permID, err := asn1.MarshalWithParams(struct {
		Identifier string `asn1:"utf8"`
	}{p.DeviceID}, "explicit,tag:0")
	if err != nil {
		return nil, err
	}
	otherName, err := asn1.MarshalWithParams(struct {
		TypeID asn1.ObjectIdentifier
		Value  asn1.RawValue
	}{oidPermanentIdentifier, asn1.RawValue{FullBytes: permID}}, "tag:0") // otherName [0] IMPLICIT
	if err != nil {
		return nil, err
	}
	names := []asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: rdnDER}, // directoryName [4] EXPLICIT Name
		{FullBytes: otherName},
		{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(ekURI.String())}, // uniformResourceIdentifier [6] IA5String
	}
	return asn1.Marshal(names)
}
