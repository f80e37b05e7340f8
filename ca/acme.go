package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"go.step.sm/crypto/x509util"
)

// ACMEProvisionerName is the one ACME provisioner: challenge
// device-attest-01, attestation format tpm, directory
// /acme/device-attest/directory.
const ACMEProvisionerName = "device-attest"

// ErrACMERefused: the ACME issuance hook, or the CAS's own checks, refused
// to sign.
var ErrACMERefused = errors.New("ACME issuance refused")

// ACMERequest is what the issuance hook is asked before an ACME certificate
// is signed. OrderID is the order step-ca finalizes (set by ACMEOrderMark
// on the finalize route, never by the client); PermanentIdentifiers are
// the permanent-identifier SANs step-ca's template put in the certificate
// (the order's identifier); CSR is the request whose key step-ca matched to
// the attested key.
type ACMERequest struct {
	OrderID              string
	PermanentIdentifiers []string
	CSR                  *x509.CertificateRequest
}

// ACMEHook decides an ACME certificate before it exists. It returns the
// device profile to sign with (device ID, serial, validity: NotBefore and
// NotAfter exactly when set, names) after it
// committed the record that reserves the serial, or an error: then nothing
// is signed. The error reaches the ACME client (an *acme.Error keeps its
// type and status).
type ACMEHook interface {
	ReserveACME(ctx context.Context, req ACMERequest) (DeviceProfile, error)
}

type acmeOptions struct {
	roots func(*CA) []*x509.Certificate
	hook  ACMEHook
}

// WithACME enables the ACME provisioner ACMEProvisionerName: roots (asked
// once, in Open, after the intermediate key is unlocked and before the
// step-ca authority starts; none is an error) are its only
// attestation roots (the AK CA), and hook decides every certificate it
// signs. Without this option there is no ACME provisioner.
func WithACME(roots func(*CA) []*x509.Certificate, hook ACMEHook) Option {
	return func(c *CA) { c.acme = acmeOptions{roots: roots, hook: hook} }
}

// ACMEKey is the 32-byte key the ACME database MACs its stateless nonces
// and object IDs with; every node that holds the intermediate derives the
// same one.
func (c *CA) ACMEKey() []byte { return deriveKey(c.signer, "gatehouse acme v1") }

// Authority is the step-ca authority, for mounting its ACME API.
func (c *CA) Authority() *authority.Authority { return c.auth }

// acmeAuthority configures the ACME provisioner in conf and returns the
// authority options that route its certificates through acmeCAS.
func (c *CA) acmeAuthority(conf *config.AuthConfig) ([]authority.Option, error) {
	var bundle []byte
	for _, r := range c.acme.roots(c) {
		if r != nil {
			bundle = append(bundle, pemCert(r)...)
		}
	}
	if len(bundle) == 0 {
		// e.g. a root derived in Open after the authority starts
		return nil, fmt.Errorf("ACME provisioner: no attestation roots")
	}
	conf.Provisioners = provisioner.List{&provisioner.ACME{
		Type:               provisioner.TypeACME.String(),
		Name:               ACMEProvisionerName,
		Challenges:         []provisioner.ACMEChallenge{provisioner.DEVICE_ATTEST_01},
		AttestationFormats: []provisioner.ACMEAttestationFormat{provisioner.TPM},
		AttestationRoots:   bundle,
	}}
	soft, err := softcas.New(context.Background(), apiv1.Options{Type: apiv1.SoftCAS, Signer: c.signer, CertificateChain: []*x509.Certificate{c.intermediate}})
	if err != nil {
		return nil, err
	}
	// After WithX509Signer, which also registers the intermediate: this
	// replaces only the service that signs.
	return []authority.Option{authority.WithX509CAService(&acmeCAS{SoftCAS: soft, c: c})}, nil
}

// acmeOrderOID marks, inside step-ca's signing path only, the order an ACME
// certificate is for. It is never in a signed certificate: acmeCAS takes it
// out with every other extension step-ca or the CSR put in. (The 2.999
// "example" arc: Gatehouse's own arc does not fit an asn1.ObjectIdentifier,
// and this OID is never emitted.)
var acmeOrderOID = asn1.ObjectIdentifier{2, 999, 125514506, 13, 1}

func isOrderMark(e pkix.Extension) bool { return e.Id.Equal(acmeOrderOID) }

// ACMEOrderMark is the sign option the ACME finalize route adds (through
// the provisioner's AuthorizeSign) so that acmeCAS knows which order it
// signs for. It replaces any mark the CSR carried.
func ACMEOrderMark(orderID string) provisioner.CertificateModifierFunc {
	return func(crt *x509.Certificate, _ provisioner.SignOptions) error {
		kept := crt.ExtraExtensions[:0:0]
		for _, e := range crt.ExtraExtensions {
			if !isOrderMark(e) {
				kept = append(kept, e)
			}
		}
		crt.ExtraExtensions = append(kept, pkix.Extension{Id: acmeOrderOID, Value: []byte(orderID)})
		return nil
	}
}

