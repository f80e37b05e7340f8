package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
)

// fab builds fabricated histories: times in milliseconds.
type fab struct{ ops []Op }

func (f *fab) add(client int, in Input, out Output, call, ret int) *fab {
	f.ops = append(f.ops, Op{Client: client, Input: in, Output: out, Call: time.Duration(call) * time.Millisecond, Return: time.Duration(ret) * time.Millisecond})
	return f
}

func enroll(dev int) Input                { return Input{Kind: KindEnroll, Device: dev} }
func transition(dev int, op string) Input { return Input{Kind: KindTransition, Device: dev, Op: op} }
func read(dev int) Input                  { return Input{Kind: KindRead, Device: dev} }
func token(k Kind, id string) Input       { return Input{Kind: k, Token: id} }

func ok() Output                     { return Output{Outcome: OK} }
func enrolled(id string) Output      { return Output{Outcome: OK, DeviceID: id, Status: stateActive} }
func state(id, status string) Output { return Output{Outcome: OK, DeviceID: id, Status: status} }
func refused(code string) Output     { return Output{Outcome: Refused, Code: code} }
func unknown() Output                { return Output{Outcome: Unknown, Err: "timeout"} }

func check(t *testing.T, ops []Op, vis string) CheckResult {
	t.Helper()
	res, err := Check(ops, 10*time.Second, vis)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.TimedOut) > 0 {
		t.Fatalf("the check timed out: %+v", res)
	}
	return res
}

