package loadgen

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/internal/backoff"
)

// HerdConfig is a thundering herd: a whole site boots at once after a
// power cut, and every device runs the agent's loop (fwclient.Daemon) with
// the agent's own backoff.
type HerdConfig struct {
	Nodes        []Node
	Root         *x509.Certificate
	Manufacturer *tpmmodel.Manufacturer
	Platform     *tpmmodel.Platform
	EK           string
	AK           attest.Algorithm
	N            int           // devices
	Spread       time.Duration // they start within this (default 1s)
	Limit        time.Duration // the run gives up waiting after this (default 10m)
	Dir          string        // identity directories (one per device)
	Timeout      time.Duration // per HTTP request (default 60s, the agent's)
	// Backoff is the retry policy; the zero value is the agent's
	// (fwclient.DefaultBackoff: full jitter from 30 s, capped at 1 h, and
	// a Retry-After followed, with its jitter: Daemon.failureDelay).
	Backoff backoff.Policy
	Log     func(format string, args ...any)
}

// HerdResult is a herd's outcome.
type HerdResult struct {
	N, Enrolled, GaveUp     int
	Pregen                  time.Duration
	LastEnrolled            time.Duration // from the first device's start
	P50, P99                time.Duration // each device's start → enrolled
	Attempts                int           // enrollments tried (first tries and retries)
	MaxAttempts             int           // the most one device tried
	Status429, Status503    int           // answers with those statuses
	WithRetryAfter          int           // of those, how many carried Retry-After
	Failures                map[string]int
	Nodes                   []NodeResult
	ServerCPU, GeneratorCPU time.Duration
	Elapsed                 time.Duration
}

// countingTransport counts the overload answers a device gets.
type countingTransport struct {
	rt                   http.RoundTripper
	s429, s503, retryHdr *atomic.Int64
	attempts, mine       *atomic.Int64 // all devices', this device's
	challenge            string
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == c.challenge {
		c.attempts.Add(1)
		c.mine.Add(1)
	}
	resp, err := c.rt.RoundTrip(r)
	if err == nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if resp.StatusCode == http.StatusTooManyRequests {
			c.s429.Add(1)
		} else {
			c.s503.Add(1)
		}
		if resp.Header.Get("Retry-After") != "" {
			c.retryHdr.Add(1)
		}
	}
	return resp, err
}

// failureLog counts the failures the daemon logs ("identity upkeep
// failed"), by class.
type failureLog struct {
	mu sync.Mutex
	by map[string]int
}

func (f *failureLog) Enabled(context.Context, slog.Level) bool { return true }
func (f *failureLog) WithAttrs([]slog.Attr) slog.Handler       { return f }
func (f *failureLog) WithGroup(string) slog.Handler            { return f }
func (f *failureLog) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && a.Key == "err" {
			f.mu.Lock()
			f.by[Classify(err)]++
			f.mu.Unlock()
		}
		return true
	})
	return nil
}

