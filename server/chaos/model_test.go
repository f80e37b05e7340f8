package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
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
	if res.TimedOut {
		t.Fatal("the check timed out on a tiny history")
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