// Each anomaly the checker exists for, fabricated, is found, in the
// partition it happened in (device 1; device 0's operations are legal);
// the same history made legal is accepted. A control that passed both
// ways would prove nothing.
func TestCheckerControls(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
	// background is a legal history of device 0 beside every case.
	background := func() *fab {
		f := &fab{}
		f.add(9, enroll(0), enrolled(b), 0, 10)
		f.add(9, transition(0, "disable"), ok(), 11, 20)
		f.add(9, read(0), state(b, stateDisabled), 21, 30)
		return f
	}
	for _, tc := range []struct {
		name       string
		bad, legal func(f *fab)
		partition  string
	}{{
		name: "stale read after an acknowledged state change",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(0, transition(1, "disable"), ok(), 20, 30)
			f.add(1, read(1), state(a, stateActive), 40, 50) // the disable completed before it began
		},
		legal: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(0, transition(1, "disable"), ok(), 20, 30)
			f.add(1, read(1), state(a, stateActive), 25, 50) // concurrent with the disable: may precede it
			f.add(1, read(1), state(a, stateDisabled), 51, 60)
		},
		partition: "device 1",
	}, {
		name: "two device IDs acknowledged for one TPM",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(0, enroll(1), enrolled(b), 20, 30)
		},
		legal: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(0, enroll(1), enrolled(a), 20, 30)
		},
		partition: "device 1",
	}, {
		name: "a join token spent twice",
		bad: func(f *fab) {
			f.add(0, token(KindTokenCreate, "t1"), ok(), 0, 10)
			f.add(0, token(KindTokenConsume, "t1"), ok(), 20, 30)
			f.add(1, token(KindTokenConsume, "t1"), ok(), 25, 40) // concurrent, but only one may win
		},
		legal: func(f *fab) {
			f.add(0, token(KindTokenCreate, "t1"), ok(), 0, 10)
			f.add(0, token(KindTokenConsume, "t1"), ok(), 20, 30)
			f.add(1, token(KindTokenConsume, "t1"), refused(api.CodeJoinTokenUsed), 25, 40)
		},
		partition: "token t1",
	}, {
		name: "a join token accepted by a check after it was spent",
		bad: func(f *fab) {
			f.add(0, token(KindTokenCreate, "t1"), ok(), 0, 10)
			f.add(0, token(KindTokenConsume, "t1"), ok(), 20, 30)
			f.add(1, token(KindTokenCheck, "t1"), ok(), 31, 40)
		},
		legal: func(f *fab) {
			f.add(0, token(KindTokenCreate, "t1"), ok(), 0, 10)
			f.add(1, token(KindTokenCheck, "t1"), ok(), 11, 19)
			f.add(0, token(KindTokenConsume, "t1"), ok(), 20, 30)
			f.add(1, token(KindTokenCheck, "t1"), refused(api.CodeJoinTokenUsed), 31, 40)
		},
		partition: "token t1",
	}, {
		name: "a made token refused as unknown by a spend",
		bad: func(f *fab) {
			f.add(0, token(KindTokenCreate, "t1"), ok(), 0, 10)
			f.add(1, token(KindTokenConsume, "t1"), refused(api.CodeJoinTokenInvalid), 20, 30)
		},
		legal: func(f *fab) {
			f.add(1, token(KindTokenConsume, "t1"), refused(api.CodeJoinTokenInvalid), 0, 5)
			f.add(0, token(KindTokenCreate, "t1"), ok(), 0, 10)
		},
		partition: "token t1",
	}, {
		name: "an enrollment acknowledged for a disabled device",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "disable"), ok(), 20, 30)
			f.add(0, enroll(1), enrolled(a), 40, 50)
		},
		legal: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "disable"), ok(), 20, 30)
			f.add(0, enroll(1), refused(api.CodeDeviceInactive), 40, 50)
			f.add(1, transition(1, "enable"), ok(), 51, 60)
			f.add(0, enroll(1), enrolled(a), 61, 70)
		},
		partition: "device 1",
	}, {
		name: "a revoked device enabled again",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "revoke"), ok(), 20, 30)
			f.add(1, transition(1, "enable"), ok(), 40, 50)
		},
		legal: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "revoke"), ok(), 20, 30)
			f.add(1, transition(1, "enable"), refused(api.CodeIllegalTransition), 40, 50)
			f.add(1, transition(1, "revoke"), ok(), 51, 60) // completes an interrupted revocation
			f.add(1, transition(1, "delete"), ok(), 61, 70)
			f.add(1, read(1), state(a, stateDeleted), 71, 80)
		},
		partition: "device 1",
	}, {
		name: "a refusal the state did not call for",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "disable"), refused(api.CodeIllegalTransition), 20, 30)
		},
		legal: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "enable"), refused(api.CodeIllegalTransition), 20, 30)
		},
		partition: "device 1",
	}, {
		name: "a registered device read as not found",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, read(1), refused(api.CodeNotFound), 20, 30)
		},
		legal: func(f *fab) {
			f.add(1, read(1), refused(api.CodeNotFound), 0, 30)
			f.add(0, enroll(1), enrolled(a), 0, 10)
		},
		partition: "device 1",
	}, {
		// An indeterminate disable may take effect at any time after its
		// call, or never, but once: active again after disabled needs an
		// enable.
		name: "an indeterminate operation taking effect twice",
		bad: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "disable"), unknown(), 20, 25)
			f.add(0, read(1), state(a, stateDisabled), 40, 50)
			f.add(0, read(1), state(a, stateActive), 60, 70)
		},
		legal: func(f *fab) {
			f.add(0, enroll(1), enrolled(a), 0, 10)
			f.add(1, transition(1, "disable"), unknown(), 20, 25)
			f.add(0, read(1), state(a, stateActive), 40, 50)
			f.add(0, read(1), state(a, stateDisabled), 60, 70)
		},
		partition: "device 1",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := background()
			tc.bad(f)
			vis := t.TempDir()
			res := check(t, f.ops, vis)
			if res.Linearizable || !slices.Equal(res.Illegal, []string{tc.partition}) {
				t.Fatalf("anomaly not found where it is: %+v", res)
			}
			if b, err := os.ReadFile(res.Visualization); err != nil || !strings.Contains(string(b), "<html") {
				t.Fatalf("visualization %q: %v", res.Visualization, err)
			}
			// The history written beside it reads back whole and fails again.
			hf, err := os.Open(filepath.Join(vis, "history.jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			again, err := ReadOps(hf)
			hf.Close()
			if err != nil || !slices.Equal(again, f.ops) {
				t.Fatalf("history read back: %v (%d of %d operations)", err, len(again), len(f.ops))
			}
			if res := check(t, again, ""); !slices.Equal(res.Illegal, []string{tc.partition}) {
				t.Fatalf("history read back checks differently: %+v", res)
			}
			f = background()
			tc.legal(f)
			if res := check(t, f.ops, vis); !res.Linearizable || len(res.Illegal) != 0 || res.Visualization != "" {
				t.Fatalf("legal history refused: %+v", res)
			}
		})
	}
}

