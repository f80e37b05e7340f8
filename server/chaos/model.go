package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/gatehouse-dev/gatehouse/api"
)

// The model: what a client may see, written from the registry's documented
// behaviour (README "Device states", cluster/DESIGN.md, server/DESIGN.md),
// not from its code, so that a bug in the code is not copied into the
// specification.
//
// State, per partition (one device slot, or one join token):
//   - a device: its state ("" = not registered) and the ID its first
//     acknowledged enrollment returned;
//   - a join token: made (its create was acknowledged) and used.
//
// Operations, as a linearizable registry would answer them:
//   - enroll OK(id): the device was unregistered or active (an enrollment
//     commits only for those: the FSM checks again at apply); it is active
//     now, and id is the one ID that TPM ever gets (the ID is derived from
//     the EK). OK with status pending (a group in approve mode) needs
//     unregistered, pending or active, and leaves it pending.
//   - enroll refused device_inactive: only "the device is registered". The
//     enroller looks at its own node's replica first (server/enroll.go,
//     judge), which may lag the log; a registration is never undone
//     (deleted is a tombstone), so a lagging replica that knows the device
//     is still right about that, and about nothing else.
//   - transition OK: the operation was legal in the state (lifecycle below),
//     which becomes its target; revoke of a revoked device is also OK (it
//     completes an interrupted revocation) and changes nothing.
//   - transition refused illegal_transition: the device is registered and
//     the operation is not legal in its state. The FSM decides at apply,
//     and revoke's "already revoked" path after a linearizable read, so
//     both are linearization points.
//   - transition or read refused not_found: the device is not registered
//     (the FSM decides at apply; a read is linearizable).
//   - read OK(status): the device is in that state.
//   - token create OK: the token exists, unused.
//   - token consume OK: it existed and was unused; it is used now.
//     Refused join_token_used: it is used. Refused join_token_invalid: it
//     does not exist (ConsumeJoinToken reads linearizably before it
//     proposes, and the FSM decides again at apply).
//   - token check OK: it exists and is unused (the check linearizes before
//     it answers yes). Refused join_token_used: it is used (a lagging
//     replica that says used is right: used is final). Its "invalid" is
//     NoEffect: a node answers it from its own replica without a
//     linearizable read, by design (server/cluster.go handleJoin: a
//     guessed token costs no Raft round trip).
//
// Outcomes (ClassifyError): what an error proves.
//   - OK and Refused as above.
//   - NoEffect, left out of the check: a request that was never sent (the
//     connection was refused, the admin socket is missing: the node is
//     down); 429 (admission refuses before anything); any other 4xx
//     problem of a write (malformed, unauthenticated, a policy refusal of
//     an enrollment: decided before proposing, or committed as a refused
//     attestation record, which changes no device state); a failed read
//     (it changed nothing and tells nothing).
//   - Unknown, completion at infinity (porcupine: it may be linearized at
//     any point after its invocation, including after every other
//     operation, which is "never took effect"; Check puts its return just
//     after the history's last event, which is the same): any 5xx (a 503 after a
//     leader stepped down may still commit what it had appended; a 500
//     after a delete or revoke committed, while revoking serials), a
//     timeout, a reset connection, a response that did not arrive whole,
//     and anything else not listed above. Treating an operation as
//     Unknown is always sound; only classifying an effect as NoEffect
//     could hide an anomaly, so that list is short and explicit.
//
// An Unknown step is deterministic: in a state where the operation is
// legal it takes effect, otherwise it is refused and changes nothing. An
// Unknown enrollment that takes effect leaves the ID unknown until an
// acknowledged one names it.
//
// Not seen by the check: anything the model does not keep (labels, flags,
// configuration, serial and attestation history: the durability check
// compares those records); what only NoEffect operations saw; and some
// 503s are Unknown although the node refused before proposing (no leader
// known): the answer does not say which, so the check is weaker there, not
// wrong.

// Device states (cluster.Device*, as the README documents them).
const (
	statePending     = "pending"
	stateActive      = "active"
	stateDisabled    = "disabled"
	stateQuarantined = "quarantined"
	stateRevoked     = "revoked"
	stateDeleted     = "deleted"
)

