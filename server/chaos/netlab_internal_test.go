package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen runs a TCP server in namespace i that answers "hi from i".
func listen(t *testing.T, l *netLab, i int) {
	t.Helper()
	if _, err := exec.LookPath("socat"); err != nil {
		t.Fatal("socat is missing: run make deps, which installs it")
	}
	cmd := exec.Command("ip", "netns", "exec", l.netns(i), "socat",
		"TCP-LISTEN:9000,fork,reuseaddr", fmt.Sprintf("SYSTEM:echo hi from %d", i))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// dialFrom connects from namespace from to node to's listener and returns
// what it read, the error, and how long it took.
func dialFrom(l *netLab, from, to int) (string, error, time.Duration) {
	start := time.Now()
	out, err := exec.Command("ip", "netns", "exec", l.netns(from), "socat", "-u",
		fmt.Sprintf("TCP:%s:9000,connect-timeout=2", l.IP(to)), "-").CombinedOutput()
	return strings.TrimSpace(string(out)), err, time.Since(start)
}

// dialHost connects from the test's own namespace.
func dialHost(l *netLab, to int) (string, error) {
	c, err := net.DialTimeout("tcp", l.IP(to)+":9000", 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 64)
	n, _ := c.Read(b)
	return strings.TrimSpace(string(b[:n])), nil
}

// TestNetLabDropsSilently checks the partition primitive itself: a cut
// pair's connections time out in both directions (dropped, not refused),
// other pairs and the test process still connect, healing restores the
// link, and close removes everything.
func TestNetLabDropsSilently(t *testing.T) {
	l, err := newNetLab(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.close() })
	for i := range 3 {
		listen(t, l, i)
	}
	want := func(from, to int) {
		t.Helper()
		var out string
		var err error
		for range 20 { // socat needs a moment to listen
			if out, err, _ = dialFrom(l, from, to); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || out != fmt.Sprintf("hi from %d", to) {
			t.Errorf("%d -> %d: %q, %v; want a connection", from, to, out, err)
		}
	}
	cut := func(from, to int) {
		t.Helper()
		out, err, took := dialFrom(l, from, to)
		if err == nil {
			t.Errorf("%d -> %d connected across a cut: %q", from, to, out)
			return
		}
		// A drop times out; a reject (RST, ICMP) would fail at once.
		if took < 1500*time.Millisecond || !strings.Contains(out, "timed out") {
			t.Errorf("%d -> %d failed after %s with %q: want a silent drop (a connect timeout)", from, to, took, out)
		}
	}
	for _, p := range [][2]int{{0, 1}, {1, 0}, {0, 2}, {2, 1}} {
		want(p[0], p[1])
	}
	if err := l.setCut(map[[2]int]bool{pair(0, 1): true}); err != nil {
		t.Fatal(err)
	}
	cut(0, 1)
	cut(1, 0)
	want(0, 2)
	want(2, 1)
	for i := range 3 {
		if out, err := dialHost(l, i); err != nil || out != fmt.Sprintf("hi from %d", i) {
			t.Errorf("test process -> %d under a partition: %q, %v", i, out, err)
		}
	}
	if err := l.setCut(map[[2]int]bool{}); err != nil {
		t.Fatal(err)
	}
	want(0, 1)
	want(1, 0)

	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if nsExists(l.netns(i)) {
			t.Errorf("namespace %s left after close", l.netns(i))
		}
	}
	if linkExists(l.tag + "br") {
		t.Errorf("bridge %sbr left after close", l.tag)
	}
}

// TestNetLabRemovesStale checks that a namespace and a link left by a run
// whose process is gone are removed when a lab starts, with any process
// still running in that namespace, and that those of a live process are
// not.
func TestNetLabRemovesStale(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("%s%dk1", namePrefix, max+1) // no process can have this PID
	live := fmt.Sprintf("%s%dk1", namePrefix, os.Getppid())
	for _, tag := range []string{dead, live} {
		if err := run("ip", "netns", "add", tag+"n0"); err != nil {
			t.Fatal(err)
		}
		if err := run("ip", "link", "add", tag+"br", "type", "bridge"); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, tag := range []string{dead, live} {
			if nsExists(tag + "n0") {
				run("ip", "netns", "del", tag+"n0")
			}
			if linkExists(tag + "br") {
				run("ip", "link", "del", tag+"br")
			}
		}
	})
	// A node the dead run left running in its namespace.
	orphan := exec.Command("ip", "netns", "exec", dead+"n0", "sleep", "300")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- orphan.Wait() }()
	t.Cleanup(func() { orphan.Process.Kill() })
	l, err := newNetLab(1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("a process left in the dead run's namespace still runs")
	}
	if nsExists(dead+"n0") || linkExists(dead+"br") {
		t.Errorf("the dead run's namespace or bridge (%s) was not removed", dead)
	}
	if !nsExists(live+"n0") || !linkExists(live+"br") {
		t.Errorf("a live process's namespace or bridge (%s) was removed", live)
	}
}

// TestFaultPrimitives checks which pairs each network fault cuts (the
// drop itself is TestNetLabDropsSilently's) and that bad groupings are
// refused.
func TestFaultPrimitives(t *testing.T) {
	l, err := newNetLab(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.close() })
	c := &Cluster{Nodes: make([]*Node, 3), lab: l}
	check := func(what string, err error, want ...[2]int) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := c.Cuts(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: cuts %v, want %v", what, got, want)
		}
	}
	check("split 2/1", c.Partition([]int{0, 1}, []int{2}), [2]int{0, 2}, [2]int{1, 2})
	check("isolate 1", c.Isolate(1), [2]int{0, 1}, [2]int{1, 2})
	check("bridge 0-1-2", c.Bridge(0, 1, 2), [2]int{0, 2})
	check("cut 0-1 too", c.Cut(1, 0), [2]int{0, 1}, [2]int{0, 2})
	check("link 0-2", c.Link(0, 2), [2]int{0, 1})
	check("flap 1-2", c.Flap(context.Background(), 1, 2, time.Millisecond, 2), [2]int{0, 1})
	check("heal", c.HealAll())
	for _, bad := range [][][]int{{{0, 1}}, {{0, 1}, {1, 2}}, {{0, 1, 2, 3}}} {
		if err := c.Partition(bad...); err == nil {
			t.Errorf("Partition(%v) accepted", bad)
		}
	}
	if err := c.Bridge(0, 0, 2); err == nil {
		t.Error("Bridge(0, 0, 2) accepted")
	}
	check("after refusals", nil)
}

// TestMissingToolsFail checks that without ip and nft the harness fails
// naming both and the command that installs them (it must never skip).
func TestMissingToolsFail(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := checkTools()
	if err == nil {
		t.Fatal("no error with an empty PATH")
	}
	for _, want := range []string{"ip (Debian package iproute2)", "nft (Debian package nftables)", "make deps"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}