// NoEffect operations are left out, Unknown ones counted and kept.
func TestCheckCounts(t *testing.T) {
	f := &fab{}
	f.add(0, enroll(0), enrolled("x"), 0, 10)
	f.add(1, transition(0, "disable"), unknown(), 11, 12)
	f.add(1, transition(0, "disable"), Output{Outcome: NoEffect, Err: "connection refused"}, 13, 14)
	f.add(2, read(0), state("x", stateDisabled), 20, 30)
	res := check(t, f.ops, "")
	if !res.Linearizable || res.Ops != 3 || res.Indeterminate != 1 || res.NoEffect != 1 || res.Partitions != 1 || res.ByKind[KindTransition] != 1 {
		t.Fatalf("%+v", res)
	}
	if got := res.String(); got != "linearizable=yes ops=3" {
		t.Fatal(got)
	}
	// Undecided is not "yes": a run whose check timed out proves nothing.
	if got := (CheckResult{Ops: 5, TimedOut: []string{"device 1"}}).String(); got != "linearizable=unknown ops=5" {
		t.Fatal(got)
	}
	if got := (CheckResult{Ops: 5, Illegal: []string{"device 2"}, TimedOut: []string{"device 1"}}).String(); got != "linearizable=no ops=5" {
		t.Fatal(got)
	}
}

// What each kind of answer proves (model.go: Outcomes).
func TestClassifyError(t *testing.T) {
	problem := func(status int, code string) error {
		return fmt.Errorf("complete: %w", &api.Problem{Status: status, Code: code})
	}
	refusedConn := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		kind Kind
		err  error
		want Outcome
	}{
		{KindTransition, nil, OK},
		{KindTransition, problem(409, api.CodeIllegalTransition), Refused},
		{KindTransition, problem(404, api.CodeNotFound), Refused},
		{KindTransition, problem(503, api.CodeUnavailable), Unknown},  // the entry may commit after all
		{KindTransition, problem(500, api.CodeInternal), Unknown},     // e.g. revoked, serials not yet
		{KindTransition, problem(400, api.CodeMalformed), NoEffect},   // decided before proposing
		{KindTransition, problem(429, api.CodeRateLimited), NoEffect}, // admission, before anything
		{KindTransition, context.DeadlineExceeded, Unknown},
		{KindTransition, io.ErrUnexpectedEOF, Unknown},
		{KindTransition, fmt.Errorf("admin socket: %w", refusedConn), NoEffect}, // never sent
		{KindTransition, fmt.Errorf("dial unix: %w", os.NewSyscallError("connect", syscall.ENOENT)), NoEffect},
		{KindEnroll, problem(403, api.CodeDeviceInactive), Refused},
		{KindEnroll, problem(403, api.CodePolicyDenied), NoEffect}, // a refused record changes no device
		{KindEnroll, problem(503, api.CodeUnavailable), Unknown},
		{KindEnroll, fmt.Errorf("complete: %w", syscall.ECONNRESET), Unknown},
		{KindRead, problem(404, api.CodeNotFound), Refused},
		{KindRead, problem(503, api.CodeUnavailable), NoEffect}, // a failed read tells nothing
		{KindRead, context.DeadlineExceeded, NoEffect},
		{KindTokenConsume, problem(403, api.CodeJoinTokenUsed), Refused},
		{KindTokenConsume, problem(403, api.CodeJoinTokenInvalid), Refused},
		{KindTokenConsume, problem(403, api.CodeJoinTokenExpired), NoEffect},
		{KindTokenConsume, problem(503, api.CodeUnavailable), Unknown},
		{KindTokenCheck, problem(403, api.CodeJoinTokenUsed), Refused},
		{KindTokenCheck, problem(403, api.CodeJoinTokenInvalid), NoEffect}, // answered from a possibly stale replica
	} {
		if got := ClassifyError(tc.kind, tc.err); got.Outcome != tc.want {
			t.Errorf("%s %v: %s, want %s", tc.kind, tc.err, got.Outcome, tc.want)
		}
	}
}