// lifecycle is the documented state machine (README, "Device states"):
// operation → the states it applies to → the state it leads to. Anything
// else is refused (illegal_transition) and changes nothing.
var lifecycle = map[string]struct {
	from []string
	to   string
}{
	"approve":    {[]string{statePending}, stateActive},
	"disable":    {[]string{statePending, stateActive, stateQuarantined}, stateDisabled},
	"enable":     {[]string{stateDisabled, stateQuarantined}, stateActive},
	"quarantine": {[]string{stateActive}, stateQuarantined},
	"revoke":     {[]string{statePending, stateActive, stateDisabled, stateQuarantined}, stateRevoked},
	"delete":     {[]string{statePending, stateActive, stateDisabled, stateQuarantined, stateRevoked}, stateDeleted},
}

// regState is the state of one partition: a device's fields or a token's.
type regState struct {
	Status   string // device state; "" = not registered
	DeviceID string // the ID the device's enrollments return; "" = not known yet
	Created  bool   // token: made
	Used     bool   // token: spent
}

// RegistryModel is the porcupine model of the registry. Its operations'
// inputs are Input and outputs Output; it partitions per device slot and
// per join token.
var RegistryModel = porcupine.Model{
	Partition: partitionOps,
	Init:      func() any { return regState{} },
	Step: func(state, input, output any) (bool, any) {
		return step(state.(regState), input.(Input), output.(Output))
	},
	Equal: func(a, b any) bool { return a.(regState) == b.(regState) },
	DescribeOperation: func(input, output any) string {
		return describeInput(input.(Input)) + " -> " + describeOutput(output.(Output))
	},
	DescribeState: func(state any) string {
		s := state.(regState)
		if s.Created || s.Used {
			return fmt.Sprintf("token made=%v used=%v", s.Created, s.Used)
		}
		if s.Status == "" {
			return "unregistered"
		}
		return s.Status + " " + short(s.DeviceID)
	},
}

func step(s regState, in Input, out Output) (bool, regState) {
	unknown := out.Outcome == Unknown
	switch in.Kind {
	case KindEnroll:
		legal := s.Status == "" || s.Status == stateActive
		switch {
		case unknown:
			if legal {
				s.Status = stateActive
			}
			return true, s
		case out.Outcome == OK && out.Status == statePending:
			if s.Status != "" && s.Status != statePending && s.Status != stateActive || !sameID(s, out.DeviceID) {
				return false, s
			}
			s.Status, s.DeviceID = statePending, out.DeviceID
			return true, s
		case out.Outcome == OK:
			if !legal || !sameID(s, out.DeviceID) {
				return false, s
			}
			s.Status, s.DeviceID = stateActive, out.DeviceID
			return true, s
		case out.Outcome == Refused && out.Code == api.CodeDeviceInactive:
			return s.Status != "", s
		}
	case KindTransition:
		t, known := lifecycle[in.Op]
		legal := known && slices.Contains(t.from, s.Status)
		again := in.Op == "revoke" && s.Status == stateRevoked
		switch {
		case unknown:
			if legal {
				s.Status = t.to
			}
			return true, s
		case out.Outcome == OK:
			if legal {
				s.Status = t.to
			}
			return legal || again, s
		case out.Outcome == Refused && out.Code == api.CodeIllegalTransition:
			return s.Status != "" && !legal && !again, s
		case out.Outcome == Refused && out.Code == api.CodeNotFound:
			return s.Status == "", s
		}
	case KindRead:
		switch {
		case unknown:
			return true, s
		case out.Outcome == OK:
			return s.Status != "" && s.Status == out.Status && sameID(s, out.DeviceID), s
		case out.Outcome == Refused && out.Code == api.CodeNotFound:
			return s.Status == "", s
		}
	case KindTokenCreate:
		if out.Outcome == OK || unknown {
			s.Created = true
			return true, s
		}
	case KindTokenConsume:
		usable := s.Created && !s.Used
		switch {
		case unknown:
			if usable {
				s.Used = true
			}
			return true, s
		case out.Outcome == OK:
			s.Used = true
			return usable, s
		case out.Outcome == Refused && out.Code == api.CodeJoinTokenUsed:
			return s.Used, s
		case out.Outcome == Refused && out.Code == api.CodeJoinTokenInvalid:
			return !s.Created, s
		}
	case KindTokenCheck:
		switch {
		case unknown:
			return true, s
		case out.Outcome == OK:
			return s.Created && !s.Used, s
		case out.Outcome == Refused && out.Code == api.CodeJoinTokenUsed:
			return s.Used, s
		}
	}
	// An outcome the model has no rule for is a bug in the recorder: fail
	// loudly rather than accept it.
	return false, s
}

func sameID(s regState, id string) bool { return s.DeviceID == "" || id == "" || s.DeviceID == id }