// acmeCAS is step-ca's SoftCAS on the intermediate, except for certificates
// of the ACME provisioner: those are device certificates, signed only after
// the hook committed their record, with the hook's serial and validity and
// the device shaping (CN = device ID, SPIFFE device URI, the device path
// mark, CRL distribution point) plus the permanent-identifier SAN. Every
// other field step-ca's ACME template or the CSR asked for is dropped.
type acmeCAS struct {
	*softcas.SoftCAS
	c *CA
}

func (s *acmeCAS) CreateCertificate(req *apiv1.CreateCertificateRequest) (*apiv1.CreateCertificateResponse, error) {
	if req.Provisioner == nil || req.Provisioner.Type != provisioner.TypeACME.String() {
		return s.SoftCAS.CreateCertificate(req) // native issuance: unchanged
	}
	if req.Template == nil || req.CSR == nil {
		return nil, fmt.Errorf("%w: no template or CSR", ErrACMERefused)
	}
	var orders []string
	var pids []string
	for _, e := range req.Template.ExtraExtensions {
		switch {
		case isOrderMark(e):
			orders = append(orders, string(e.Value))
		case e.Id.Equal(oidSAN):
			names, err := x509util.ParseSubjectAlternativeNames(&x509.Certificate{Extensions: []pkix.Extension{e}})
			if err != nil {
				return nil, fmt.Errorf("%w: template SANs: %v", ErrACMERefused, err)
			}
			for _, n := range names.PermanentIdentifiers {
				pids = append(pids, n.Identifier)
			}
		}
	}
	if len(orders) != 1 || len(pids) != 1 {
		return nil, fmt.Errorf("%w: want one order mark and one permanent identifier, have %d and %d", ErrACMERefused, len(orders), len(pids))
	}
	if s.c.acme.hook == nil {
		return nil, fmt.Errorf("%w: no issuance hook", ErrACMERefused)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := s.c.acme.hook.ReserveACME(ctx, ACMERequest{OrderID: orders[0], PermanentIdentifiers: pids, CSR: req.CSR})
	if err != nil {
		return nil, err
	}
	if p.DeviceID != pids[0] {
		return nil, fmt.Errorf("%w: the hook decided for device %q, the certificate names %q", ErrACMERefused, p.DeviceID, pids[0])
	}
	if err := s.c.CheckDevice(p); err != nil {
		return nil, err
	}
	san, err := deviceSAN(p)
	if err != nil {
		return nil, err
	}
	now := s.c.now()
	notBefore, notAfter := p.NotBefore, p.NotAfter
	if notBefore.IsZero() {
		notBefore, notAfter = DeviceValidity(now, p.Validity)
	}
	crt := req.Template
	crt.ExtraExtensions = nil
	s.c.shapeDevice(crt, p)
	crt.ExtraExtensions = []pkix.Extension{san}
	finish(crt, pathOIDs[PathDevice], notBefore, notAfter)
	req.Lifetime, req.Backdate = notAfter.Sub(notBefore), 0
	resp, err := s.SoftCAS.CreateCertificate(req)
	if err != nil {
		return nil, err
	}
	leaf := resp.Certificate
	if err := checkIssued(leaf, now, notBefore, notAfter, PathDevice); err != nil {
		return nil, err
	}
	if leaf.SerialNumber.Cmp(p.Serial) != 0 || leaf.Subject.CommonName != p.DeviceID {
		return nil, fmt.Errorf("%w: signed serial %x for %q, reserved %x for %q", ErrACMERefused, leaf.SerialNumber, leaf.Subject.CommonName, p.Serial, p.DeviceID)
	}
	return resp, nil
}

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// deviceSAN is the subjectAltName of an ACME device certificate: the
// permanent identifier (= device ID) that step-ca and the step CLI expect,
// and the device profile's URIs (the SPIFFE ID first) and DNS names. Go
// writes no SAN of its own when the template carries one, so all go here.
func deviceSAN(p DeviceProfile) (pkix.Extension, error) {
	sans := []x509util.SubjectAlternativeName{{Type: x509util.PermanentIdentifierType, Value: p.DeviceID}}
	for _, u := range p.uris() {
		sans = append(sans, x509util.SubjectAlternativeName{Type: x509util.URIType, Value: u.String()})
	}
	for _, d := range p.DNSNames {
		sans = append(sans, x509util.SubjectAlternativeName{Type: x509util.DNSType, Value: d})
	}
	var seq []byte
	for _, s := range sans {
		rv, err := s.RawValue()
		if err != nil {
			return pkix.Extension{}, err
		}
		b, err := asn1.Marshal(rv)
		if err != nil {
			return pkix.Extension{}, err
		}
		seq = append(seq, b...)
	}
	der, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: seq})
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidSAN, Value: der}, nil
}
