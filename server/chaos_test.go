//go:build chaos

package server_test

// The chaos run (make chaos): three nodes as separate `gatehouse serve`
// processes, enrollments from swtpm devices flowing through all of them, and
// a random node SIGKILLed and restarted every 5-10 s. At the end every node
// is restarted and an independent check compares what devices were told
// against what every node holds, and what the nodes' logs say they issued
// against what they committed. Its last line is the invariants line.

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

type chaosNode struct {
	id, dir, api, log string
	args              []string
	mu                sync.Mutex
	cmd               *exec.Cmd
}

func (n *chaosNode) start(t *testing.T, bin string) {
	t.Helper()
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, n.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); logf.Close() }()
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
}

func (n *chaosNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.cmd.Process.Signal(syscall.SIGKILL)
		n.cmd.Wait()
		n.cmd = nil
	}
}

func (n *chaosNode) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.cmd.Process.Signal(syscall.SIGTERM)
		n.cmd.Wait()
		n.cmd = nil
	}
}

func TestChaos(t *testing.T) {
	duration := 3 * time.Minute
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	bin, err := filepath.Abs("../bin/gatehouse")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: run make build first (make chaos does)", bin)
	}
	work := t.TempDir()
	m := swtpm.NewTestManufacturer(t)
	roots := filepath.Join(work, "ek-roots.pem")
	os.WriteFile(roots, servertest.EKRoots(m), 0o644)
	pw := filepath.Join(work, "password")
	os.WriteFile(pw, servertest.Password, 0o600)

	var nodes []*chaosNode
	for i := 1; i <= 3; i++ {
		n := &chaosNode{id: fmt.Sprintf("node-%d", i), dir: filepath.Join(work, fmt.Sprintf("node-%d", i)),
			api: servertest.FreeAddr(t), log: filepath.Join(work, fmt.Sprintf("node-%d.log", i))}
		raftAddr := servertest.FreeAddr(t)
		if i == 1 {
			out, err := exec.Command(bin, "init", "--data-dir", n.dir, "--node-id", n.id, "--password-file", pw, "--ek-roots", roots,
				"--listen", n.api, "--raft-addr", raftAddr).CombinedOutput()
			if err != nil {
				t.Fatalf("init: %v\n%s", err, out)
			}
			n.args = []string{"serve", "--data-dir", n.dir, "--password-file", pw}
		} else {
			tok, err := exec.Command(bin, "cluster", "token", "create", "--data-dir", nodes[0].dir).Output()
			if err != nil {
				t.Fatalf("token: %v", err)
			}
			tf := filepath.Join(work, n.id+".token")
			os.WriteFile(tf, tok, 0o600)
			// The same arguments restart it: --join is ignored once the node has joined.
			n.args = []string{"serve", "--data-dir", n.dir, "--password-file", pw, "--join", nodes[0].api, "--token-file", tf,
				"--node-id", n.id, "--listen", n.api, "--raft-addr", raftAddr}
		}
		n.start(t, bin)
		nodes = append(nodes, n)
		waitFor(t, n.id+" ready", 30*time.Second, func() bool { b, _ := os.ReadFile(n.log); return strings.Contains(string(b), "msg=ready") })
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.kill()
		}
	})
	waitFor(t, "three voters", 30*time.Second, func() bool {
		ms, err := server.NewAdminClient(nodes[0].dir).Members(context.Background())
		if err != nil || len(ms) != 3 {
			return false
		}
		for _, m := range ms {
			if m.APIAddr == "" {
				return false
			}
		}
		return true
	})
	root, err := readRoot(filepath.Join(nodes[0].dir, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}

	// Devices enroll continuously, round-robin over the nodes.
	var devs []*servertest.Device
	for range 4 {
		devs = append(devs, servertest.NewDevice(t, m))
	}
	var mu sync.Mutex
	var acks []ack
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
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
		}()
	}

	// Kill a random node every 5-10 s and restart it.
	end := time.Now().Add(duration)
	kills := 0
	for time.Now().Before(end) {
		time.Sleep(5*time.Second + rand.N(5*time.Second))
		n := nodes[rand.IntN(3)]
		n.kill()
		kills++
		time.Sleep(500 * time.Millisecond)
		n.start(t, bin)
		mu.Lock()
		t.Logf("%s: killed and restarted %s (kill %d, %d enrollments acknowledged so far)", time.Now().Format(time.TimeOnly), n.id, kills, len(acks))
		mu.Unlock()
	}
	close(stop)
	wg.Wait()

	// Independent check: stop everything cleanly, restart, let it converge,
	// then read every node's own registry.
	for _, n := range nodes {
		n.stop()
	}
	for _, n := range nodes {
		n.start(t, bin)
	}
	var hashes []string
	waitFor(t, "convergence after restart", 60*time.Second, func() bool {
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
	issued := issuedSerials(t, nodes)
	ids := map[int]string{}
	dupIDs := 0
	for _, a := range acks {
		if prev, ok := ids[a.device]; ok && prev != a.deviceID {
			dupIDs++
		}
		ids[a.device] = a.deviceID
	}
	missing, withoutRecord := map[uint64]bool{}, map[string]bool{}
	for _, n := range nodes {
		c := server.NewAdminClient(n.dir)
		c.StaleReads = true // converged and quiet: each node answers from its own state
		recs, err := c.Attestations(context.Background(), "", 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[uint64]cluster.AttestationRecord{}
		committed := map[string]bool{}
		for _, r := range recs {
			byID[r.ID] = r
			if r.Outcome == cluster.OutcomeAccepted {
				committed[r.CertificateSerial] = true
			}
		}
		for _, a := range acks {
			if r, ok := byID[a.attestationID]; !ok || r.DeviceID != a.deviceID || r.CertificateSerial != a.serial {
				missing[a.attestationID] = true
			}
		}
		for s := range issued {
			if !committed[s] {
				withoutRecord[s] = true
			}
		}
		devs, err := c.Devices(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		if extra := len(devs) - len(ids); extra > dupIDs {
			dupIDs = extra
		}
	}
	t.Logf("%d kills; %d certificates issued per the nodes' logs; all nodes at state %s", kills, len(issued), hashes[0][:16])
	line := fmt.Sprintf("invariants: acked=%d present=%d lost=%d duplicate_ids=%d certs_without_record=%d",
		len(acks), len(acks)-len(missing), len(missing), dupIDs, len(withoutRecord))
	fmt.Println(line)
	if len(missing) != 0 || dupIDs != 0 || len(withoutRecord) != 0 || len(acks) == 0 {
		t.Fatal(line)
	}
}

func readRoot(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: not PEM", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

var enrolledRE = regexp.MustCompile(`msg="device enrolled".* serial=([0-9a-f]+)`)

// issuedSerials reads, from every node's log, the serial of every certificate
// it issued.
func issuedSerials(t *testing.T, nodes []*chaosNode) map[string]bool {
	out := map[string]bool{}
	for _, n := range nodes {
		f, err := os.Open(n.log)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if m := enrolledRE.FindStringSubmatch(sc.Text()); m != nil {
				out[m[1]] = true
			}
		}
		f.Close()
	}
	return out
}
