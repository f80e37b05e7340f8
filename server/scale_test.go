package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/cmd/gatehouse/cli"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// scaleNodeArgs (not GATEHOUSE_*: the command reads those as flags), in
// the environment, makes this test binary a `gatehouse`
// process (TestScaleNodeProcess): the scale run's nodes are real processes
// running the command's own code, without a separate build.
const scaleNodeArgs = "SCALE_TEST_NODE_ARGS"

// TestScaleNodeProcess is the `gatehouse` command when this binary runs as
// one of TestScale's nodes; otherwise it does nothing.
func TestScaleNodeProcess(t *testing.T) {
	args := os.Getenv(scaleNodeArgs)
	if args == "" {
		return
	}
	var argv []string
	if err := json.Unmarshal([]byte(args), &argv); err != nil {
		t.Fatal(err)
	}
	os.Exit(cli.Run(argv))
}

// scaleNode starts `gatehouse args...` as a child process logging to log.
func scaleNode(t *testing.T, log string, args ...string) *exec.Cmd {
	t.Helper()
	lf, err := os.OpenFile(log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestScaleNodeProcess$")
	cmd.Env = scaleEnv(args)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); lf.Close() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd
}

// scaleRun runs `gatehouse args...` to its end and returns its stdout.
func scaleRun(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestScaleNodeProcess$")
	cmd.Env = scaleEnv(args)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gatehouse %s: %v\n%s", args[0], err, stderr.String())
	}
	return out
}

// procStatus reads a field of /proc/PID/status in KiB (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func waitLog(t *testing.T, log, what string, d time.Duration, cmd *exec.Cmd) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if b, _ := os.ReadFile(log); strings.Contains(string(b), what) {
			return
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(log)
			t.Fatalf("waiting for %q in %s (exited: %v):\n%s", what, log, cmd.ProcessState, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pct is the p-th quantile of sorted latencies, in milliseconds.
func pct(lat []time.Duration, p float64) float64 {
	return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))]) / float64(time.Millisecond)
}

