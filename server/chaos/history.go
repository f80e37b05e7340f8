package chaos

// The linearizability check (history.go, model.go, workload.go): a
// Workload drives concurrent clients against every node (enrollments,
// device state transitions, revocations, linearizable reads of device
// state, join tokens), a History records each operation with its
// invocation and completion times on one monotonic clock, and Check tests
// the history with porcupine (github.com/anishathalye/porcupine) against
// RegistryModel, a sequential specification of the registry written from
// its documented behaviour, not from its code. See model.go for how each
// answer is read: which errors prove an operation had no effect, and which
// leave its outcome unknown. (The package comment is in doc.go.)

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Kind is what an operation does.
type Kind string

// Operation kinds.
const (
	KindEnroll       Kind = "enroll"        // a device enrolls (fwclient.Client.Enroll)
	KindTransition   Kind = "transition"    // an operator's lifecycle operation (disable, enable, revoke, ...)
	KindRead         Kind = "read"          // a linearizable read of one device (GET /admin/v1/devices/{id})
	KindTokenCreate  Kind = "token-create"  // a one-time join token is made
	KindTokenConsume Kind = "token-consume" // POST /cluster/v1/join: the token is spent
	KindTokenCheck   Kind = "token-check"   // POST /cluster/v1/join/check: would the token be accepted?
)

// Input is what an operation asked.
type Input struct {
	Kind Kind
	// Device is the device slot (Workload.Devices index) for device
	// operations; the history is checked per slot.
	Device int
	// Op is the lifecycle operation of a transition (cluster.Op*).
	Op string
	// Token is the join token's ID (not its secret), for token operations;
	// the history is checked per token.
	Token string
	// Node is the index of the target the operation was sent to (for
	// reports only).
	Node int
}

// Outcome is how an operation ended, as far as its client can know.
type Outcome string

const (
	// OK: the operation took effect (or, for a read, answered).
	OK Outcome = "ok"
	// Refused: the cluster decided against it at a point it linearizes
	// (an FSM refusal at apply, a check after a linearizable read), so the
	// refusal says something about the state then; Code says what.
	Refused Outcome = "refused"
	// NoEffect: it failed in a way that proves it changed nothing, but its
	// answer says nothing about the state (a connection refused before
	// anything was sent, a 429, a refusal judged on a possibly stale local
	// read). Check leaves such operations out.
	NoEffect Outcome = "no-effect"
	// Unknown: it may or may not have taken effect (a timeout, a reset
	// connection, a 5xx or 503 after the write may have been proposed). Its
	// completion is taken as never: it may take effect at any time after
	// its invocation, or not at all.
	Unknown Outcome = "unknown"
)

// Output is what an operation's client saw.
type Output struct {
	Outcome Outcome
	// Code is the problem code of a refusal (api.Code*).
	Code string
	// DeviceID is the ID an enrollment or a read returned.
	DeviceID string
	// Status is the device state a read returned, or the state an
	// enrollment answered with (active, or pending).
	Status string
	// AttestationID and Serial are an acknowledged enrollment's record and
	// certificate serial (hex), for durability checks beside the
	// linearizability check (every acknowledged record must be present on
	// every node afterwards); the model does not read them.
	AttestationID uint64
	Serial        string
	// Err is the client's error, for NoEffect and Unknown (reports only).
	Err string
}

// Op is one recorded operation. Call and Return are on the history's
// monotonic clock, from its start; an operation that had not returned
// when the history was read has Outcome Unknown.
type Op struct {
	Client int
	Input  Input
	Output Output
	Call   time.Duration
	Return time.Duration
}

func (o Op) String() string {
	s := fmt.Sprintf("client %d [%v, %v] %s", o.Client, o.Call, o.Return, describeInput(o.Input))
	return s + " -> " + describeOutput(o.Output)
}

// History records operations from concurrent clients. Times are taken from
// one monotonic clock (time.Since of its start), so they order events
// across goroutines even when the wall clock steps.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
	done  []bool
}

// NewHistory starts an empty history; its clock starts now.
func NewHistory() *History { return &History{start: time.Now()} }

// Call is an operation that was invoked and has not returned yet.
type Call struct {
	h *History
	i int
}

// Invoke records that client invokes in now. Take the time before sending
// anything: an invocation recorded late could make a legal history look
// illegal. Every Call must be completed (Return) once, when the client has
// its answer.
func (h *History) Invoke(client int, in Input) Call {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, Op{Client: client, Input: in, Call: time.Since(h.start)})
	h.done = append(h.done, false)
	return Call{h: h, i: len(h.ops) - 1}
}

// Return records the operation's answer, timed now.
func (c Call) Return(out Output) {
	now := time.Since(c.h.start)
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if c.h.done[c.i] {
		panic("chaos: an operation returned twice")
	}
	c.h.ops[c.i].Output, c.h.ops[c.i].Return, c.h.done[c.i] = out, now, true
}

// Ops returns a copy of the operations, in invocation order. One still in
// flight is Unknown.
func (h *History) Ops() []Op {
	now := time.Since(h.start)
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Op, len(h.ops))
	copy(out, h.ops)
	for i := range out {
		if !h.done[i] {
			out[i].Output = Output{Outcome: Unknown, Err: "still in flight when the history was read"}
			out[i].Return = now
		}
	}
	return out
}

// Append adds a finished operation as is (fabricated histories in tests,
// or histories recorded elsewhere).
func (h *History) Append(op Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
	h.done = append(h.done, true)
}

// op returns the operation c records, as recorded so far.
func (h *History) op(c Call) Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ops[c.i]
}

// setToken completes c's input with the token ID its answer named.
func (h *History) setToken(c Call, id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops[c.i].Input.Token = id
}

// Enrollments returns the acknowledged enrollments among ops (Outcome OK,
// with a certificate): what a durability check must find on every node.
func Enrollments(ops []Op) []Op {
	var out []Op
	for _, op := range ops {
		if op.Input.Kind == KindEnroll && op.Output.Outcome == OK && op.Output.Serial != "" {
			out = append(out, op)
		}
	}
	return out
}

// WriteOps writes ops as JSON lines (one Op each, times in nanoseconds),
// for a history to be checked again, or read, after the run.
func WriteOps(w io.Writer, ops []Op) error {
	enc := json.NewEncoder(w)
	for _, op := range ops {
		if err := enc.Encode(op); err != nil {
			return err
		}
	}
	return nil
}

// ReadOps reads what WriteOps wrote.
func ReadOps(r io.Reader) ([]Op, error) {
	var ops []Op
	dec := json.NewDecoder(r)
	for {
		var op Op
		if err := dec.Decode(&op); err == io.EOF {
			return ops, nil
		} else if err != nil {
			return ops, fmt.Errorf("history line %d: %w", len(ops)+1, err)
		}
		ops = append(ops, op)
	}
}
