package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Device states.
const (
	DevicePending     = "pending"     // awaiting an operator's approval
	DeviceActive      = "active"      //
	DeviceDisabled    = "disabled"    // turned off by an operator; may be enabled again
	DeviceQuarantined = "quarantined" // failed re-attestation or raised an anomaly
	DeviceRevoked     = "revoked"     // certificates revoked; final
	DeviceDeleted     = "deleted"     // a tombstone kept for audit; final
)

// DeviceStates lists every device state, for validating filters and help.
func DeviceStates() []string {
	return []string{DevicePending, DeviceActive, DeviceDisabled, DeviceQuarantined, DeviceRevoked, DeviceDeleted}
}

// ErrUnknownState: a state filter names no device state.
var ErrUnknownState = errors.New("unknown device state")

// CheckDeviceState returns ErrUnknownState, naming the known states, unless
// s is one of them.
func CheckDeviceState(s string) error {
	if !slices.Contains(DeviceStates(), s) {
		return fmt.Errorf("%w %q (want one of %s)", ErrUnknownState, s, strings.Join(DeviceStates(), ", "))
	}
	return nil
}

// ErrIllegalTransition: the operation does not apply to the device's state.
var ErrIllegalTransition = errors.New("illegal device state transition")

// Device operations an operator (or the appliance) performs.
const (
	OpApprove    = "approve"
	OpDisable    = "disable"
	OpEnable     = "enable"
	OpQuarantine = "quarantine"
	OpDelete     = "delete"
	OpRevoke     = "revoke"
)

// transitions is the whole state machine: operation → states it applies to
// → resulting state. Anything else is refused.
var transitions = map[string]struct {
	from []string
	to   string
}{
	OpApprove:    {[]string{DevicePending}, DeviceActive},
	OpDisable:    {[]string{DevicePending, DeviceActive, DeviceQuarantined}, DeviceDisabled},
	OpEnable:     {[]string{DeviceDisabled, DeviceQuarantined}, DeviceActive},
	OpQuarantine: {[]string{DeviceActive}, DeviceQuarantined},
	OpDelete:     {[]string{DevicePending, DeviceActive, DeviceDisabled, DeviceQuarantined, DeviceRevoked}, DeviceDeleted},
	OpRevoke:     {[]string{DevicePending, DeviceActive, DeviceDisabled, DeviceQuarantined}, DeviceRevoked},
}

// Ops lists the operations, for help texts and tests.
func Ops() []string {
	out := make([]string, 0, len(transitions))
	for op := range transitions {
		out = append(out, op)
	}
	slices.Sort(out)
	return out
}

// Transition returns the state op leads to from state, or an error wrapping
// ErrIllegalTransition that says what op needs.
func Transition(state, op string) (string, error) {
	t, ok := transitions[op]
	if !ok {
		return "", fmt.Errorf("%w: unknown operation %q (want one of %v)", ErrIllegalTransition, op, Ops())
	}
	if !slices.Contains(t.from, state) {
		return "", fmt.Errorf("%w: cannot %s a device that is %s (only %v)", ErrIllegalTransition, op, state, t.from)
	}
	return t.to, nil
}