// TestScale is `make scale` at GATEHOUSE_SCALE_DEVICES devices (1,000,000
// there) and three attestation records per device; `make test` runs it at
// 5,000. One node's registry is built through the commands' apply
// (cluster.LoadSynthetic), its query indexes verified, and a Raft snapshot
// taken (with the log compacted behind it, as a long-running cluster's
// is); then the node runs as a real `gatehouse serve` process (this test
// binary running the command's code) and the run measures, over HTTPS
// with an auditor certificate as the CLI and the console ask:
//   - restart: from exec to ready, on the seeded registry;
//   - device get and filtered pages (state, group, label, and all three),
//     p50 and p99 of the admin API's answers;
//   - the node process's RSS and peak RSS (VmRSS, VmHWM of /proc/PID/status);
//   - snapshot size and the time to take it;
//   - a second `gatehouse serve --join` process: from exec until it
//     answers with the whole registry, which it can only have from the
//     snapshot the leader installs.
//
// It asserts what each answer holds; the figures are reported, not judged
// (benchmarks, not timed tests): the last line is
//
//	scale: devices=N records=N get_p99_ms=N page_p99_ms=N rss_mib=N snapshot_mib=N snapshot_s=N join_s=N restart_s=N
//
// GATEHOUSE_SCALE_DIR puts the data directories there (make scale: under
// build/), removed at the end; GATEHOUSE_SCALE_LOGS keeps the nodes' logs
// (scale-node-N.log) there; GATEHOUSE_SCALE_SEED keeps the seeded node.
func TestScale(t *testing.T) {
	devices := 5000
	if s := os.Getenv("GATEHOUSE_SCALE_DEVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 {
			t.Fatalf("GATEHOUSE_SCALE_DEVICES=%q: want a number of devices, at least 100", s)
		}
		devices = n
	}
	work := t.TempDir()
	if d := os.Getenv("GATEHOUSE_SCALE_DIR"); d != "" {
		var err error
		if work, err = os.MkdirTemp(d, "scale-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(work) })
	}
	logs := work // GATEHOUSE_SCALE_LOGS keeps the nodes' logs (make scale: build/)
	if d := os.Getenv("GATEHOUSE_SCALE_LOGS"); d != "" {
		logs = d
	}
	for i := 1; i <= 2; i++ { // a previous run's: waitLog must not see its lines
		os.Remove(filepath.Join(logs, fmt.Sprintf("scale-node-%d.log", i)))
	}
	ctx := context.Background()
	m := swtpm.NewTestManufacturer(t)
	roots, pw := filepath.Join(work, "ek-roots.pem"), filepath.Join(work, "password")
	os.WriteFile(roots, servertest.EKRoots(m), 0o644)
	os.WriteFile(pw, servertest.Password, 0o600)
	n1, n2 := filepath.Join(work, "node-1"), filepath.Join(work, "node-2")
	api1, api2 := servertest.FreeAddr(t), servertest.FreeAddr(t)
	// GATEHOUSE_SCALE_SEED (make scale SCALE_SEED=dir) keeps the seeded
	// node-1 there, and a later run of the same size measures it again
	// without the load (45 minutes at a million devices). The marker,
	// written once the indexes are verified, holds node-1's API address.
	marker, reuse := "", false
	if d := os.Getenv("GATEHOUSE_SCALE_SEED"); d != "" {
		n1 = filepath.Join(d, fmt.Sprintf("node-1-%d", devices))
		marker = filepath.Join(n1, "scale-seeded")
		if b, err := os.ReadFile(marker); err == nil {
			api1, reuse = string(b), true
		} else if err := os.RemoveAll(n1); err != nil { // a load that did not finish
			t.Fatal(err)
		}
	}
	if !reuse {
		scaleRun(t, "init", "--data-dir", n1, "--node-id", "node-1", "--password-file", pw, "--ek-roots", roots,
			"--listen", api1, "--raft-addr", servertest.FreeAddr(t))
	}

	// First start (bootstrap), then the registry, through the commands'
	// apply, while the node is closed.
	openNode := func() *server.Appliance {
		t.Helper()
		app, err := server.Open(n1, servertest.Password, server.WithClusterOptions(cluster.WithRaftConfig(func(c *raft.Config) {
			servertest.FastRaft(c)
			c.TrailingLogs = 0
		})))
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := app.WaitReady(rctx); err != nil {
			t.Fatal(err)
		}
		return app
	}
	fleet := cluster.SyntheticFleet{Devices: devices, Attestations: 3 * devices, End: time.Now(), Span: 90 * 24 * time.Hour}
	t0 := time.Now()
	if !reuse {
		openNode().Close()
		if err := cluster.LoadSynthetic(filepath.Join(n1, "raft"), fleet); err != nil {
			t.Fatal(err)
		}
	}
	seed := time.Since(t0)
	fsmSize := fileSize(t, filepath.Join(n1, "raft", "fsm.db"))

	// The node once in this process: verify the indexes, and take a
	// snapshot with the log compacted behind it (trailing logs 0), so a
	// joining node can only catch up from the snapshot.
	app := openNode()
	t0 = time.Now()
	if err := app.Node().VerifyIndexes(); err != nil {
		t.Fatalf("query indexes after the load: %v", err)
	}
	verify := time.Since(t0)
	if marker != "" && !reuse {
		if err := os.WriteFile(marker, []byte(api1), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.Node().AppendAudit(ctx, "scale.seeded", "node:node-1", "", map[string]int{"devices": devices}); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if err := app.Node().Snapshot(); err != nil {
		t.Fatal(err)
	}
	snapTime := time.Since(t0)
	app.Close()
	var snapSize int64
	filepath.WalkDir(filepath.Join(n1, "raft", "snapshots"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "state.bin" {
			snapSize = max(snapSize, fileSize(t, p))
		}
		return err
	})
	if snapSize < fsmSize/4 {
		t.Fatalf("snapshot of %d bytes for a registry of %d", snapSize, fsmSize)
	}

	// Restart, as a process.
	log1 := filepath.Join(logs, "scale-node-1.log")
	t0 = time.Now()
	p1 := scaleNode(t, log1, "serve", "--data-dir", n1, "--password-file", pw)
	waitLog(t, log1, "msg=ready", 5*time.Minute, p1)
	restart := time.Since(t0)

	rootPEM, err := os.ReadFile(filepath.Join(n1, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		t.Fatal("no root certificate in ca/root.crt")
	}
	cert := scaleAdminCert(t, n1)
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 4, TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	get := func(api, path string, into any) time.Duration {
		t.Helper()
		t0 := time.Now()
		resp, err := hc.Get("https://" + api + path)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(into)
		resp.Body.Close()
		d := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return d
	}

	// Device gets, random devices.
	gets, pages := 2000, 300
	if devices < 100_000 { // make test: fewer requests
		gets, pages = 500, 90
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	var lat []time.Duration
	for range gets {
		want := cluster.SyntheticDevice(rnd.IntN(devices))
		var d cluster.Device
		lat = append(lat, get(api1, "/admin/v1/devices/"+want.ID, &d))
		if d.ID != want.ID || d.Group != want.Group || d.Status != want.Status {
			t.Fatalf("device %s: got %s in %s, %s; want %s, %s", want.ID, d.ID, d.Group, d.Status, want.Group, want.Status)
		}
	}
	slices.Sort(lat)
	getP50, getP99 := pct(lat, 0.5), pct(lat, 0.99)
	t.Logf("device get: p50 %.2f ms, p99 %.2f ms (%d requests)", getP50, getP99, len(lat))

	// Filtered pages (the API's default page size), first pages and the
	// pages after them.
	pageP99 := 0.0
	for _, q := range []struct{ name, query string }{
		{"state=quarantined", "state=quarantined"},
		{"group=group-07", "group=group-07"},
		{"group=canary", "group=canary"},
		{"label=site=site-13", "label=site%3Dsite-13"},
		{"state+group+label", "state=active&group=group-03&label=site%3Dsite-13"},
	} {
		var lat []time.Duration
		cursor, items := "", 0
		for i := range pages {
			path := "/admin/v1/devices?" + q.query
			if i%3 != 0 && cursor != "" {
				path += "&cursor=" + url.QueryEscape(cursor)
			}
			var page []cluster.Device
			t0 := time.Now()
			resp, err := hc.Get("https://" + api1 + path)
			if err != nil {
				t.Fatal(err)
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			lat = append(lat, time.Since(t0))
			if err != nil || resp.StatusCode != http.StatusOK || len(page) == 0 {
				t.Fatalf("GET %s: %d, %d devices, %v", path, resp.StatusCode, len(page), err)
			}
			for _, d := range page {
				if !scaleMatch(q.query, d) {
					t.Fatalf("GET %s returned device %s (%s, %s, %v)", path, d.ID, d.Status, d.Group, d.Labels)
				}
			}
			items, cursor = len(page), scaleCursor(t, resp)
		}
		slices.Sort(lat)
		pageP99 = max(pageP99, pct(lat, 0.99))
		t.Logf("devices?%-22s p50 %6.2f ms  p99 %6.2f ms  %d items a page", q.name, pct(lat, 0.5), pct(lat, 0.99), items)
	}

	rss1, hwm1 := procStatus(t, p1.Process.Pid, "VmRSS"), procStatus(t, p1.Process.Pid, "VmHWM")
	anon1, file1 := procStatus(t, p1.Process.Pid, "RssAnon"), procStatus(t, p1.Process.Pid, "RssFile")

	// A new node joins and installs the snapshot.
	// node-2 joins node-1's configuration: the seed is reusable again only
	// once node-2 is removed from it (below), or node-1 alone has no quorum.
	if marker != "" {
		os.Remove(marker)
	}
	tok := filepath.Join(work, "node-2.token")
	os.WriteFile(tok, scaleRun(t, "cluster", "token", "create", "--data-dir", n1), 0o600)
	log2 := filepath.Join(logs, "scale-node-2.log")
	t0 = time.Now()
	p2 := scaleNode(t, log2, "serve", "--data-dir", n2, "--password-file", pw, "--join", api1, "--token-file", tok,
		"--node-id", "node-2", "--listen", api2, "--raft-addr", servertest.FreeAddr(t))
	waitLog(t, log2, "msg=ready", 5*time.Minute, p2)
	for {
		// 503 until node-2 has caught up with the leader's read index.
		var f cluster.FleetCounts
		resp, err := hc.Get("https://" + api2 + "/admin/v1/fleet")
		if err == nil {
			if resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&f) == nil && f.Devices == devices {
				resp.Body.Close()
				break
			}
			resp.Body.Close()
		}
		if time.Since(t0) > 10*time.Minute {
			t.Fatalf("node-2 holds %d devices, want %d (%v)", f.Devices, devices, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	join := time.Since(t0)
	if b, _ := os.ReadFile(log2); !strings.Contains(string(b), "snapshot") {
		t.Fatalf("node-2 caught up without installing a snapshot:\n%s", b)
	}
	var d cluster.Device
	want := cluster.SyntheticDevice(devices - 1)
	if get(api2, "/admin/v1/devices/"+want.ID, &d); d.ID != want.ID {
		t.Fatalf("node-2: device %s is %q", want.ID, d.ID)
	}
	rss2, hwm2 := procStatus(t, p2.Process.Pid, "VmRSS"), procStatus(t, p2.Process.Pid, "VmHWM")
	if marker != "" {
		if err := server.NewAdminClient(n1).RemoveMember(ctx, "node-2"); err != nil {
			t.Fatalf("removing node-2 to keep the seed: %v", err)
		}
		if err := os.WriteFile(marker, []byte(api1), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	if reuse {
		t.Logf("reused the registry of %d devices and %d records seeded by an earlier run in %s (registry %.0f MiB); indexes verified in %s",
			devices, fleet.Attestations, n1, mib(fsmSize), verify.Round(time.Millisecond))
	} else {
		t.Logf("seeded %d devices and %d records through the commands' apply in %s (registry %.0f MiB); indexes verified in %s",
			devices, fleet.Attestations, seed.Round(time.Millisecond), mib(fsmSize), verify.Round(time.Millisecond))
	}
	t.Logf("snapshot: %.0f MiB in %s", mib(snapSize), snapTime.Round(time.Millisecond))
	t.Logf("restart (exec to ready): %s", restart.Round(time.Millisecond))
	t.Logf("node-1 RSS %d MiB (peak %d MiB; %d MiB heap and stacks, %d MiB pages of files: the mapped registry); node-2 RSS %d MiB (peak %d MiB)",
		rss1>>10, hwm1>>10, anon1>>10, file1>>10, rss2>>10, hwm2>>10)
	t.Logf("join (exec until node-2 answers with every device): %s", join.Round(time.Millisecond))
	fmt.Printf("scale: devices=%d records=%d get_p99_ms=%.2f page_p99_ms=%.2f rss_mib=%d snapshot_mib=%.0f snapshot_s=%.1f join_s=%.1f restart_s=%.1f\n",
		devices, fleet.Attestations, getP99, pageP99, max(hwm1, hwm2)>>10, mib(snapSize), snapTime.Seconds(), join.Seconds(), restart.Seconds())
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// scaleAdminCert has the node at dir issue an auditor certificate through
// its admin socket.
func scaleAdminCert(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	return (&servertest.Env{T: t, Dir: dir}).AdminCert(t, ca.RoleAuditor, "scale")
}

// scaleCursor is the cursor of the page after resp's (its Link header).
func scaleCursor(t *testing.T, resp *http.Response) string {
	t.Helper()
	l := resp.Header.Get("Link")
	if l == "" {
		return ""
	}
	u, err := url.Parse(strings.TrimPrefix(strings.SplitN(l, ">", 2)[0], "<"))
	if err != nil {
		t.Fatalf("Link %q: %v", l, err)
	}
	return u.Query().Get("cursor")
}

// scaleMatch: d matches the filters of query (state, group, label).
func scaleMatch(query string, d cluster.Device) bool {
	q, _ := url.ParseQuery(query)
	if s := q.Get("state"); s != "" && d.Status != s {
		return false
	}
	if g := q.Get("group"); g != "" && d.Group != g {
		return false
	}
	for _, l := range q["label"] {
		k, v, _ := strings.Cut(l, "=")
		if d.Labels[k] != v {
			return false
		}
	}
	return true
}

// scaleEnv is the environment of a node process running args: this one's
// without GATEHOUSE_* (the run's own settings, make's GATEHOUSE_STEP), which
// the command would take for flags.
func scaleEnv(args []string) []string {
	env := slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "GATEHOUSE_") })
	b, _ := json.Marshal(args)
	return append(env, scaleNodeArgs+"="+string(b))
}

// The leader's periodic duties over every device (stale marking, the
// revocation sweep) hold one page of devices at a time, not the registry:
// at a million devices the whole set is gigabytes. Measured as the peak of
// the live heap (the collector running at every 5% of growth) while each
// runs over 10,000 devices, against what holding them all would take.
func TestLeaderDutiesHoldAPage(t *testing.T) {
	e := newEnv(t)
	const devices = 10000
	e.Seed(cluster.SyntheticFleet{Devices: devices, Attestations: devices, End: time.Now(), Span: 24 * time.Hour})
	ctx := context.Background()
	all, err := e.App.Node().Devices()
	if err != nil || len(all) != devices {
		t.Fatalf("%d devices, %v", len(all), err)
	}
	whole := liveHeapPeak(t, func() { all, _ = e.App.Node().Devices() })
	all = nil
	for name, duty := range map[string]func(context.Context) error{"MarkStale": e.App.MarkStale, "SweepRevocations": e.App.SweepRevocations} {
		var err error
		peak := liveHeapPeak(t, func() { err = duty(ctx) })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: live heap peak +%d KiB; all devices at once +%d KiB", name, peak>>10, whole>>10)
		if peak > whole/2 {
			t.Fatalf("%s holds %d KiB at its peak: the whole registry takes %d KiB", name, peak>>10, whole>>10)
		}
	}
}

// liveHeapPeak runs fn with the collector at every 5% of heap growth and
// returns the peak of the heap in use above where it started.
func liveHeapPeak(t *testing.T, fn func()) uint64 {
	t.Helper()
	defer debug.SetGCPercent(debug.SetGCPercent(5))
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	base, peak := m.HeapInuse, m.HeapInuse
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	fn()
	close(done)
	<-sampled
	return peak - base
}
