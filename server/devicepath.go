package server

import "github.com/gatehouse-dev/gatehouse/cluster"

// Enrollment paths: how a device got a certificate, derived from the stage
// of the accepted attestation record that reserved its serial. No record
// field says it, so records older builds committed answer the same.
const (
	// PathNative: gatehouse-agent, enrollment (stage complete) and renewal
	// (stage renew), with a quote.
	PathNative = "native"
	// PathACME: the step CLI, the attestation CA's AK certificate (stage
	// ak_certificate) and ACME device-attest-01 (stage acme), without a
	// quote.
	PathACME = "acme"
)

// stagePath is the enrollment path of an accepted record's stage; "" for a
// stage that issues nothing.
func stagePath(stage string) string {
	switch stage {
	case stageComplete, stageRenew:
		return PathNative
	case stageAKCertificate, stageACME:
		return PathACME
	}
	return ""
}

// StageDescription says, for people, what an accepted record of stage
// issued: the console's certificate rows.
func StageDescription(stage string) string {
	switch stage {
	case stageComplete:
		return "agent enrollment"
	case stageRenew:
		return "agent renewal"
	case stageACME:
		return "ACME device-attest"
	case stageAKCertificate:
		return "AK certificate from the attestation CA"
	}
	return stage
}

// PathDescription says, for people, what an enrollment path is.
func PathDescription(path string) string {
	switch path {
	case PathNative:
		return "native (gatehouse-agent)"
	case PathACME:
		return "ACME device-attest"
	}
	return path
}

// DeviceDetail is what GET /admin/v1/devices/{id} answers: the device and
// the enrollment paths it came through.
type DeviceDetail struct {
	cluster.Device
	// Path lists the enrollment paths (PathNative, PathACME) of the
	// device's accepted records, oldest first, a repeat of the previous
	// one left out: ["native"], ["acme"], or ["native", "acme"] for a
	// device the agent enrolled that then got a certificate through ACME.
	// The last is the path of its newest certificate. Empty for a device
	// with no accepted record (pending, or imported and never enrolled).
	// Only GET /admin/v1/devices/{id} has it: the list would read every
	// device's records.
	Path []string `json:"path"`
}

// devicePath is the Path of certificates as deviceSerials lists them
// (oldest first).
func devicePath(certs []DeviceCertificate) []string {
	out := []string{}
	for _, c := range certs {
		if c.Path != "" && (len(out) == 0 || out[len(out)-1] != c.Path) {
			out = append(out, c.Path)
		}
	}
	return out
}

// DeviceDetail returns a device with its enrollment paths.
func (a *Appliance) DeviceDetail(id string) (DeviceDetail, error) {
	dev, certs, err := a.deviceSerials(id)
	if err != nil {
		return DeviceDetail{}, err
	}
	return DeviceDetail{Device: dev, Path: devicePath(certs)}, nil
}
