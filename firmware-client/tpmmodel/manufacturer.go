package tpmmodel

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"time"
)

// TPM attributes the model's EK certificates carry in their SAN. The
// manufacturer and version are swtpm's (so policies that match swtpm
// devices match model devices); the model name says what the device is,
// so a registry filled by a load test shows it.
const (
	DefaultTPMManufacturer = "id:00001014"
	DefaultTPMModel        = "tpmmodel"
	DefaultTPMVersion      = "id:20191023"
)

var (
	oidSubjectAltName    = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidSubjectDirAttrs   = asn1.ObjectIdentifier{2, 5, 29, 9}
	oidTPMManufacturer   = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel          = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion        = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidTPMSpecification  = asn1.ObjectIdentifier{2, 23, 133, 2, 16}
	oidEKCertificateEKU  = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	ekCertificateNoAfter = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC) // as swtpm_localca, RFC 5280 "no expiry"
)

// Manufacturer issues the model's EK certificates, as swtpm_localca does
// for swtpm: with the EK CA of a test manufacturer (for example
// firmware-client/swtpm's Manufacturer: its Intermediate and SigningKey),
// so a cluster initialised to trust that manufacturer trusts model EKs.
// It is safe for concurrent use once its fields are set.
type Manufacturer struct {
	CA  *x509.Certificate // issues EK certificates
	Key crypto.Signer     // CA's key
	// TPM attributes written in the SAN; empty means the Default values.
	TPMManufacturer, TPMModel, TPMVersion string
}

// NewManufacturer returns a Manufacturer issuing with ca and its key.
func NewManufacturer(ca *x509.Certificate, key crypto.Signer) (*Manufacturer, error) {
	if ca == nil || key == nil {
		return nil, errors.New("tpmmodel: a manufacturer needs its EK CA certificate and key")
	}
	return &Manufacturer{CA: ca, Key: key}, nil
}

type utf8ATV struct {
	Type  asn1.ObjectIdentifier
	Value string `asn1:"utf8"`
}

// tpmName is the directoryName of a TCG EK certificate's SAN: one RDN per
// attribute, UTF8String values (as swtpm_localca and vendors write it).
type tpmName struct {
	Manufacturer []utf8ATV `asn1:"set"`
	Model        []utf8ATV `asn1:"set"`
	Version      []utf8ATV `asn1:"set"`
}

type tpmSpecification struct {
	Family   string `asn1:"utf8"`
	Level    int
	Revision int
}

type tpmSpecAttribute struct {
	Type   asn1.ObjectIdentifier
	Values []tpmSpecification `asn1:"set"`
}

// certificate issues an EK certificate for pub: the extensions of
// swtpm_localca's (critical SAN with the TPM attributes, EK EKU, critical
// CA:FALSE, TPM specification 2.0 level 0 revision 164, authority key ID,
// critical key usage keyEncipherment for RSA or keyAgreement for ECC).
func (m *Manufacturer) certificate(pub crypto.PublicKey, ecc bool) ([]byte, error) {
	def := func(s, d string) string {
		if s == "" {
			return d
		}
		return s
	}
	name, err := asn1.Marshal(tpmName{
		Manufacturer: []utf8ATV{{oidTPMManufacturer, def(m.TPMManufacturer, DefaultTPMManufacturer)}},
		Model:        []utf8ATV{{oidTPMModel, def(m.TPMModel, DefaultTPMModel)}},
		Version:      []utf8ATV{{oidTPMVersion, def(m.TPMVersion, DefaultTPMVersion)}},
	})
	if err != nil {
		return nil, err
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	if err != nil {
		return nil, err
	}
	sda, err := asn1.Marshal([]tpmSpecAttribute{{Type: oidTPMSpecification, Values: []tpmSpecification{{Family: "2.0", Level: 0, Revision: 164}}}})
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageKeyEncipherment
	if ecc {
		usage = x509.KeyUsageKeyAgreement
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "unknown"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              ekCertificateNoAfter,
		KeyUsage:              usage,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidEKCertificateEKU},
		BasicConstraintsValid: true,
		ExtraExtensions: []pkix.Extension{
			{Id: oidSubjectAltName, Critical: true, Value: san},
			{Id: oidSubjectDirAttrs, Value: sda},
		},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, m.CA, pub, m.Key)
}
