package adversary_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
)

// TestAdversary plays every attack of attacks() against one live node with
// swtpm devices, each after its positive control, and ends with the line
//
//	adversary: tried=N refused=N issued=0 crashes=0 controls_ok=N/N
//
// An attack counts as refused only when the answer is a 4xx
// application/problem+json with a code (or, where that is the
// expectation, a refused TLS handshake, a connection the server gave
// up on, a finding of the offline audit verification, or, for a route
// that serves anyone, an answer below 500 with every invariant held), no
// certificate came back, the registry holds no new certificate
// serial, and the attack's own invariant held. A 5xx or a dropped
// connection is a crash. The test fails unless every attack was refused,
// nothing was issued, nothing crashed and every control succeeded.
func TestAdversary(t *testing.T) {
	h := newHarness(t)
	as := attacks()
	names := map[string]bool{}
	for _, a := range as {
		if names[a.Name] {
			t.Fatalf("attack %q is listed twice", a.Name)
		}
		names[a.Name] = true
	}
	if len(as) < 180 {
		t.Fatalf("%d attacks, the suite keeps at least 180", len(as))
	}

	var tried, refused, issued, crashes, controlsOK int
	var through []string
	for _, a := range as {
		cerr := protect(func() error { return a.Control(h) })
		if cerr == nil {
			controlsOK++
		} else {
			t.Errorf("control of %q failed: %v", a.Name, cerr)
		}
		h.Arm()
		var r Result
		if err := protect(func() error { r = a.Attack(h); return nil }); err != nil {
			r = Result{Harness: err}
		}
		if h.restoreClock != nil {
			h.restoreClock()
			h.restoreClock = nil
		}
		news := h.newSerials()
		tried++
		v := judge(a, r, news)
		switch v.verdict {
		case verdictRefused:
			refused++
		case verdictCrash:
			crashes++
		}
		if v.issued {
			issued++
		}
		if v.verdict != verdictRefused {
			through = append(through, a.Name)
			t.Errorf("attack %q [%s]: %s: %s", a.Name, a.Category, v.verdict, v.detail)
		}
		fmt.Printf("  attack %-8s %-16s %s: %s\n", v.verdict, "["+a.Category+"]", a.Name, v.detail)
	}
	summary := fmt.Sprintf("adversary: tried=%d refused=%d issued=%d crashes=%d controls_ok=%d/%d", tried, refused, issued, crashes, controlsOK, len(as))
	fmt.Println(summary)
	if issued != 0 || crashes != 0 || controlsOK != len(as) || refused != tried {
		t.Errorf("%s; not refused: %s", summary, strings.Join(through, "; "))
	}
}

const (
	verdictRefused = "refused"
	verdictThrough = "GOT-THROUGH"
	verdictCrash   = "CRASH"
	verdictHarness = "HARNESS"
)

type verdict struct {
	verdict, detail string
	issued          bool
}

// judge applies the suite's definition of a refusal to one answer.
func judge(a Attack, r Result, newSerials []string) verdict {
	v := verdict{detail: r.String(), issued: r.Certificate || len(newSerials) > 0}
	if len(newSerials) > 0 {
		v.detail += fmt.Sprintf("; new certificate serials in the registry: %v", newSerials)
	}
	problem := r.Err == nil && r.Status >= 400 && r.Status < 500 && r.Problem != nil &&
		strings.HasPrefix(r.ContentType, api.ContentTypeProblem) && r.Problem.Code != "" && r.Problem.Status == r.Status
	switch {
	case r.Harness != nil:
		v.verdict = verdictHarness
	case a.Expect == ExpectShed && r.Err == nil && r.Status == http.StatusServiceUnavailable && r.Problem != nil &&
		r.Problem.Code != "" && r.RetryAfter != "" && r.Violation == "" && !v.issued:
		v.verdict = verdictRefused
	case r.Status >= http.StatusInternalServerError:
		v.verdict = verdictCrash
	case r.Err != nil && !(a.Expect == ExpectTLSRefused && r.TLSRefused) && !(a.Expect == ExpectClosed && r.Closed):
		v.verdict = verdictCrash
	case v.issued || r.Violation != "":
		v.verdict = verdictThrough
	case problem,
		a.Expect == ExpectTLSRefused && r.TLSRefused,
		a.Expect == ExpectClosed && r.Closed,
		a.Expect == ExpectFinding && r.Finding != "",
		a.Expect == ExpectHeld && r.Status > 0:
		v.verdict = verdictRefused
	default:
		v.verdict = verdictThrough
	}
	return v
}

// protect turns a panic in harness code into an error.
func protect(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}