// simRegistry is an imperative registry, written apart from the model, to
// answer simulated operations at their linearization points.
type simRegistry struct {
	status map[int]string
	tokens map[string]string // "" unused, "used"
}

func (s *simRegistry) apply(in Input) Output {
	switch in.Kind {
	case KindEnroll:
		switch st := s.status[in.Device]; st {
		case "", stateActive:
			s.status[in.Device] = stateActive
			return enrolled(fmt.Sprintf("id-%d", in.Device))
		default:
			return refused(api.CodeDeviceInactive)
		}
	case KindTransition:
		st := s.status[in.Device]
		if st == "" {
			return refused(api.CodeNotFound)
		}
		next := map[string]map[string]string{
			"disable":    {statePending: stateDisabled, stateActive: stateDisabled, stateQuarantined: stateDisabled},
			"enable":     {stateDisabled: stateActive, stateQuarantined: stateActive},
			"quarantine": {stateActive: stateQuarantined},
			"revoke":     {statePending: stateRevoked, stateActive: stateRevoked, stateDisabled: stateRevoked, stateQuarantined: stateRevoked, stateRevoked: stateRevoked},
			"delete":     {statePending: stateDeleted, stateActive: stateDeleted, stateDisabled: stateDeleted, stateQuarantined: stateDeleted, stateRevoked: stateDeleted},
			"approve":    {statePending: stateActive},
		}[in.Op][st]
		if next == "" {
			return refused(api.CodeIllegalTransition)
		}
		s.status[in.Device] = next
		return ok()
	case KindRead:
		if st := s.status[in.Device]; st != "" {
			return state(fmt.Sprintf("id-%d", in.Device), st)
		}
		return refused(api.CodeNotFound)
	case KindTokenCreate:
		s.tokens[in.Token] = ""
		return ok()
	case KindTokenConsume, KindTokenCheck:
		u, made := s.tokens[in.Token]
		switch {
		case !made:
			return refused(api.CodeJoinTokenInvalid)
		case u == "used":
			return refused(api.CodeJoinTokenUsed)
		}
		if in.Kind == KindTokenConsume {
			s.tokens[in.Token] = "used"
		}
		return ok()
	}
	panic(in.Kind)
}

