package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	stepacme "github.com/smallstep/certificates/acme"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// stageACME names the attestation record of an ACME issuance.
const stageACME = "acme"

// WithACMEAttestationRoots replaces the ACME provisioner's attestation
// roots, by default the AK CA (the attestation CA's, the only issuer of
// AK certificates): tests certify AKs with a CA of their own.
func WithACMEAttestationRoots(roots func(*ca.CA) []*x509.Certificate) Option {
	return func(o *options) { o.acmeRoots = roots }
}

// akCARoots makes the AK CA the ACME provisioner's only attestation root.
func akCARoots(c *ca.CA) []*x509.Certificate { return []*x509.Certificate{c.AKCA()} }

// acmeIssuer is the server side of ACME: the Gate of the ACME database
// (who may order) and the CA's ACME hook (the record before the
// certificate). Its fields are set once the enroller exists, before the
// device API serves.
type acmeIssuer struct {
	e  *Enroller
	db *acme.DB
}

// MayOrder admits an order for a device the registry does not know yet,
// and for a known device that is active and whose deciding group admits
// ACME (attest.Policy.ACMEGroup, as the attestation CA judges). An unknown
// ID is admitted because the step CLI orders before it asks the
// attestation CA, which registers a new device; the order costs nothing
// (stateless) and ReserveACME refuses it unless the registry knows the
// device, active, by finalize. It reads the registry and writes nothing.
//
// An identifier without the form of a device ID (attest.DeviceID: 32
// lowercase hex digits) names no device and is refused before the
// registry is read: admitted, it would make the stateless order IDs, and
// a failed challenge this node caches, as large as the client likes.
func (h *acmeIssuer) MayOrder(_ context.Context, deviceID string) error {
	if !deviceIDForm(deviceID) {
		return stepacme.NewDetailedError(stepacme.ErrorRejectedIdentifierType,
			"%v: %.40q is not a Gatehouse device ID (32 lowercase hex digits: the first 128 bits of the SHA-256 of the EK public key)", errACMEDevice, deviceID)
	}
	if _, err := h.e.reg.Device(deviceID); errors.Is(err, cluster.ErrNotFound) {
		return nil
	}
	_, err := h.device(deviceID)
	return err
}

