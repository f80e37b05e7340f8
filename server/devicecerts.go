package server

import (
	"context"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// DeviceCertificate is one certificate issued to a device, as GET
// /admin/v1/devices/{id}/certificates lists it.
//
// The appliance does not keep device certificates (ca.authDB stores only
// admin certificates): it keeps what each accepted attestation record
// committed before the certificate was signed (the serial, and since the
// v3 accepts its validity, which the CA then signs exactly), the newest
// certificate's expiry on the device record, and step-ca's revocations.
// So a certificate committed by an older build (or while a member did not
// apply the v3 accepts) has no known notBefore, nor notAfter unless it is
// the current one; and a serial whose signing failed after its commit is
// listed, with the validity it would have had, though no certificate
// carries it.
type DeviceCertificate struct {
	Serial string `json:"serial"` // hex
	// AttestationID and Stage name the record that reserved the serial, and
	// Committed its time; zero for a serial known only from the device
	// record.
	AttestationID uint64    `json:"attestation_id,omitempty"`
	Stage         string    `json:"stage,omitempty"`
	Committed     time.Time `json:"committed,omitzero"`
	// Path is the enrollment path that issued it (PathNative, PathACME),
	// from Stage; empty for a serial known only from the device record.
	Path string `json:"path,omitempty"`
	// AK marks an AK certificate (stage ak_certificate): the attestation
	// CA's certificate for the TPM's attestation key, signed by the AK CA,
	// not a device certificate. It is never current and never
	// authenticates the device; revoking the device revokes it too.
	AK bool `json:"ak,omitempty"`
	// Current marks the device's newest certificate.
	Current bool `json:"current"`
	// NotBefore and NotAfter are the certificate's validity as its record
	// committed it; zero (absent) when not recorded, except the current
	// certificate's NotAfter, which the device record always keeps.
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// Revoked is step-ca's revocation table's answer for the serial (what
	// the CRL and mTLS checks use), not the device's state.
	Revoked bool `json:"revoked"`
}

// deviceSerials lists every serial issued to a device, oldest first: every
// accepted attestation record's, then any of the device record's newest
// serials that no record carries. Revocation revokes exactly these.
func (a *Appliance) deviceSerials(id string) (cluster.Device, []DeviceCertificate, error) {
	dev, err := a.node.Device(id)
	if err != nil {
		return cluster.Device{}, nil, err
	}
	recs, err := a.node.Attestations(cluster.AttestationQuery{DeviceID: id}) // newest first
	if err != nil {
		return cluster.Device{}, nil, err
	}
	var out []DeviceCertificate
	seen := map[string]bool{}
	for _, r := range slices.Backward(recs) {
		if r.Outcome == cluster.OutcomeAccepted && r.CertificateSerial != "" && !seen[r.CertificateSerial] {
			seen[r.CertificateSerial] = true
			out = append(out, DeviceCertificate{Serial: r.CertificateSerial, AttestationID: r.ID, Stage: r.Stage, Committed: r.Time,
				NotBefore: r.CertificateNotBefore, NotAfter: r.CertificateNotAfter, Path: stagePath(r.Stage), AK: r.Stage == stageAKCertificate})
		}
	}
	for _, s := range dev.Serials {
		if !seen[s] {
			seen[s] = true
			out = append(out, DeviceCertificate{Serial: s})
		}
	}
	return dev, out, nil
}

// DeviceCertificates lists the certificates issued to a device, oldest
// first, each with its recorded validity and step-ca's revoked status (see
// DeviceCertificate for what is and is not known about them).
func (a *Appliance) DeviceCertificates(id string) ([]DeviceCertificate, error) {
	dev, certs, err := a.deviceSerials(id)
	if err != nil {
		return nil, err
	}
	for i := range certs {
		c := &certs[i]
		serial, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("device %s: bad serial %q in the registry", id, c.Serial)
		}
		if c.Revoked, err = a.ca.IsRevoked(serial); err != nil {
			return nil, err
		}
		if c.Serial == dev.CertificateSerial {
			c.Current = true
			if c.NotAfter.IsZero() {
				c.NotAfter = dev.CertificateNotAfter
			}
		}
	}
	if certs == nil {
		certs = []DeviceCertificate{}
	}
	return certs, nil
}

func (a *Appliance) registerDeviceCertsAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	add(ca.RoleAuditor, "GET "+adminDevices+"/{id}/certificates", a.read(func(w http.ResponseWriter, r *http.Request) {
		certs, err := a.DeviceCertificates(r.PathValue("id"))
		writeResult(w, http.StatusOK, certs, a.adminErr(err))
	}))
}

// DeviceCertificates lists the certificates issued to a device, oldest
// first, with their recorded validity and revoked status.
func (c *AdminClient) DeviceCertificates(ctx context.Context, id string) ([]DeviceCertificate, error) {
	var certs []DeviceCertificate
	return certs, c.get(ctx, adminDevices+"/"+url.PathEscape(id)+"/certificates", &certs)
}