// simulate makes a linearizable history of n operations by clients
// concurrent clients: each operation takes effect at a random point of its
// interval, and one in unknownIn is indeterminate (its effect applied or
// dropped at random).
func simulate(rnd *rand.Rand, clients, devices, n, unknownIn int) []Op {
	type simOp struct {
		Op
		at    time.Duration
		apply bool
	}
	var ops []simOp
	tokens := []string{"t0", "t1", "t2"}
	for i, tok := range tokens { // made first, by client 0
		ops = append(ops, simOp{Op: Op{Client: 0, Input: token(KindTokenCreate, tok), Call: time.Duration(3 * i), Return: time.Duration(3*i + 2)}, at: time.Duration(3*i + 1), apply: true})
	}
	next := make([]time.Duration, clients)
	for c := range next {
		next[c] = 10
	}
	ops1 := []string{"disable", "enable", "enable", "quarantine", "revoke", "delete", "approve"}
	for range n {
		c := rnd.IntN(clients)
		var in Input
		switch d := rnd.IntN(devices); rnd.IntN(5) {
		case 0:
			in = enroll(d)
		case 1, 2:
			in = transition(d, ops1[rnd.IntN(len(ops1))])
			if in.Op == "delete" && rnd.IntN(8) != 0 || in.Op == "revoke" && rnd.IntN(4) != 0 {
				in.Op = "disable" // keep devices alive most of the run
			}
		case 3:
			in = read(d)
		default:
			in = token([]Kind{KindTokenConsume, KindTokenCheck, KindTokenCheck}[rnd.IntN(3)], tokens[rnd.IntN(len(tokens))])
		}
		call := next[c] + time.Duration(rnd.IntN(5))
		ret := call + 1 + time.Duration(rnd.IntN(40))
		next[c] = ret + 1
		ops = append(ops, simOp{Op: Op{Client: c, Input: in, Call: call, Return: ret}, at: call + time.Duration(rnd.Int64N(int64(ret-call)+1)), apply: true})
	}
	// Indeterminate ones: their effect happens at their point, or never.
	for i := len(tokens); i < len(ops); i++ {
		if rnd.IntN(unknownIn) == 0 {
			ops[i].Output.Outcome = Unknown
			ops[i].apply = rnd.IntN(2) == 0
		}
	}
	order := make([]int, len(ops))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return int(ops[a].at - ops[b].at) })
	reg := &simRegistry{status: map[int]string{}, tokens: map[string]string{}}
	for _, i := range order {
		if ops[i].Output.Outcome == Unknown {
			if ops[i].apply {
				reg.apply(ops[i].Input)
			}
			ops[i].Output.Err = "simulated timeout"
			continue
		}
		ops[i].Output = reg.apply(ops[i].Input)
	}
	out := make([]Op, len(ops))
	for i, o := range ops {
		out[i] = o.Op
	}
	return out
}

// Simulated histories, linearizable by construction, with indeterminate
// operations, are accepted, in reasonable time; one wrong answer planted in
// each is found: a second device ID, a join token spent twice.
func TestCheckerSimulatedRegistry(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for round := range 6 {
		// The last round is a run where one operation in three timed out
		// (nodes paused for long): a harder search.
		ops := simulate(rnd, 8, 4, 3000, map[bool]int{false: 20, true: 3}[round == 5])
		t0 := time.Now()
		res := check(t, ops, "")
		if !res.Linearizable {
			t.Fatalf("round %d: a linearizable history refused: %+v", round, res)
		}
		if took := time.Since(t0); took > 10*time.Second {
			t.Errorf("round %d: the check took %v", round, took)
		}
		if res.Indeterminate == 0 || res.Ops != len(ops) {
			t.Fatalf("round %d: %+v", round, res)
		}
		t.Logf("round %d: %s in %v, %d indeterminate", round, res, time.Since(t0).Round(time.Millisecond), res.Indeterminate)

		plant := func(what string, match func(Op) bool, wrong Output, partition func(Op) string) {
			bad := slices.Clone(ops)
			var seen int
			for i := range bad {
				if match(bad[i]) {
					if seen++; seen == 2 { // the second: the first one alone may be right
						bad[i].Output = wrong
						res := check(t, bad, "")
						if res.Linearizable || !slices.Equal(res.Illegal, []string{partition(bad[i])}) {
							t.Fatalf("round %d: %s not found: %+v", round, what, res)
						}
						return
					}
				}
			}
			t.Fatalf("round %d: nothing to plant %s in", round, what)
		}
		plant("a second device ID", func(o Op) bool { return o.Input.Kind == KindEnroll && o.Output.Outcome == OK },
			enrolled("another-id"), func(o Op) string { return partitionKey(o.Input) })
		plant("a token spent twice", func(o Op) bool {
			return o.Input.Kind == KindTokenConsume && o.Output.Outcome == Refused && o.Output.Code == api.CodeJoinTokenUsed
		}, ok(), func(o Op) string { return partitionKey(o.Input) })
	}
}
