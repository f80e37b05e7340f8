package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// namePrefix starts every namespace, link and nft table this package makes;
// the PID after it says which test process owns it (see removeStale).
const namePrefix = "ghx"

// labSeq tells apart the labs of one test process.
var labSeq atomic.Uint32

// netLab is the network the nodes live on: one network namespace per node,
// each joined by a veth pair to a bridge in the test's own namespace, which
// holds the bridge's address so the test process (the clients) reaches
// every node. Nodes reach nothing else: a namespace has no default route,
// and the bridge is attached to no outside interface.
//
// Partitions are nftables rules inside each node's namespace that drop
// (never reject) packets from and to the cut peers' addresses.
type netLab struct {
	tag    string // ghx<pid>k<seq>
	subnet [3]byte
	n      int

	mu  sync.Mutex
	cut map[[2]int]bool // unordered pairs i<j that cannot talk
}

// requiredTools are the commands the lab runs; make deps installs them.
var requiredTools = []struct{ cmd, pkg string }{{"ip", "iproute2"}, {"nft", "nftables"}}

// checkTools returns an error naming every missing tool and its package.
func checkTools() error {
	var missing []string
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t.cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t.cmd, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("chaos: network partitions need %s: run make deps, which installs them", strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		return errors.New("chaos: network namespaces and nftables need root")
	}
	return nil
}

