package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	bolt "go.etcd.io/bbolt"
)

// SyntheticFleet describes a registry LoadSynthetic builds: Devices devices
// and Attestations records (one enrollment per device, then renewals and
// refusals) with times spread evenly over the Span before End.
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
// Commands, in time order, as the appliance proposes them: one
// enrollment.accept v3 per device (active with a certificate, or pending;
// its labels and flags travel in the command, the flags raised as the
// enroller raises anomalies), then the rest of the records round robin
// over the devices: every third one an attestation.reject with a code from
// syntheticCodes (pcr_mismatch most often), half of those from an
// unregistered EK (no device ID, no policy group); the others
// renewal.accept v3, or an attestation.reject for a pending device, which
// cannot renew. Every accepted or pending record carries its device's group
// as the deciding policy group. At End, device.transition commands by
// admin:operator-0 … operator-4 (operator) move the devices whose state is
// not active or pending there (deleted through revoked).
//
// Audit (optional, default none): that many more commands, spread over the
// Span between the records: in turn an audit.append admin.denied by
// admin:auditor-0 … auditor-2 (auditor) and a device.labels by an operator
// that sets a device's env label to the value it has. The chain also holds
// every entry the commands above append themselves.
type SyntheticFleet struct {
	Devices      int
	Attestations int
	Audit        int
	End          time.Time
	Span         time.Duration
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

// SyntheticIDBase is the first index LoadSynthetic applies at (so the first
// attestation ID): far above any Raft index a test reaches, so real records
// never collide with them.
const SyntheticIDBase = 1 << 40

// syntheticValidity is how long a synthetic certificate is valid.
const syntheticValidity = 90 * 24 * time.Hour

// commands hands emit the commands of fleet s in apply order, each with its
// time (the leader's clock when it was proposed); it stops at emit's first
// error.
func (s SyntheticFleet) commands(emit func(at time.Time, typ string, version int, payload any) error) error {
	if s.Attestations < s.Devices {
		return fmt.Errorf("%d records for %d devices: every device enrolls once", s.Attestations, s.Devices)
	}
	if s.Audit > 0 && s.Devices == 0 {
		return fmt.Errorf("audit commands need devices")
	}
	at := func(j int) time.Time {
		return s.End.Add(-s.Span).Add(time.Duration(float64(s.Span) * float64(j) / float64(max(s.Attestations, 1))))
	}
	extra := 0
	extras := func(j int, t time.Time, upTo int) error {
		for ; extra < upTo; extra++ {
			var err error
			if d := SyntheticDevice(j % s.Devices); extra%2 == 0 { // device j%Devices enrolled at or before record j
				err = emit(t, "audit.append", 1, &appendAuditCmd{Type: AuditAdminDenied, Actor: fmt.Sprintf("admin:auditor-%d(auditor)", extra/2%3),
					Subject: "/admin/v1/devices/" + d.ID + "/revoke", Detail: json.RawMessage(`{"role":"auditor","need":"operator"}`)})
			} else {
				err = emit(t, "device.labels", 1, &labelDevice{DeviceID: d.ID, Set: map[string]string{"env": d.Labels["env"]}, Actor: fmt.Sprintf("admin:operator-%d(operator)", extra/2%5)})
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	for j := 0; j < s.Attestations; j++ {
		t := at(j)
		if err := s.emitRecord(j, t, emit); err != nil {
			return err
		}
		if err := extras(j, t, min(s.Audit, (j+1)*s.Audit/s.Attestations)); err != nil {
			return err
		}
	}
	for i := 0; i < s.Devices; i++ {
		var ops []string
		switch SyntheticDevice(i).Status {
		case DeviceQuarantined:
			ops = []string{OpQuarantine}
		case DeviceDisabled:
			ops = []string{OpDisable}
		case DeviceRevoked:
			ops = []string{OpRevoke}
		case DeviceDeleted:
			ops = []string{OpRevoke, OpDelete}
		}
		for _, o := range ops {
			c := &transitionDevice{DeviceID: SyntheticDevice(i).ID, Op: o, Actor: fmt.Sprintf("admin:operator-%d(operator)", i%5), Reason: "synthetic"}
			if err := emit(s.End, "device.transition", 1, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// emitRecord emits the command that makes record j (time t).
func (s SyntheticFleet) emitRecord(j int, t time.Time, emit func(at time.Time, typ string, version int, payload any) error) error {
	d := SyntheticDevice(j % s.Devices)
	session, expires := fmt.Sprintf("synthetic-%d", j), t.Add(5*time.Minute)
	a := AttestationRecord{Time: t, Node: "n1", Stage: "complete", DeviceID: d.ID, Outcome: OutcomeAccepted, Evidence: Evidence{Nonce: "00"},
		Policy: &attest.Decision{PolicyVersion: 1, Group: d.Group, Mode: "auto", Passed: true}}
	notAfter := t.Add(syntheticValidity)
	issue := func() {
		a.CertificateSerial = fmt.Sprintf("5e%014x", j)
		a.CertificateNotBefore, a.CertificateNotAfter = t, notAfter
	}
	switch {
	case j < s.Devices: // the device's enrollment
		dev, flags := d, d.Flags
		dev.Flags = nil // raised by the command, as the enroller's anomalies are
		if d.Status == DevicePending {
			dev.Status, a.Outcome = DevicePending, OutcomePending
		} else {
			dev.Status = DeviceActive
			issue()
			dev.CertificateSerial, dev.CertificateNotAfter = a.CertificateSerial, notAfter
		}
		return emit(t, "enrollment.accept", 3, &acceptEnrollment{SessionID: session, SessionExpires: expires, Device: dev, Attestation: a, Flags: flags})
	case j%3 == 0 || d.Status == DevicePending: // refused; a pending device cannot renew
		a.Outcome, a.Code, a.Reason, a.Policy = OutcomeRejected, syntheticCodes[(j/3)%len(syntheticCodes)], "synthetic", nil
		if j%2 == 1 && d.Status != DevicePending {
			a.DeviceID = "" // an unregistered EK
		}
		return emit(t, "attestation.reject", 1, &rejectAttestation{SessionID: session, SessionExpires: expires, Attestation: a})
	default:
		a.Stage = "renew"
		issue()
		return emit(t, "renewal.accept", 3, &acceptRenewal{SessionID: session, SessionExpires: expires, Attestation: a, NotAfter: notAfter,
			Group: d.Group, Mode: "auto", PolicyVersion: 1})
	}
}

// LoadSynthetic builds fleet s in the registry of the node whose data
// directory is dataDir (the cluster's, which holds fsm.db) while the node
// is closed. Each command is encoded as the appliance proposes it, decoded
// as the FSM decodes a log entry, and applied by the FSM's own apply in
// transactions of many commands, as ApplyBatch applies a batch: devices,
// records, audit entries, sessions, query indexes and counters are what
// the commands make. A command the FSM refuses stops the load with its
// error.
//
// It bypasses the Raft log: for benchmarks and tests on a single node
// only. Other replicas see the records only through a snapshot, and the
// applied index does not move (the commands take indexes from
// SyntheticIDBase on, which are also the record IDs).
func LoadSynthetic(dataDir string, s SyntheticFleet) error {
	f, err := openFSM(filepath.Join(dataDir, "fsm.db"), func(error) {})
	if err != nil {
		return err
	}
	defer f.close()
	// One sync at the end instead of one per transaction: a load that
	// fails half way is thrown away anyway.
	f.db.NoSync = true
	type entry struct {
		cmd *command
		op  op
	}
	const batch = 1000
	// Commands are made, encoded and decoded on one goroutine while the
	// batch before is applied on this one, as a leader's encoding and a
	// replica's apply run apart.
	batches, free := make(chan []entry, 2), make(chan []entry, 4)
	for range 4 {
		free <- make([]entry, 0, batch)
	}
	stop := make(chan struct{})
	made := make(chan error, 1)
	go func() {
		defer close(batches)
		buf := <-free
		err := s.commands(func(at time.Time, typ string, version int, payload any) error {
			b, err := encodeCommand(typ, version, at.UTC(), payload)
			if err != nil {
				return err
			}
			c, o, err := decodeCommand(b)
			if err != nil {
				return err
			}
			if buf = append(buf, entry{c, o}); len(buf) == batch {
				select {
				case batches <- buf:
				case <-stop:
					return errors.New("stopped")
				}
				buf = (<-free)[:0]
			}
			return nil
		})
		if err == nil && len(buf) > 0 {
			batches <- buf
		}
		made <- err
	}()
	index := uint64(SyntheticIDBase)
	for buf := range batches {
		if err == nil {
			err = f.db.Update(func(tx *bolt.Tx) error {
				for _, e := range buf {
					if r := e.op.apply(tx, index, e.cmd.Time); r.Err != nil {
						return fmt.Errorf("%s v%d at index %d: %w", e.cmd.Type, e.cmd.Version, index, r.Err)
					}
					index++
				}
				return pruneSessions(tx, buf[len(buf)-1].cmd.Time)
			})
			if err != nil {
				close(stop)
			}
		}
		free <- buf
	}
	if mErr := <-made; err == nil {
		err = mErr
	}
	if err == nil {
		err = f.db.Sync()
	}
	if err != nil {
		return fmt.Errorf("load synthetic registry: %w", err)
	}
	return nil
}
