package server

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// authDevice authenticates an mTLS request as an enrolled device. The TLS
// layer has verified the chain to this appliance's CA; step-ca checks
// revocation only on its own renewals, so it is checked here, against the
// replicated revocation table after a linearizable read. The certificate
// must be one the registry issued to the device, and the device must be
// active (quarantined too, with allowQuarantined: it may still learn its
// state).
func (a *Appliance) authDevice(r *http.Request, allowQuarantined bool) (cluster.Device, *x509.Certificate, error) {
	leaf := verifiedLeaf(r, time.Now())
	if leaf == nil {
		return cluster.Device{}, nil, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, "a valid device certificate is required")
	}
	cid, err := a.identityOf(leaf, ca.PathDevice)
	if err != nil {
		return cluster.Device{}, nil, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, "the certificate is not a device certificate of this trust domain: "+err.Error())
	}
	id := cid.ID
	if err := a.node.Linearize(r.Context()); err != nil {
		return cluster.Device{}, nil, a.enroller.commitFailed(err)
	}
	revoked, err := a.ca.IsRevoked(leaf.SerialNumber)
	if err != nil {
		return cluster.Device{}, nil, a.enroller.internal(err)
	}
	if revoked {
		return cluster.Device{}, nil, newProblem(http.StatusUnauthorized, api.CodeCertificateRevoked, "certificate "+leaf.SerialNumber.Text(16)+" is revoked")
	}
	dev, err := a.node.Device(id)
	if errors.Is(err, cluster.ErrNotFound) {
		return cluster.Device{}, nil, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, "unknown device")
	} else if err != nil {
		return cluster.Device{}, nil, a.enroller.internal(err)
	}
	if !slices.Contains(dev.Serials, leaf.SerialNumber.Text(16)) {
		return cluster.Device{}, nil, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, "the registry has no record of issuing this certificate to "+id)
	}
	if dev.Status != cluster.DeviceActive && !(allowQuarantined && dev.Status == cluster.DeviceQuarantined) {
		return cluster.Device{}, nil, newProblem(http.StatusForbidden, api.CodeDeviceInactive, "device "+id+" is "+dev.Status)
	}
	return dev, leaf, nil
}

// whoami proves a device identity works: it is served only to a client that
// authenticated with a live certificate from this appliance's CA, whose key
// the device holds in its TPM.
func (a *Appliance) whoami(w http.ResponseWriter, r *http.Request) {
	dev, leaf, err := a.authDevice(r, true)
	if err != nil {
		writeProblem(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.WhoAmIResponse{DeviceID: dev.ID, Status: dev.Status, CertificateSerial: leaf.SerialNumber.Text(16)})
}

// deviceConfig serves GET /v1/config.
func (a *Appliance) deviceConfig(w http.ResponseWriter, r *http.Request) {
	dev, _, err := a.authDevice(r, false)
	if err != nil {
		writeProblem(w, err)
		return
	}
	resp, err := a.effectiveConfig(dev)
	writeResult(w, http.StatusOK, resp, err)
}

// effectiveConfig merges the device's override over its group's
// configuration in the policy in force.
func (a *Appliance) effectiveConfig(dev cluster.Device) (api.ConfigResponse, error) {
	p, err := a.enroller.policies.current()
	if err != nil {
		return api.ConfigResponse{}, a.enroller.internal(err)
	}
	var group json.RawMessage
	if g := p.GroupNamed(dev.Group); g != nil {
		group = g.Config
	}
	return api.ConfigResponse{DeviceID: dev.ID, Group: dev.Group, PolicyVersion: p.Version, DeviceVersion: dev.ConfigVersion, Configuration: mergeConfig(group, dev.Config)}, nil
}

// crl serves the CRL of everything revoked, to anyone: relying parties
// fetch it from the distribution point in device certificates. It comes
// from this node's replica through a cache refreshed when the replicated
// step-ca tables change: no leader round trip per request. A follower may
// lag the leader by the replication delay; a CRL is a snapshot anyway.
func (a *Appliance) crl(w http.ResponseWriter, r *http.Request) {
	der, err := a.cachedCRL(a.enroller.now())
	if err != nil {
		writeProblem(w, a.enroller.internal(err))
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Header().Set("Content-Length", strconv.Itoa(len(der)))
	w.Write(der)
}
