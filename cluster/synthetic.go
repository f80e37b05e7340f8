package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	bolt "go.etcd.io/bbolt"
)

// SyntheticFleet describes a registry LoadSynthetic writes: Devices devices
// and Attestations records (at least one accepted enrollment per device)
// with times spread evenly over the Span before End.
//
// The shape, deterministic in the device number i:
//   - ID: hex SHA-256 of "synthetic-i" (so ID order is not insertion order);
//   - state: active 80%, pending 8%, quarantined 5%, disabled 4%, revoked 2%,
//     deleted 1%;
//   - group: group-00 … group-19 round robin, except every 2000th device in
//     the rare group "canary";
//   - model (claimed): model-0 … model-9;
//   - labels: site=site-00 … site-49, rack=r000 … r499, env=prod (90%) or
//     env=staging;
//   - flags: stale 2%, repeated_failures 1%, possible_clone 0.5%,
//     reprovisioned 0.2%.
//
// Records: one enrollment per device (accepted, or pending for a pending
// device), then the rest round robin over the devices: every third one is
// rejected with a code from syntheticCodes (pcr_mismatch most often), half
// of those from an unregistered EK (no device ID, no policy group); the
// others are accepted renewals. Every accepted or pending record carries
// its device's group as the deciding policy group.
//
// Audit (optional, default none): that many audit entries, one hash chain
// from seq 1 (appended as apply appends them, with their indexes), times
// spread evenly over the Span, in groups of ten: seven mirror records
// round robin (enrollment.accepted/pending/rejected or renewal.accepted,
// actor device:ID or unauthenticated, with the record's summary), then a
// device.state and a device.labels by admin:operator-0 … operator-4
// (operator), and an admin.denied by admin:auditor-0 … auditor-2 (auditor).
// The chain holds no checkpoint.
type SyntheticFleet struct {
	Devices      int
	Attestations int
	Audit        int
	End          time.Time
	Span         time.Duration
}

// appendAuditEntry appends synthetic audit entry k (0-based) of fleet s.
func (s SyntheticFleet) appendAuditEntry(tx *bolt.Tx, k int, devs []Device) error {
	t := s.End.Add(-s.Span).Add(time.Duration(float64(s.Span) * float64(k) / float64(max(s.Audit, 1))))
	d := devs[k%len(devs)]
	switch r := k % 10; {
	case r < 7 && s.Attestations > 0:
		a := s.record((k/10*7+r)%s.Attestations, devs)
		typ, actor := AuditEnrollmentAccepted, "device:"+a.DeviceID
		switch {
		case a.Outcome == OutcomeRejected:
			typ = AuditEnrollmentRejected
			if a.DeviceID == "" {
				actor = "unauthenticated"
			}
		case a.Outcome == OutcomePending:
			typ = AuditEnrollmentPending
		case a.Stage == "renew":
			typ = AuditRenewalAccepted
		}
		return appendAudit(tx, t, typ, actor, a.DeviceID, attestationSummary(a))
	case r == 9:
		return appendAudit(tx, t, AuditAdminDenied, fmt.Sprintf("admin:auditor-%d(auditor)", k/10%3), "/admin/v1/devices/"+d.ID+"/revoke", map[string]string{"role": "auditor", "need": "operator"})
	case r == 8:
		return appendAudit(tx, t, AuditDeviceLabels, fmt.Sprintf("admin:operator-%d(operator)", k/10%5), d.ID, map[string]any{"set": d.Labels})
	default:
		return appendAudit(tx, t, AuditDeviceState, fmt.Sprintf("admin:operator-%d(operator)", k/10%5), d.ID, map[string]string{"op": OpQuarantine, "reason": "synthetic"})
	}
}

var syntheticStates = []struct {
	state string
	per1k int
}{{DeviceActive, 800}, {DevicePending, 80}, {DeviceQuarantined, 50}, {DeviceDisabled, 40}, {DeviceRevoked, 20}, {DeviceDeleted, 10}}

// syntheticCodes are the refusal codes of synthetic rejected records, the
// first ones repeated by how often they occur.
var syntheticCodes = []string{"pcr_mismatch", "pcr_mismatch", "pcr_mismatch", "policy_denied", "policy_denied", "ek_untrusted", "quote_nonce_mismatch", "event_log_invalid", "activation_failed", "reprovision_refused"}