// partitionKey names the partition an operation belongs to.
func partitionKey(in Input) string {
	switch in.Kind {
	case KindTokenCreate, KindTokenConsume, KindTokenCheck:
		return "token " + in.Token
	}
	return "device " + strconv.Itoa(in.Device)
}

func partitionOps(ops []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, op := range ops {
		k := partitionKey(op.Input.(Input))
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], op)
	}
	sort.Strings(keys)
	out := make([][]porcupine.Operation, len(keys))
	for i, k := range keys {
		out[i] = byKey[k]
	}
	return out
}

// ClassifyError reads the error of an operation of kind k (nil is OK with
// nothing more to say; callers fill in what a success returned). See the
// model's comment for why each case is what it is.
func ClassifyError(k Kind, err error) Output {
	if err == nil {
		return Output{Outcome: OK}
	}
	out := Output{Err: err.Error()}
	var p *api.Problem
	switch {
	case errors.As(err, &p):
		out.Code = p.Code
		switch {
		case p.Status == http.StatusTooManyRequests:
			out.Outcome = NoEffect
		case p.Status >= 500 || p.Status == http.StatusMisdirectedRequest:
			out.Outcome = Unknown
		case k == KindRead:
			out.Outcome = refusedIf(p.Code == api.CodeNotFound)
		case k == KindTransition:
			out.Outcome = refusedIf(p.Code == api.CodeIllegalTransition || p.Code == api.CodeNotFound)
		case k == KindEnroll:
			out.Outcome = refusedIf(p.Code == api.CodeDeviceInactive)
		case k == KindTokenConsume:
			out.Outcome = refusedIf(p.Code == api.CodeJoinTokenUsed || p.Code == api.CodeJoinTokenInvalid)
		case k == KindTokenCheck:
			out.Outcome = refusedIf(p.Code == api.CodeJoinTokenUsed)
		default:
			out.Outcome = NoEffect
		}
	case neverSent(err):
		out.Outcome = NoEffect
	default:
		out.Outcome = Unknown
	}
	if out.Outcome == Unknown && (k == KindRead || k == KindTokenCheck) {
		out.Outcome = NoEffect // a read that failed changed nothing, and tells nothing
	}
	return out
}

func refusedIf(b bool) Outcome {
	if b {
		return Refused
	}
	return NoEffect
}

// neverSent: the request cannot have reached a server (no listener at the
// address, or no admin socket: the node is down).
func neverSent(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) || errors.Is(err, os.ErrNotExist)
}

// CheckResult is what Check found.
type CheckResult struct {
	// Linearizable: porcupine found a linearization of every partition.
	Linearizable bool
	// Ops is how many operations were checked (NoEffect ones are not);
	// Indeterminate how many of them were Unknown; NoEffect how many were
	// left out. Partitions is how many devices and tokens were checked.
	Ops, Indeterminate, NoEffect, Partitions int
	// ByKind counts checked operations per kind.
	ByKind map[Kind]int
	// Illegal names each partition that has no linearization ("device 3",
	// "token 5f0c..."); TimedOut each one the check could not decide in
	// time (Linearizable is then false too).
	Illegal, TimedOut []string
	// Visualization is the path of porcupine's HTML visualization of the
	// illegal partitions, written when there are some (and a directory
	// was given).
	Visualization string
}

// String is the summary for an invariants line: "linearizable=yes ops=N"
// ("no" when a partition is illegal, "unknown" when none is but one could
// not be decided in time).
func (r CheckResult) String() string {
	v := "no"
	switch {
	case r.Linearizable:
		v = "yes"
	case len(r.Illegal) == 0:
		v = "unknown"
	}
	return fmt.Sprintf("linearizable=%s ops=%d", v, r.Ops)
}

// Detail says what was checked, for a log line.
func (r CheckResult) Detail() string {
	var kinds []string
	for _, k := range []Kind{KindEnroll, KindTransition, KindRead, KindTokenCreate, KindTokenConsume, KindTokenCheck} {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, r.ByKind[k]))
	}
	s := fmt.Sprintf("%d operations checked (%s) over %d partitions, %d of them indeterminate; %d without effect left out",
		r.Ops, strings.Join(kinds, " "), r.Partitions, r.Indeterminate, r.NoEffect)
	if len(r.Illegal) > 0 {
		s += "; not linearizable: " + strings.Join(r.Illegal, ", ")
	}
	if len(r.TimedOut) > 0 {
		s += "; undecided in time: " + strings.Join(r.TimedOut, ", ")
	}
	if r.Visualization != "" {
		s += "; visualization: " + r.Visualization
	}
	return s
}