// newNetLab makes n namespaces, their veths and the bridge. On error it
// removes what it made.
func newNetLab(n int) (_ *netLab, err error) {
	if err := checkTools(); err != nil {
		return nil, err
	}
	removeStale()
	l := &netLab{tag: fmt.Sprintf("%s%dk%d", namePrefix, os.Getpid(), labSeq.Add(1)), n: n, cut: map[[2]int]bool{}}
	if len(l.tag)+3 > 15 { // IFNAMSIZ-1: bridge "<tag>br", host veths "<tag>h<i>"
		return nil, fmt.Errorf("chaos: interface name %sbr too long", l.tag)
	}
	if l.subnet, err = freeSubnet(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	br := l.tag + "br"
	if err := run("ip", "link", "add", br, "type", "bridge"); err != nil {
		return nil, err
	}
	if err := run("ip", "addr", "add", l.hostIP()+"/24", "dev", br); err != nil {
		return nil, err
	}
	if err := run("ip", "link", "set", br, "up"); err != nil {
		return nil, err
	}
	for i := range n {
		ns, host := l.netns(i), fmt.Sprintf("%sh%d", l.tag, i)
		if err := run("ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		steps := [][]string{
			{"ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns},
			{"ip", "link", "set", host, "master", br},
			{"ip", "link", "set", host, "up"},
			{"ip", "-n", ns, "addr", "add", l.IP(i) + "/24", "dev", "eth0"},
			{"ip", "-n", ns, "link", "set", "eth0", "up"},
			{"ip", "-n", ns, "link", "set", "lo", "up"},
		}
		for _, s := range steps {
			if err := run(s[0], s[1:]...); err != nil {
				return nil, err
			}
		}
		if err := l.nft(i, "add table inet "+nftTable+"\n"+
			"add set inet "+nftTable+" cut { type ipv4_addr; }\n"+
			"add chain inet "+nftTable+" in { type filter hook input priority 0; policy accept; }\n"+
			"add chain inet "+nftTable+" out { type filter hook output priority 0; policy accept; }\n"+
			"add rule inet "+nftTable+" in ip saddr @cut drop\n"+
			"add rule inet "+nftTable+" out ip daddr @cut drop\n"); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// nftTable is the table in each node's namespace (it goes with the namespace).
const nftTable = namePrefix + "_partition"

// netns is node i's namespace name.
func (l *netLab) netns(i int) string { return fmt.Sprintf("%sn%d", l.tag, i) }

// IP is node i's address.
func (l *netLab) IP(i int) string {
	return fmt.Sprintf("%d.%d.%d.%d", l.subnet[0], l.subnet[1], l.subnet[2], 11+i)
}

// hostIP is the test process's address on the bridge.
func (l *netLab) hostIP() string {
	return fmt.Sprintf("%d.%d.%d.1", l.subnet[0], l.subnet[1], l.subnet[2])
}

// setCut replaces the set of cut pairs and applies it to every namespace,
// each in one nft transaction.
func (l *netLab) setCut(cut map[[2]int]bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for i := range l.n {
		script := "flush set inet " + nftTable + " cut\n"
		var peers []string
		for j := range l.n {
			if j != i && cut[pair(i, j)] {
				peers = append(peers, l.IP(j))
			}
		}
		if len(peers) > 0 {
			script += "add element inet " + nftTable + " cut { " + strings.Join(peers, ", ") + " }\n"
		}
		errs = append(errs, l.nft(i, script))
	}
	l.cut = cut
	return errors.Join(errs...)
}

// cuts returns a copy of the cut pairs.
func (l *netLab) cuts() map[[2]int]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[[2]int]bool, len(l.cut))
	for k, v := range l.cut {
		out[k] = v
	}
	return out
}

func pair(i, j int) [2]int {
	if i > j {
		i, j = j, i
	}
	return [2]int{i, j}
}

func (l *netLab) nft(i int, script string) error {
	cmd := exec.Command("ip", "netns", "exec", l.netns(i), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", l.netns(i), err, bytes.TrimSpace(out))
	}
	return nil
}

// close removes the namespaces (their nft tables and veth ends go with
// them) and the bridge. Call it after the nodes are stopped.
func (l *netLab) close() error {
	var errs []error
	for i := range l.n {
		if nsExists(l.netns(i)) {
			errs = append(errs, run("ip", "netns", "del", l.netns(i)))
		}
	}
	if linkExists(l.tag + "br") {
		errs = append(errs, run("ip", "link", "del", l.tag+"br"))
	}
	return errors.Join(errs...)
}

// freeSubnet picks a /24 in 198.18.0.0/15 (RFC 2544's benchmarking range,
// never routed publicly) that no interface here holds yet, starting from
// one that depends on the PID so that concurrent runs rarely collide.
func freeSubnet() ([3]byte, error) {
	used := map[[3]byte]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return [3]byte{}, err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip4 := ipn.IP.To4(); ip4 != nil {
				used[[3]byte{ip4[0], ip4[1], ip4[2]}] = true
			}
		}
	}
	start := os.Getpid()*7 + int(labSeq.Load())
	for k := range 512 {
		v := (start + k) % 512
		s := [3]byte{198, byte(18 + v/256), byte(v % 256)}
		if !used[s] {
			return s, nil
		}
	}
	return [3]byte{}, errors.New("chaos: no free /24 left in 198.18.0.0/15")
}

var staleRE = regexp.MustCompile(`^` + namePrefix + `(\d+)k\d+`)

// removeStale deletes namespaces and links of this package whose owning
// process is gone (a run that was killed before its cleanup). Those of
// live processes, another engineer's run included, are left alone.
func removeStale() {
	dead := func(name string) bool {
		m := staleRE.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() {
			return false
		}
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return errors.Is(err, os.ErrNotExist)
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && dead(f[0]) {
				// Processes the dead run started there (its nodes, if
				// they outlived it) go first: they would keep the
				// namespace alive after its name is deleted.
				if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
					for _, p := range strings.Fields(string(pids)) {
						if pid, err := strconv.Atoi(p); err == nil {
							syscall.Kill(pid, syscall.SIGKILL)
						}
					}
				}
				run("ip", "netns", "del", f[0])
			}
		}
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, ifc := range ifs {
			if dead(ifc.Name) {
				run("ip", "link", "del", ifc.Name)
			}
		}
	}
}

func nsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func run(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
