package adversary_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/gatehouse-dev/gatehouse/api"
)

func sha1Sum(b []byte) []byte   { s := sha1.Sum(b); return s[:] }
func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
func sha384Sum(b []byte) []byte { s := sha512.Sum384(b); return s[:] }

// rsaTypedSignature is a TPMT_SIGNATURE of type RSASSA: what a crafted
// request puts where an ECDSA key's signature belongs.
func rsaTypedSignature() []byte {
	b, err := tpm2.Signature{Alg: tpm2.AlgRSASSA, RSA: &tpm2.SignatureRSA{HashAlg: tpm2.AlgSHA256, Signature: randomBytes(256)}}.Encode()
	if err != nil {
		panic(err)
	}
	return b
}

// eccSignature signs msg with a software key as a TPM would (TPMT_SIGNATURE).
func eccSignature(k *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	r, s, err := ecdsa.Sign(rand.Reader, k, sha256Sum(msg))
	if err != nil {
		return nil, err
	}
	return tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA256, R: r, S: s}}.Encode()
}

// eccPublic is a TPMT_PUBLIC for a software P-256 key claiming every
// attribute of a TPM-resident key; restricted makes it look like an AK.
func eccPublic(pub *ecdsa.PublicKey, restricted bool) tpm2.Public {
	attrs := tpm2.FlagSign | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth
	if restricted {
		attrs |= tpm2.FlagRestricted
	}
	return tpm2.Public{
		Type: tpm2.AlgECC, NameAlg: tpm2.AlgSHA256, Attributes: attrs,
		ECCParameters: &tpm2.ECCParams{
			Sign:    &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256},
			CurveID: tpm2.CurveNISTP256,
			Point:   tpm2.ECPoint{XRaw: pub.X.FillBytes(make([]byte, 32)), YRaw: pub.Y.FillBytes(make([]byte, 32))},
		},
	}
}

// softwareAK crafts AK parameters for a key that never was in a TPM: its
// TPMT_PUBLIC claims a restricted TPM key, the creation data is a made-up
// TPMS_CREATION_DATA, and the creation attestation is signed in software.
// real supplies the template of a genuine attestation (clock, firmware).
func softwareAK(real api.KeyParameters) (api.KeyParameters, error) {
	return paddedSoftwareAK(real, nil)
}

// paddedSoftwareAK is softwareAK whose creation data carries pad after the
// TPMS_CREATION_DATA, inside what the creation attestation hashes and signs.
func paddedSoftwareAK(real api.KeyParameters, pad []byte) (api.KeyParameters, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return api.KeyParameters{}, err
	}
	pub := eccPublic(&k.PublicKey, true)
	pubBytes, err := pub.Encode()
	if err != nil {
		return api.KeyParameters{}, err
	}
	name, err := pub.Name()
	if err != nil {
		return api.KeyParameters{}, err
	}
	parent := tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: randomBytes(32)}
	cd := tpm2.CreationData{
		PCRSelection:        tpm2.PCRSelection{Hash: tpm2.AlgSHA256},
		PCRDigest:           sha256Sum(nil),
		Locality:            1,
		ParentNameAlg:       tpm2.AlgSHA256,
		ParentName:          tpm2.Name{Digest: &parent},
		ParentQualifiedName: tpm2.Name{Digest: &parent},
	}
	cdBytes, err := cd.EncodeCreationData()
	if err != nil {
		return api.KeyParameters{}, err
	}
	cdBytes = append(cdBytes, pad...)
	att, err := tpm2.DecodeAttestationData(real.CreateAttestation)
	if err != nil {
		return api.KeyParameters{}, err
	}
	att.AttestedCreationInfo = &tpm2.CreationInfo{Name: name, OpaqueDigest: sha256Sum(cdBytes)}
	attBytes, err := att.Encode()
	if err != nil {
		return api.KeyParameters{}, err
	}
	sig, err := eccSignature(k, attBytes)
	if err != nil {
		return api.KeyParameters{}, err
	}
	return api.KeyParameters{Public: pubBytes, CreateData: cdBytes, CreateAttestation: attBytes, CreateSignature: sig}, nil
}

// softwareCSR is a CSR signed by a software key.
func softwareCSR(k crypto.Signer, tmpl *x509.CertificateRequest) ([]byte, error) {
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gatehouse-device"}}
	}
	return x509.CreateCertificateRequest(rand.Reader, tmpl, k)
}

// basicConstraintsCA is the CA:true extension a CSR can ask for.
func basicConstraintsCA() (pkix.Extension, error) {
	v, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}, err
}

// selfMadeEKCert issues, from a CA the attacker made, an EK certificate
// for pub (with the TCG EK EKU, so it looks right).
func selfMadeEKCert(pub crypto.PublicKey) ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Totally Real TPM Vendor CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, UnknownExtKeyUsage: []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}}}
	return x509.CreateCertificate(rand.Reader, leaf, ca, pub, caKey)
}

// foreignClientCert is a client certificate from a CA the appliance never
// saw, naming a real device's SPIFFE ID.
func foreignClientCert(spiffe string) (*tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Gatehouse Root CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(spiffe)
	if err != nil {
		return nil, err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "device"}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &k.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: k}, nil
}

// ekAreaFor is a TPM2B_PUBLIC in the shape of the default RSA-2048 EK
// (TCG template) for another RSA key.
func ekAreaFor(pub *rsa.PublicKey) ([]byte, error) {
	p := tpm2.Public{
		Type: tpm2.AlgRSA, NameAlg: tpm2.AlgSHA256,
		Attributes: tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagAdminWithPolicy | tpm2.FlagRestricted | tpm2.FlagDecrypt,
		AuthPolicy: []byte{0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA},
		RSAParameters: &tpm2.RSAParams{
			Symmetric: &tpm2.SymScheme{Alg: tpm2.AlgAES, KeyBits: 128, Mode: tpm2.AlgCFB},
			KeyBits:   2048, ModulusRaw: pub.N.Bytes(),
		},
	}
	b, err := p.Encode()
	if err != nil {
		return nil, err
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...), nil
}

// pcrList converts PCR values (index → digest) to the wire list.
func pcrList(bank string, m map[int][]byte) []api.PCR {
	var out []api.PCR
	for i := 0; i < 24; i++ {
		if d, ok := m[i]; ok {
			out = append(out, api.PCR{Index: i, Bank: bank, Digest: d})
		}
	}
	return out
}

func mustf(cond bool, format string, args ...any) error {
	if cond {
		return nil
	}
	return fmt.Errorf(format, args...)
}
