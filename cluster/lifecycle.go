package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// ErrIllegalTransition: the operation does not apply to the device's state.
var ErrIllegalTransition = errors.New("illegal device state transition")

// Device operations an operator (or the appliance) performs.
const (
	OpApprove    = "approve"
	OpDisable    = "disable"
	OpEnable     = "enable"
	OpQuarantine = "quarantine"
	OpDelete     = "delete"
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
	d.History = append(d.History, StateChange{Time: at, Op: c.Op, From: d.Status, To: to, Actor: c.Actor, Reason: c.Reason})
	d.Status = to
	return applyResult{Err: putJSON(tx.Bucket(bDevices), []byte(d.ID), d)}
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
