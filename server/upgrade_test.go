//go:build chaos

package server_test

// The rolling upgrade (make upgrade, and part of make chaos): three node
// processes of the previous release (testvectors/golden/PREVIOUS_RELEASE,
// built in a temporary git worktree), swtpm devices enrolling through all
// of them, and the nodes replaced one at a time (SIGTERM, then this
// build's bin/gatehouse on the same data directory), followers first.
// Checked: no acknowledged enrollment is lost, every node keeps applying
// the log throughout (old ones included, also under a new leader once two
// nodes are new), all end at one state hash, and the cluster's feature
// version moves only after the last old node is replaced.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// buildTags are the Makefile's TAGS: the previous release is built as
// `make build` builds it.
const buildTags = "hashicorpmetrics,nobadger,nomysql,nopgx,nobbolt"

func TestRollingUpgrade(t *testing.T) {
	newBin, err := filepath.Abs("../bin/gatehouse")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(newBin); err != nil {
		t.Fatalf("%s: run make build first (make upgrade does)", newBin)
	}
	oldBin, commit := previousRelease(t)
	work := t.TempDir()
	m := swtpm.NewTestManufacturer(t)
	roots := filepath.Join(work, "ek-roots.pem")
	os.WriteFile(roots, servertest.EKRoots(m), 0o644)
	pw := filepath.Join(work, "password")
	os.WriteFile(pw, servertest.Password, 0o600)

	// Three nodes of the previous release.
	nodes := startProcCluster(t, oldBin, work, roots, pw, nil)
	root, err := readRoot(filepath.Join(nodes[0].dir, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	// Devices enroll continuously, round-robin over the nodes.
	var devs []*servertest.Device
	for range 3 {
		devs = append(devs, servertest.NewDevice(t, m))
	}
	var mu sync.Mutex
	var acks []ack
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Go(func() {
			for k := i; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				n := nodes[k%3]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				id, err := fwclient.NewClient("https://"+n.api, root).Enroll(ctx, d.TPM)
				cancel()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				mu.Lock()
				acks = append(acks, ack{device: i, deviceID: id.DeviceID, attestationID: id.AttestationID, serial: id.Certificate.SerialNumber.Text(16)})
				mu.Unlock()
			}
		})
	}
	defer func() { // on a failure too: the devices' goroutines end before their TPMs close
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	servertest.WaitFor(t, "enrollments on the previous release", 60*time.Second, func() bool { return count() >= 3 })

	// Every node, old or new, keeps applying: it reaches the index the
	// leader applied when asked, under load.
	allApply := func(phase string) {
		t.Helper()
		var target uint64
		servertest.WaitEvery(t, phase+": the leader's applied index", 20*time.Second, 250*time.Millisecond, func() bool {
			for _, n := range nodes {
				if v, err := scrapeGauge(hc, n, "gatehouse_cluster_leader"); err == nil && v == 1 {
					a, err := scrapeGauge(hc, n, "gatehouse_cluster_applied_index")
					target = uint64(a)
					return err == nil && target > 0
				}
			}
			return false
		})
		for _, n := range nodes {
			servertest.WaitEvery(t, fmt.Sprintf("%s: %s applies past index %d", phase, n.id, target), 30*time.Second, 250*time.Millisecond, func() bool {
				a, err := scrapeGauge(hc, n, "gatehouse_cluster_applied_index")
				return err == nil && uint64(a) >= target
			})
			if b, _ := os.ReadFile(n.log); strings.Contains(string(b), "cannot continue") || strings.Contains(string(b), "registry halted") || strings.Contains(string(b), "panic:") {
				t.Fatalf("%s: %s stopped applying:\n%s", phase, n.id, tail(b, 4096))
			}
		}
	}
	// The committed feature version every node reports (a build before
	// feature versions reports none: 0).
	features := func() []int {
		var out []int
		for _, n := range nodes {
			s, err := server.NewAdminClient(n.dir).StatusBrief(context.Background())
			if err != nil {
				out = append(out, -1)
				continue
			}
			out = append(out, s.FeatureVersion)
		}
		return out
	}
	allApply("previous release")

	// Followers first, the leader last.
	order := slicesWithLeaderLast(t, nodes)
	for k, n := range order {
		before := count()
		n.stop()
		n.start(t, newBin)
		servertest.WaitFor(t, n.id+" ready on this build", 60*time.Second, func() bool { return readyCount(n) == 2 })
		servertest.WaitFor(t, "enrollments after replacing "+n.id, 60*time.Second, func() bool { return count() >= before+3 })
		if k < len(order)-1 {
			// Give the leader time to raise the version, if it wrongly would.
			time.Sleep(3 * server.FeatureCheckEvery)
			allApply("after replacing " + n.id)
			if f := features(); f[0] != 0 || f[1] != 0 || f[2] != 0 {
				t.Fatalf("feature version %v with %d node(s) still on %s", f, len(order)-1-k, commit)
			}
			t.Logf("%s: replaced %s (%d of 3); feature version 0 on every node; %d enrollments acknowledged", time.Now().Format(time.TimeOnly), n.id, k+1, count())
		}
		if k == len(order)-2 {
			// Two nodes are new: one of them takes the lead from the old
			// one, which stays a running member. The new leader must
			// not raise the version (the old build would stop on
			// cluster.feature), and the old node must apply what the new
			// leader commits.
			old := order[len(order)-1]
			if err := server.NewAdminClient(old.dir).TransferLeadership(context.Background()); err != nil {
				t.Fatalf("transfer leadership from %s: %v", old.id, err)
			}
			var leader *chaosNode
			servertest.WaitFor(t, "a new node leads", 30*time.Second, func() bool {
				s, err := server.NewAdminClient(old.dir).StatusBrief(context.Background())
				if err != nil || s.LeaderID == "" || s.LeaderID == old.id {
					return false
				}
				for _, n := range nodes {
					if n.id == s.LeaderID {
						leader = n
					}
				}
				return true
			})
			time.Sleep(3 * server.FeatureCheckEvery)
			allApply("new leader " + leader.id + ", old member " + old.id)
			if f := features(); f[0] != 0 || f[1] != 0 || f[2] != 0 {
				t.Fatalf("feature version %v raised by the new leader %s while %s runs %s", f, leader.id, old.id, commit)
			}
			b, _ := os.ReadFile(leader.log)
			if !strings.Contains(string(b), "cluster feature version not raised yet") || !strings.Contains(string(b), old.id+": its build") {
				t.Fatalf("the new leader %s never said why it did not raise the feature version:\n%s", leader.id, tail(b, 4096))
			}
			t.Logf("%s: %s (this build) leads, %s (%s) follows and applies; feature version 0; %d enrollments acknowledged", time.Now().Format(time.TimeOnly), leader.id, old.id, commit, count())
		}
	}
	servertest.WaitFor(t, "feature version raised on every node after the last replacement", 30*time.Second, func() bool {
		f := features()
		return f[0] == cluster.FeatureVersion && f[1] == cluster.FeatureVersion && f[2] == cluster.FeatureVersion
	})
	t.Logf("%s: replaced the last node; feature version %d on every node", time.Now().Format(time.TimeOnly), cluster.FeatureVersion)
	allApply("on this build")
	before := count()
	servertest.WaitFor(t, "enrollments at the new feature version", 60*time.Second, func() bool { return count() >= before+3 })
	close(stop)
	wg.Wait()

	// Independent check, as in the chaos run: converge, then read every
	// node's own registry.
	var hashes []string
	servertest.WaitFor(t, "one state hash", 60*time.Second, func() bool {
		hashes = hashes[:0]
		for _, n := range nodes {
			s, err := server.NewAdminClient(n.dir).Status(context.Background())
			if err != nil || s.LeaderID == "" {
				return false
			}
			hashes = append(hashes, s.StateHash)
		}
		return hashes[0] == hashes[1] && hashes[1] == hashes[2]
	})
	lost := 0
	for _, n := range nodes {
		c := server.NewAdminClient(n.dir)
		c.StaleReads = true // converged and quiet: each node answers from its own state
		recs, err := c.Attestations(context.Background(), "", 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[uint64]cluster.AttestationRecord{}
		for _, r := range recs {
			byID[r.ID] = r
		}
		for _, a := range acks {
			if r, ok := byID[a.attestationID]; !ok || r.DeviceID != a.deviceID || r.CertificateSerial != a.serial {
				lost++
				t.Errorf("%s: acknowledged enrollment %+v missing", n.id, a)
			}
		}
	}
	line := fmt.Sprintf("upgrade: from=%s acked=%d lost=%d state=%s feature_version=%d", commit, len(acks), lost, hashes[0][:16], cluster.FeatureVersion)
	fmt.Println(line)
	if lost != 0 || len(acks) == 0 {
		t.Fatal(line)
	}
}

// previousRelease returns the previous release's gatehouse binary, built
// once per commit into build/upgrade/ from a temporary git worktree of the
// commit named in testvectors/golden/PREVIOUS_RELEASE, and the commit.
func previousRelease(t *testing.T) (bin, commit string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("the rolling upgrade builds the previous release from git: git is not installed")
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("the rolling upgrade needs the repository's git history (git rev-parse: %v)", err)
	}
	repo := strings.TrimSpace(string(top))
	pin := filepath.Join(repo, "testvectors", "golden", "PREVIOUS_RELEASE")
	b, err := os.ReadFile(pin)
	if err != nil {
		t.Fatalf("the previous release's commit: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			commit = f[0]
			break
		}
	}
	full, err := exec.Command("git", "-C", repo, "rev-parse", "--verify", "--quiet", commit+"^{commit}").Output()
	if commit == "" || err != nil {
		t.Fatalf("%s names commit %q, which this repository does not have (git fetch it, or fix the pin)", pin, commit)
	}
	commit = strings.TrimSpace(string(full))[:12]
	bin = filepath.Join(repo, "build", "upgrade", "gatehouse-"+commit)
	if _, err := os.Stat(bin); err == nil {
		return bin, commit
	}
	wt := filepath.Join(t.TempDir(), "previous")
	if out, err := exec.Command("git", "-C", repo, "worktree", "add", "--detach", wt, commit).CombinedOutput(); err != nil {
		t.Fatalf("git worktree add %s: %v\n%s", commit, err, out)
	}
	defer func() {
		if out, err := exec.Command("git", "-C", repo, "worktree", "remove", "--force", wt).CombinedOutput(); err != nil {
			t.Logf("git worktree remove %s: %v\n%s", wt, err, out)
		}
	}()
	start := time.Now()
	build := exec.Command("go", "build", "-o", bin+".tmp", "./cmd/gatehouse")
	build.Dir = wt
	build.Env = append(os.Environ(), "GOFLAGS=-tags="+buildTags)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the previous release (%s): %v\n%s", commit, err, out)
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the previous release %s in %s", commit, time.Since(start).Round(time.Second))
	return bin, commit
}

// slicesWithLeaderLast orders the nodes followers first.
func slicesWithLeaderLast(t *testing.T, nodes []*chaosNode) []*chaosNode {
	t.Helper()
	s, err := server.NewAdminClient(nodes[0].dir).StatusBrief(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*chaosNode
	var leader *chaosNode
	for _, n := range nodes {
		if n.id == s.LeaderID {
			leader = n
			continue
		}
		out = append(out, n)
	}
	if leader == nil {
		t.Fatalf("leader %q is none of the nodes", s.LeaderID)
	}
	return append(out, leader)
}

// scrapeGauge reads one unlabelled gauge from a node's /metrics.
func scrapeGauge(hc *http.Client, n *chaosNode, name string) (float64, error) {
	resp, err := hc.Get("https://" + n.api + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", n.id, name)
}