// StateChange is one entry of a device's history.
type StateChange struct {
	Time   time.Time `json:"time"`
	Op     string    `json:"op"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Actor  string    `json:"actor"`
	Reason string    `json:"reason"`
}

// transitionDevice applies one operation; the FSM checks legality against
// the state at apply time, so concurrent operators cannot race past it.
type transitionDevice struct {
	DeviceID string `json:"device_id"`
	Op       string `json:"op"`
	Actor    string `json:"actor"`
	Reason   string `json:"reason"`
}

func (c *transitionDevice) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	d, err := getDevice(tx, c.DeviceID)
	if err != nil {
		return applyResult{Err: err}
	}
	to, err := Transition(d.Status, c.Op)
	if err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Err: setState(tx, d, c.Op, to, c.Actor, c.Reason, at)}
}

func setState(tx *bolt.Tx, d Device, op, to, actor, reason string, at time.Time) error {
	ch := StateChange{Time: at, Op: op, From: d.Status, To: to, Actor: actor, Reason: reason}
	d.History = append(d.History, ch)
	d.Status = to
	if err := putDevice(tx, d); err != nil {
		return err
	}
	return appendAudit(tx, at, AuditDeviceState, actor, d.ID, ch)
}

// quarantine moves an active device to quarantined on the appliance's own
// authority (a failed renewal). A device in any other state keeps it.
func quarantine(tx *bolt.Tx, id string, at time.Time, reason string) error {
	d, err := getDevice(tx, id)
	if err != nil || d.Status != DeviceActive {
		return nil
	}
	return setState(tx, d, OpQuarantine, DeviceQuarantined, "gatehouse", reason, at)
}

// Repeated failures: FailureThreshold refusals for one device ID (one EK)
// within FailureWindow raise FlagRepeatedFailures once per window.
const (
	FailureThreshold = 5
	FailureWindow    = time.Hour
)

var bFailures = []byte("failures") // device ID → failureCount

type failureCount struct {
	WindowStart time.Time `json:"window_start"`
	Count       int       `json:"count"`
}

func countFailure(tx *bolt.Tx, a AttestationRecord, at time.Time) error {
	if a.DeviceID == "" {
		return nil
	}
	b := tx.Bucket(bFailures)
	var fc failureCount
	if v := b.Get([]byte(a.DeviceID)); v != nil {
		if err := json.Unmarshal(v, &fc); err != nil {
			return err
		}
	}
	if at.Sub(fc.WindowStart) > FailureWindow {
		fc = failureCount{WindowStart: at}
	}
	fc.Count++
	if err := putJSON(b, []byte(a.DeviceID), fc); err != nil {
		return err
	}
	if fc.Count != FailureThreshold {
		return nil
	}
	f := Flag{Name: FlagRepeatedFailures, Time: at, AttestationID: a.ID,
		Detail: fmt.Sprintf("%d refused attempts since %s; the last: %s", fc.Count, fc.WindowStart.Format(time.RFC3339), a.Code)}
	if d, err := getDevice(tx, a.DeviceID); err == nil {
		d.Flags = keepLast(append(d.Flags, f), MaxFlags)
		if err := putDevice(tx, d); err != nil {
			return err
		}
	}
	return appendAudit(tx, at, AuditDeviceFlag, "gatehouse", a.DeviceID, f)
}

// labelDevice sets and removes labels.
type labelDevice struct {
	DeviceID string            `json:"device_id"`
	Set      map[string]string `json:"set,omitempty"`
	Remove   []string          `json:"remove,omitempty"`
	Actor    string            `json:"actor"`
}

func (c *labelDevice) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	d, err := getDevice(tx, c.DeviceID)
	if err != nil {
		return applyResult{Err: err}
	}
	if d.Labels == nil {
		d.Labels = map[string]string{}
	}
	for k, v := range c.Set {
		d.Labels[k] = v
	}
	for _, k := range c.Remove {
		delete(d.Labels, k)
	}
	if err := putDevice(tx, d); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Err: appendAudit(tx, at, AuditDeviceLabels, c.Actor, d.ID, map[string]any{"set": c.Set, "remove": c.Remove, "labels": d.Labels})}
}

// ErrInvalidLabel: a label key or value the registry does not accept.
var ErrInvalidLabel = errors.New("invalid label")

var labelKeyRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]{0,62}[a-z0-9])?$`)

// ValidateLabels checks label keys and values.
func ValidateLabels(labels map[string]string) error {
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) || len(v) > 256 {
			return fmt.Errorf("%w: %q=%q (keys: lower-case letters, digits, . _ / -, up to 64; values up to 256 bytes)", ErrInvalidLabel, k, v)
		}
	}
	return nil
}