// deviceIDForm reports whether id has the form attest.DeviceID gives.
func deviceIDForm(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range []byte(id) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// errACMEDevice: the device may not get an ACME certificate.
var errACMEDevice = errors.New("device may not order an ACME certificate")

func (h *acmeIssuer) device(deviceID string) (cluster.Device, error) {
	d, err := h.e.reg.Device(deviceID)
	if errors.Is(err, cluster.ErrNotFound) {
		return d, stepacme.NewDetailedError(stepacme.ErrorUnauthorizedType,
			"%v: no device %q is registered (the identifier is the Gatehouse device ID; the attestation CA registers a new device)", errACMEDevice, deviceID)
	}
	if err != nil {
		return d, stepacme.WrapErrorISE(err, "read device")
	}
	if d.Status != cluster.DeviceActive {
		return d, stepacme.NewDetailedError(stepacme.ErrorUnauthorizedType, "%v: device %s is %s", errACMEDevice, d.ID, d.Status)
	}
	policy, err := h.e.policies.current()
	if err != nil {
		return d, stepacme.WrapErrorISE(err, "read policy")
	}
	// The group that decides for the device now, as at the attestation
	// CA (Enroller.acmeAdmissible): its registry labels and individual
	// enrollment, no boot state (ACME device-attest carries no quote).
	in := policyInput(d.ID, d.EK, d.Claims, d.Labels, nil, nil)
	if ie, err := h.e.reg.IndividualEnrollment(d.EK.PublicSHA256); err == nil {
		in.EnrolledGroup = ie.Group
	}
	if _, err := policy.ACMEGroup(in); err != nil {
		return d, stepacme.NewDetailedError(stepacme.ErrorUnauthorizedType, "%v: %v", errACMEDevice, err)
	}
	return d, nil
}

// ReserveACME is the CA's hook: for the order being finalized, it checks
// the device again, reserves a serial and commits the accepted "acme"
// record (a renewal of the active device) before the certificate exists.
// The record's session is derived from the order ID, so an order gets at
// most one certificate, whichever node finalizes it.
func (h *acmeIssuer) ReserveACME(ctx context.Context, req ca.ACMERequest) (ca.DeviceProfile, error) {
	e := h.e
	order, ok := h.db.Order(req.OrderID)
	if !ok || order.Identifier.Type != stepacme.PermanentIdentifier {
		return ca.DeviceProfile{}, stepacme.NewError(stepacme.ErrorMalformedType, "not an order of this appliance")
	}
	deviceID := order.Identifier.Value
	if len(req.PermanentIdentifiers) != 1 || req.PermanentIdentifiers[0] != deviceID {
		return ca.DeviceProfile{}, stepacme.NewError(stepacme.ErrorBadCSRType, "the certificate must name exactly the order's permanent identifier %q", deviceID)
	}
	if _, err := h.device(deviceID); err != nil {
		return ca.DeviceProfile{}, err
	}
	sum := sha256.Sum256([]byte(req.OrderID))
	sessionID := "acme-" + hex.EncodeToString(sum[:16])
	now := e.now()
	settings := e.conf.view().settings
	profile := ca.DeviceProfile{DeviceID: deviceID, TrustDomain: e.trustDomain, Validity: settings.CertValidity.Duration}
	serial, err := e.ca.NewSerial()
	if err != nil {
		return ca.DeviceProfile{}, stepacme.WrapErrorISE(err, "serial")
	}
	profile.Serial = serial
	decideValidity(&profile, e.ca.Now())
	if err := e.ca.CheckDevice(profile); err != nil {
		return ca.DeviceProfile{}, stepacme.WrapErrorISE(err, "device profile")
	}
	rec := cluster.AttestationRecord{Time: now, Node: e.nodeID, DeviceID: deviceID, SessionID: sessionID, Stage: stageACME,
		Outcome: cluster.OutcomeAccepted, CertificateSerial: serial.Text(16),
		Checks: []cluster.Check{{Name: "acme_device_attest", Passed: true,
			Detail: "device-attest-01 (tpm) verified by step-ca against the AK CA; CSR key is the attested key"}}}
	if sum, err := keySHA256(req.CSR); err == nil {
		rec.Evidence.DeviceKeySHA256 = sum
	}
	e.recordCertificate(ctx, &rec, profile)
	expires := order.Expires
	if !expires.After(now) {
		return ca.DeviceProfile{}, stepacme.NewError(stepacme.ErrorOrderNotReadyType, "order expired")
	}
	attID, err := e.reg.CommitRenewal(ctx, sessionID, expires, rec, profile.NotAfter)
	switch {
	case errors.Is(err, cluster.ErrSessionUsed):
		return ca.DeviceProfile{}, stepacme.NewError(stepacme.ErrorOrderNotReadyType, "order already has a certificate")
	case errors.Is(err, cluster.ErrDeviceInactive), errors.Is(err, cluster.ErrSessionExpired):
		return ca.DeviceProfile{}, stepacme.NewDetailedError(stepacme.ErrorUnauthorizedType, "%v", err)
	case err != nil:
		return ca.DeviceProfile{}, stepacme.WrapErrorISE(err, "commit")
	}
	e.issued.Add(1)
	e.metrics.certsDone.Inc()
	e.log.Info("device certificate issued through ACME", "device_id", deviceID, "attestation_id", attID, "serial", rec.CertificateSerial)
	return profile, nil
}

func keySHA256(csr *x509.CertificateRequest) (string, error) {
	if csr == nil {
		return "", errors.New("no CSR")
	}
	der, err := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// acmeRoute serves step-ca's ACME API and the read-only provisioner list
// (acme.Handler), or 404 when ACME is not enabled.
func (a *Appliance) acmeRoute(w http.ResponseWriter, r *http.Request) {
	if a.acme == nil {
		writeProblem(w, newProblem(http.StatusNotFound, api.CodeNotFound, "ACME is not enabled on this appliance"))
		return
	}
	a.acme.ServeHTTP(w, r)
}

// openACME builds the ACME database and handler once the enroller exists.
func (a *Appliance) openACME(h *acmeIssuer, kv ca.KV) error {
	db, err := acme.NewDB(ca.NoSQL(kv), a.ca.ACMEKey(), h)
	if err != nil {
		return fmt.Errorf("ACME database: %w", err)
	}
	h.e, h.db = a.enroller, db
	a.acmeDB = db
	a.acme = acme.Handler(a.ca.Authority(), db, a.publicAddr())
	return nil
}
