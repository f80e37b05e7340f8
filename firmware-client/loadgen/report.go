package loadgen

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// summarize sorts ds and returns its percentiles (nearest rank).
func summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	slices.Sort(ds)
	at := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(ds)))) - 1
		return ds[max(0, min(i, len(ds)-1))]
	}
	return Latency{P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: ds[len(ds)-1]}
}

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func perOp(d time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", ms(d)/float64(n))
}

// ServerCPUPerEnroll is the server CPU (all nodes) per enrollment: exact
// in enroll mode; in a mixed run, where renewals share the CPU, it is the
// CPU per operation (enrollment or renewal), which understates an
// enrollment's cost. -1 without enrollments or without node PIDs.
func (r *Result) ServerCPUPerEnroll() float64 {
	measured := false
	for _, n := range r.Nodes {
		measured = measured || n.MeasureOK
	}
	if r.Enrollments == 0 || !measured {
		return -1
	}
	n := r.Enrollments
	if r.Mode != ModeEnroll {
		n += r.Renewals
	}
	return ms(r.ServerCPU) / float64(n)
}

// WriteTable writes one run's table.
func WriteTable(w io.Writer, r *Result) {
	fmt.Fprintf(w, "phase %s: concurrency %d, window %.1f s\n", r.Mode, r.Concurrency, r.Elapsed.Seconds())
	fmt.Fprintf(w, "  before the window: %d devices pre-generated, %d warm-up enrollments, %.1f s, generator CPU %.0f ms\n",
		r.SetupDevices, r.SetupEnrollments, r.Setup.Seconds(), ms(r.SetupCPU))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  operation\tacknowledged\tper_s\tp50_ms\tp95_ms\tp99_ms\tmax_ms\tserver_cpu_ms/op\tgenerator_cpu_ms/op\t")
	row := func(name string, n int, l Latency, srv, self string) {
		fmt.Fprintf(tw, "  %s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t\n", name, n, perSecond(n, r.Elapsed),
			ms(l.P50), ms(l.P95), ms(l.P99), ms(l.Max), srv, self)
	}
	total := r.Enrollments + r.Renewals
	split := r.Mode == ModeMixed
	for _, op := range []struct {
		name string
		n    int
		l    Latency
		mode string
	}{{"enroll", r.Enrollments, r.EnrollLat, ModeEnroll}, {"renew", r.Renewals, r.RenewLat, ModeRenew}} {
		if r.Mode != op.mode && !split {
			continue
		}
		srv, self := perOp(r.ServerCPU, op.n), perOp(r.GeneratorCPU, op.n)
		if split {
			srv, self = "(shared)", "(shared)"
		}
		row(op.name, op.n, op.l, srv, self)
	}
	if split {
		row("all", total, r.AllLat, perOp(r.ServerCPU, total), perOp(r.GeneratorCPU, total))
	}
	tw.Flush()
	counts := func(what string, n int, by map[string]int) {
		if n == 0 {
			fmt.Fprintf(w, "  %s: none\n", what)
			return
		}
		fmt.Fprintf(w, "  %s: %d\n", what, n)
		keys := make([]string, 0, len(by))
		for k := range by {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "    %6d  %s\n", by[k], k)
		}
	}
	counts("errors", r.ErrorCount, r.Errors)
	counts("told to come back (Retry-After followed)", r.DeferredCount, r.Deferred)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  node\tapi\tpid\tcpu_s\tcpu_%\trss_mib\tpeak_rss_mib\t")
	for _, n := range r.Nodes {
		note := ""
		if n.Killed {
			note = " (SIGKILLed; until then)"
		}
		if !n.MeasureOK {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t-\t-\t-\t-\t\n", n.ID, n.API, n.PID)
			continue
		}
		fmt.Fprintf(tw, "  %s%s\t%s\t%d\t%.2f\t%.0f\t%.0f\t%.0f\t\n", n.ID, note, n.API, n.PID, n.CPU.Seconds(),
			100*n.CPU.Seconds()/r.Elapsed.Seconds(), float64(n.RSS)/(1<<20), float64(n.HWM)/(1<<20))
	}
	tw.Flush()
	fmt.Fprintf(w, "  server CPU (all nodes): %.2f s = %s ms per operation; generator CPU: %.2f s = %s ms per operation\n",
		r.ServerCPU.Seconds(), perOp(r.ServerCPU, total), r.GeneratorCPU.Seconds(), perOp(r.GeneratorCPU, total))
	if r.LeaderKilled != "" {
		back := "never"
		if r.WritesBackAfter >= 0 {
			back = fmt.Sprintf("%.0f ms", ms(r.WritesBackAfter))
		}
		fmt.Fprintf(w, "  failover: leader %s SIGKILLed %.1f s into the window; a new leader after %.0f ms; writes acknowledged again after %s"+
			" (the first operation started after the kill, its own latency included)\n",
			r.LeaderKilled, r.KilledAt.Seconds(), ms(r.NewLeaderAfter), back)
	}
	if r.Verified > 0 || r.VerifyErr != nil || r.Lost > 0 {
		fmt.Fprintf(w, "  verified: %d acknowledged operations checked in the registry, %d lost", r.Verified, r.Lost)
		if r.VerifyErr != nil {
			fmt.Fprintf(w, " (verification incomplete: %v)", r.VerifyErr)
		}
		fmt.Fprintln(w)
	}
}

// SummaryLine is the last line of a load test over one or more phases:
// enroll_per_s from the enroll phase (else the mixed one), renew_per_s
// from the renew phase (else the mixed one), the worst p99, the server
// CPU per enrollment of the enroll phase (else the mixed one's per
// operation) and every error (and every lost acknowledged operation)
// of all phases.
func SummaryLine(rs []*Result) string {
	pick := func(mode string) *Result {
		for _, want := range []string{mode, ModeMixed} {
			for _, r := range rs {
				if r.Mode == want {
					return r
				}
			}
		}
		return nil
	}
	var enrollPS, renewPS, cpu float64
	cpu = -1
	if r := pick(ModeEnroll); r != nil {
		enrollPS, cpu = perSecond(r.Enrollments, r.Elapsed), r.ServerCPUPerEnroll()
	}
	if r := pick(ModeRenew); r != nil {
		renewPS = perSecond(r.Renewals, r.Elapsed)
	}
	var p99 time.Duration
	errs := 0
	for _, r := range rs {
		p99 = max(p99, r.AllLat.P99)
		errs += r.ErrorCount + r.Lost
		if r.VerifyErr != nil {
			errs++
		}
	}
	cpuS := "NA"
	if cpu >= 0 {
		cpuS = fmt.Sprintf("%.2f", cpu)
	}
	return strings.Join([]string{"loadtest:",
		fmt.Sprintf("enroll_per_s=%.1f", enrollPS),
		fmt.Sprintf("renew_per_s=%.1f", renewPS),
		fmt.Sprintf("p99_ms=%.1f", ms(p99)),
		"server_cpu_ms_per_enroll=" + cpuS,
		fmt.Sprintf("errors=%d", errs)}, " ")
}