// LabelDevice sets (key=value) and removes labels on a device.
func (n *Node) LabelDevice(ctx context.Context, deviceID, actor string, set map[string]string, remove []string) (Device, error) {
	if err := ValidateLabels(set); err != nil {
		return Device{}, err
	}
	if _, err := n.apply(ctx, "device.labels", 1, &labelDevice{DeviceID: deviceID, Set: set, Remove: remove, Actor: actor}); err != nil {
		return Device{}, err
	}
	return n.Device(deviceID)
}

// configureDevice replaces a device's configuration override.
type configureDevice struct {
	DeviceID string          `json:"device_id"`
	Config   json.RawMessage `json:"config"`
	Actor    string          `json:"actor"`
}

func (c *configureDevice) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	d, err := getDevice(tx, c.DeviceID)
	if err != nil {
		return applyResult{Err: err}
	}
	d.Config = c.Config
	d.ConfigVersion++
	if err := putDevice(tx, d); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: uint64(d.ConfigVersion), Err: appendAudit(tx, at, AuditDeviceConfig, c.Actor, d.ID, map[string]any{"version": d.ConfigVersion, "config": c.Config})}
}

// ErrInvalidConfig: configuration must be a JSON object.
var ErrInvalidConfig = errors.New("configuration must be a JSON object")

// ConfigureDevice replaces a device's configuration override (a JSON
// object; {} clears it) and returns the device.
func (n *Node) ConfigureDevice(ctx context.Context, deviceID, actor string, config json.RawMessage) (Device, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(config, &obj); err != nil || obj == nil {
		return Device{}, ErrInvalidConfig
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, config); err != nil {
		return Device{}, ErrInvalidConfig
	}
	if _, err := n.apply(ctx, "device.config", 1, &configureDevice{DeviceID: deviceID, Config: buf.Bytes(), Actor: actor}); err != nil {
		return Device{}, err
	}
	return n.Device(deviceID)
}

// markStale flags devices that have not re-attested in time. The leader
// proposes the list; the FSM re-checks each against the same cutoff.
type markStale struct {
	DeviceIDs []string    `json:"device_ids"`
	Cutoffs   []time.Time `json:"cutoffs"`
}

func (c *markStale) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	for i, id := range c.DeviceIDs {
		d, err := getDevice(tx, id)
		if err != nil || d.Stale || d.Status != DeviceActive || !d.LastAttestedAt.Before(c.Cutoffs[i]) {
			continue
		}
		d.Stale = true
		f := Flag{Name: FlagStale, Time: at, Detail: "no re-attestation since " + d.LastAttestedAt.Format(time.RFC3339)}
		d.Flags = keepLast(append(d.Flags, f), MaxFlags)
		if err := putDevice(tx, d); err != nil {
			return applyResult{Err: err}
		}
		if err := appendAudit(tx, at, AuditDeviceFlag, "gatehouse", d.ID, f); err != nil {
			return applyResult{Err: err}
		}
	}
	return applyResult{}
}

// MarkStale marks active devices whose last attestation is before their
// cutoff (one per device).
func (n *Node) MarkStale(ctx context.Context, cutoffs map[string]time.Time) error {
	c := &markStale{}
	for id, t := range cutoffs {
		c.DeviceIDs = append(c.DeviceIDs, id)
		c.Cutoffs = append(c.Cutoffs, t)
	}
	if len(c.DeviceIDs) == 0 {
		return nil
	}
	_, err := n.apply(ctx, "device.stale", 1, c)
	return err
}

// TransitionDevice performs op on a device. Every operation needs an actor
// and a reason; an illegal one fails with ErrIllegalTransition and changes
// nothing.
func (n *Node) TransitionDevice(ctx context.Context, deviceID, op, actor, reason string) (Device, error) {
	if actor == "" || reason == "" {
		return Device{}, fmt.Errorf("%w: an actor and a reason are required", ErrIllegalTransition)
	}
	if _, err := n.apply(ctx, "device.transition", 1, &transitionDevice{DeviceID: deviceID, Op: op, Actor: actor, Reason: reason}); err != nil {
		return Device{}, err
	}
	return n.Device(deviceID)
}