// SyntheticDevice is device i of a SyntheticFleet.
func SyntheticDevice(i int) Device {
	sum := sha256.Sum256([]byte(fmt.Sprintf("synthetic-%d", i)))
	d := Device{ID: hex.EncodeToString(sum[:]), Status: DeviceActive, Group: fmt.Sprintf("group-%02d", i%20), Mode: "auto", PolicyVersion: 1,
		Claims: Claims{Model: fmt.Sprintf("model-%d", i%10), Serial: fmt.Sprintf("SN%08d", i)},
		EK:     EKInfo{PublicSHA256: hex.EncodeToString(sum[:]), Manufacturer: "SYN"}}
	if i%2000 == 0 {
		d.Group = "canary"
	}
	r := (i * 7919) % 1000 // a spread independent of the group
	for _, s := range syntheticStates {
		if r < s.per1k {
			d.Status = s.state
			break
		}
		r -= s.per1k
	}
	env := "prod"
	if i%10 == 9 {
		env = "staging"
	}
	d.Labels = map[string]string{"site": fmt.Sprintf("site-%02d", i%50), "rack": fmt.Sprintf("r%03d", i%500), "env": env}
	f := (i * 104729) % 1000
	switch {
	case f < 20:
		d.Flags = []Flag{{Name: FlagStale, Detail: "synthetic"}}
	case f < 30:
		d.Flags = []Flag{{Name: FlagRepeatedFailures, Detail: "synthetic"}}
	case f < 35:
		d.Flags = []Flag{{Name: FlagPossibleClone, Detail: "synthetic"}}
	case f < 37:
		d.Flags = []Flag{{Name: FlagReprovisioned, Detail: "synthetic"}}
	}
	return d
}

// SyntheticIDBase is the first attestation ID LoadSynthetic uses: far above
// any Raft index a test reaches, so real records never collide with them.
const SyntheticIDBase = 1 << 40

// syntheticRecord is record j (0-based) of fleet s.
func (s SyntheticFleet) record(j int, devs []Device) AttestationRecord {
	t := s.End.Add(-s.Span).Add(time.Duration(float64(s.Span) * float64(j) / float64(max(s.Attestations, 1))))
	a := AttestationRecord{ID: SyntheticIDBase + uint64(j), Time: t, Node: "n1", Stage: "complete", Evidence: Evidence{Nonce: "00"}}
	d := devs[j%len(devs)]
	switch {
	case j < len(devs):
		a.Outcome = OutcomeAccepted
		if d.Status == DevicePending {
			a.Outcome = OutcomePending
		}
	case j%3 == 0:
		a.Outcome, a.Code, a.Reason = OutcomeRejected, syntheticCodes[(j/3)%len(syntheticCodes)], "synthetic"
		if j%2 == 0 {
			a.DeviceID = d.ID
		}
		return a
	default:
		a.Outcome, a.Stage = OutcomeAccepted, "renew"
	}
	a.DeviceID = d.ID
	a.Policy = &attest.Decision{PolicyVersion: 1, Group: d.Group, Mode: "auto", Passed: true}
	return a
}

// LoadSynthetic writes fleet s into the registry of the node whose data
// directory is dataDir (the cluster's, which holds fsm.db) while the node
// is closed, through the same writes (and index maintenance) as apply.
//
// It bypasses Raft (and writes audit entries only when s.Audit asks for
// them, not for its devices and records): for benchmarks and tests on a single
// node only. Other replicas never see the records, and the state hash
// differs from theirs. Record IDs start at SyntheticIDBase; the applied
// index does not move.
func LoadSynthetic(dataDir string, s SyntheticFleet) error {
	f, err := openFSM(filepath.Join(dataDir, "fsm.db"), func(error) {})
	if err != nil {
		return err
	}
	defer f.close()
	devs := make([]Device, s.Devices)
	for i := range devs {
		devs[i] = SyntheticDevice(i)
	}
	const batch = 20000
	if s.Audit > 0 && s.Devices == 0 {
		return fmt.Errorf("load synthetic registry: audit entries need devices")
	}
	for lo := 0; lo < max(s.Devices, s.Attestations, s.Audit); lo += batch {
		err := f.db.Update(func(tx *bolt.Tx) error {
			for i := lo; i < lo+batch && i < s.Devices; i++ {
				d := devs[i]
				d.EnrolledAt = s.End.Add(-s.Span)
				d.LastAttestationID = SyntheticIDBase + uint64(i)
				if err := putDevice(tx, d); err != nil {
					return err
				}
			}
			for j := lo; j < lo+batch && j < s.Attestations; j++ {
				if err := putAttestation(tx, s.record(j, devs)); err != nil {
					return err
				}
			}
			for k := lo; k < lo+batch && k < s.Audit; k++ {
				if err := s.appendAuditEntry(tx, k, devs); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("load synthetic registry: %w", err)
		}
	}
	return nil
}