// Check tests ops for linearizability against RegistryModel. Each partition
// (device slot, join token) is checked on its own, all at once, each
// within timeout (0: none). When some are not linearizable and visDir is
// not empty, it writes porcupine's visualization of those to
// visDir/linearizability.html (taking up to timeout again), and the whole
// history to visDir/history.jsonl (WriteOps).
//
// Cost: a linearizable partition is decided greedily, in milliseconds for
// thousands of operations. An illegal one needs an exhaustive search,
// exponential in how many operations overlap; indeterminate ones overlap
// everything after their invocation, so a partition with many of them may
// end undecided (TimedOut) rather than Illegal.
func Check(ops []Op, timeout time.Duration, visDir string) (CheckResult, error) {
	res := CheckResult{ByKind: map[Kind]int{}}
	parts := partitionOps(porcupineOps(ops, &res))
	res.Partitions = len(parts)
	verdicts := make([]porcupine.CheckResult, len(parts))
	var wg sync.WaitGroup
	for i, part := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			verdicts[i] = porcupine.CheckOperationsTimeout(RegistryModel, part, timeout)
		}()
	}
	wg.Wait()
	var illegal []porcupine.Operation
	for i, v := range verdicts {
		key := partitionKey(parts[i][0].Input.(Input))
		switch v {
		case porcupine.Illegal:
			res.Illegal = append(res.Illegal, key)
			illegal = append(illegal, parts[i]...)
		case porcupine.Unknown:
			res.TimedOut = append(res.TimedOut, key)
		}
	}
	res.Linearizable = len(res.Illegal) == 0 && len(res.TimedOut) == 0
	if len(illegal) == 0 || visDir == "" {
		return res, nil
	}
	_, info := porcupine.CheckOperationsVerbose(RegistryModel, illegal, timeout)
	if err := os.MkdirAll(visDir, 0o755); err != nil {
		return res, err
	}
	// The whole history beside it, to check again or read (ReadOps).
	var buf bytes.Buffer
	if err := WriteOps(&buf, ops); err != nil {
		return res, err
	}
	if err := os.WriteFile(filepath.Join(visDir, "history.jsonl"), buf.Bytes(), 0o644); err != nil {
		return res, err
	}
	path := filepath.Join(visDir, "linearizability.html")
	if err := porcupine.VisualizePath(RegistryModel, info, path); err != nil {
		return res, fmt.Errorf("write the visualization: %w", err)
	}
	res.Visualization = path
	return res, nil
}

// porcupineOps converts the recorded operations: NoEffect ones are left
// out, and an Unknown one returns after everything else (never).
func porcupineOps(ops []Op, res *CheckResult) []porcupine.Operation {
	var end int64
	for _, op := range ops {
		end = max(end, int64(op.Call), int64(op.Return))
	}
	if end >= math.MaxInt64-1 {
		end = math.MaxInt64 - 1
	}
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		if op.Output.Outcome == NoEffect {
			res.NoEffect++
			continue
		}
		ret := int64(op.Return)
		if op.Output.Outcome == Unknown {
			res.Indeterminate++
			ret = end + 1
		}
		res.Ops++
		res.ByKind[op.Input.Kind]++
		out = append(out, porcupine.Operation{ClientId: op.Client, Input: op.Input, Call: int64(op.Call), Output: op.Output, Return: ret})
	}
	return out
}

func describeInput(in Input) string {
	switch in.Kind {
	case KindTransition:
		return fmt.Sprintf("%s device %d @node %d", in.Op, in.Device, in.Node)
	case KindTokenCreate, KindTokenConsume, KindTokenCheck:
		return fmt.Sprintf("%s %s @node %d", in.Kind, short(in.Token), in.Node)
	}
	return fmt.Sprintf("%s device %d @node %d", in.Kind, in.Device, in.Node)
}

func describeOutput(out Output) string {
	var b strings.Builder
	b.WriteString(string(out.Outcome))
	if out.Code != "" {
		b.WriteString(" " + out.Code)
	}
	if out.Status != "" {
		b.WriteString(" " + out.Status)
	}
	if out.DeviceID != "" {
		b.WriteString(" id=" + short(out.DeviceID))
	}
	if out.Err != "" && out.Outcome != Refused {
		e := out.Err
		if len(e) > 80 {
			e = e[:80] + "…"
		}
		b.WriteString(" (" + e + ")")
	}
	return b.String()
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