// Herd runs a thundering herd: cfg.N model devices (made first, timed
// separately) each start within cfg.Spread and run the agent's loop until
// enrolled. It returns when all are enrolled, or gave up (the daemon
// stopped with an error), or cfg.Limit passed.
func Herd(ctx context.Context, cfg HerdConfig) (*HerdResult, error) {
	c := Config{Nodes: cfg.Nodes, Root: cfg.Root, Manufacturer: cfg.Manufacturer, Platform: cfg.Platform,
		EK: cfg.EK, AK: cfg.AK, Mode: ModeEnroll, Concurrency: 1, Duration: time.Second, Timeout: cfg.Timeout, Log: cfg.Log}
	if err := c.check(); err != nil {
		return nil, err
	}
	if cfg.N < 1 || cfg.Dir == "" {
		return nil, fmt.Errorf("%w: a herd needs N ≥ 1 and a directory", ErrConfig)
	}
	if cfg.Spread <= 0 {
		cfg.Spread = time.Second
	}
	if cfg.Limit <= 0 {
		cfg.Limit = 10 * time.Minute
	}
	g := newGen(c)
	ids, err := g.nodeIDs(ctx)
	if err != nil {
		return nil, err
	}
	res := &HerdResult{N: cfg.N, Failures: map[string]int{}}
	t0 := time.Now()
	if err := g.pregen(cfg.N); err != nil {
		return nil, err
	}
	res.Pregen = time.Since(t0)
	c.Log("herd: %d devices made in %s", cfg.N, res.Pregen.Round(time.Millisecond))

	var s429, s503, retryHdr, attempts atomic.Int64
	fails := &failureLog{by: map[string]int{}}
	cpu0, err := startMeasure(c.Nodes)
	if err != nil {
		return nil, err
	}
	for i, n := range c.Nodes {
		res.Nodes = append(res.Nodes, NodeResult{Node: n, ID: ids[i]})
	}
	self0 := selfCPU()
	ctx, cancel := context.WithTimeout(ctx, cfg.Limit)
	defer cancel()
	start := time.Now()
	took := make([]time.Duration, cfg.N)
	tries := make([]atomic.Int64, cfg.N)
	var enrolled, gaveUp, lastAt atomic.Int64
	var wg sync.WaitGroup
	for i := range cfg.N {
		dev := <-g.devices
		t := g.all[i%len(g.all)]
		hc := g.deviceHTTP()
		hc.Transport = &countingTransport{rt: hc.Transport, s429: &s429, s503: &s503, retryHdr: &retryHdr, attempts: &attempts, mine: &tries[i], challenge: api.PathChallenge}
		dctx, dcancel := context.WithCancel(ctx)
		var begun time.Time
		d := &fwclient.Daemon{
			Client: t.client, TPM: dev, Dir: filepath.Join(cfg.Dir, fmt.Sprintf("device-%d", i)), Server: t.url,
			Opts:    []fwclient.Option{fwclient.WithAKAlgorithm(c.AK), fwclient.WithHTTPClient(hc)},
			Log:     slog.New(fails),
			Backoff: cfg.Backoff,
			Renewed: func(*fwclient.Identity) {
				now := time.Now()
				took[i] = now.Sub(begun)
				enrolled.Add(1)
				for l := lastAt.Load(); l < now.UnixNano() && !lastAt.CompareAndSwap(l, now.UnixNano()); l = lastAt.Load() {
				}
				dcancel() // enrolled: this device is done
			},
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer dcancel()
			delay := time.Duration(rand.Int64N(int64(cfg.Spread)))
			select {
			case <-dctx.Done():
				return
			case <-time.After(delay):
			}
			begun = time.Now()
			if err := d.Run(dctx); err != nil {
				gaveUp.Add(1)
				c.Log("herd: device %d gave up: %v", i, err)
			}
			hc.CloseIdleConnections()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.GeneratorCPU = selfCPU() - self0
	if err := finishMeasure(res.Nodes, cpu0); err != nil {
		return nil, err
	}
	for _, n := range res.Nodes {
		res.ServerCPU += n.CPU
	}
	res.Enrolled, res.GaveUp = int(enrolled.Load()), int(gaveUp.Load())
	res.Status429, res.Status503, res.WithRetryAfter, res.Attempts = int(s429.Load()), int(s503.Load()), int(retryHdr.Load()), int(attempts.Load())
	res.Failures = fails.by
	for i := range tries {
		res.MaxAttempts = max(res.MaxAttempts, int(tries[i].Load()))
	}
	var done []time.Duration
	for _, d := range took {
		if d > 0 {
			done = append(done, d)
		}
	}
	l := summarize(done)
	res.P50, res.P99 = l.P50, l.P99
	if l := lastAt.Load(); l != 0 {
		res.LastEnrolled = time.Unix(0, l).Sub(start)
	}
	if err := os.RemoveAll(cfg.Dir); err != nil {
		c.Log("herd: removing %s: %v", cfg.Dir, err)
	}
	return res, nil
}

// WriteHerd writes a herd's table and its last line:
//
//	herd: devices=N enrolled=N gave_up=N last_enrolled_s=N max_rss_mib=N status_429=N status_503=N max_attempts=N
func WriteHerd(w io.Writer, r *HerdResult) {
	fmt.Fprintf(w, "herd: %d devices started within 1 s (made beforehand in %.1f s), each running the agent's loop and backoff\n", r.N, r.Pregen.Seconds())
	fmt.Fprintf(w, "  enrolled %d, gave up %d, still trying at the end %d; last enrolled %.1f s after the start\n",
		r.Enrolled, r.GaveUp, r.N-r.Enrolled-r.GaveUp, r.LastEnrolled.Seconds())
	fmt.Fprintf(w, "  per device, start to enrolled: p50 %.1f s, p99 %.1f s; enrollment attempts %d (%.2f per device, at most %d)\n",
		r.P50.Seconds(), r.P99.Seconds(), r.Attempts, float64(r.Attempts)/float64(r.N), r.MaxAttempts)
	fmt.Fprintf(w, "  overload answers: %d × 429, %d × 503 (%d with Retry-After)\n", r.Status429, r.Status503, r.WithRetryAfter)
	if len(r.Failures) > 0 {
		fmt.Fprintln(w, "  failed attempts (the agent retried each after its backoff):")
		keys := make([]string, 0, len(r.Failures))
		for k := range r.Failures {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "    %6d  %s\n", r.Failures[k], k)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  node\tapi\tpid\tcpu_s\trss_mib\tpeak_rss_mib\t")
	var maxRSS uint64
	for _, n := range r.Nodes {
		if !n.MeasureOK {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t-\t-\t-\t\n", n.ID, n.API, n.PID)
			continue
		}
		maxRSS = max(maxRSS, n.HWM)
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%.2f\t%.0f\t%.0f\t\n", n.ID, n.API, n.PID, n.CPU.Seconds(), float64(n.RSS)/(1<<20), float64(n.HWM)/(1<<20))
	}
	tw.Flush()
	fmt.Fprintf(w, "  server CPU (all nodes) %.1f s, generator CPU %.1f s, over %.1f s\n", r.ServerCPU.Seconds(), r.GeneratorCPU.Seconds(), r.Elapsed.Seconds())
	fmt.Fprintf(w, "herd: devices=%d enrolled=%d gave_up=%d last_enrolled_s=%.1f max_rss_mib=%.0f status_429=%d status_503=%d max_attempts=%d\n",
		r.N, r.Enrolled, r.GaveUp, r.LastEnrolled.Seconds(), float64(maxRSS)/(1<<20), r.Status429, r.Status503, r.MaxAttempts)
}
