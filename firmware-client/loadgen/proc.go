package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is sysconf(_SC_CLK_TCK): the unit of utime and stime in
// /proc/PID/stat. Go has no sysconf; it is 100 on every Linux
// architecture Go supports (USER_HZ is fixed by the kernel ABI).
const clockTicks = 100

// procCPU is a process's user+system CPU time so far, from /proc/PID/stat
// (fields 14 and 15, counted after the parenthesised command name, which
// may itself contain spaces and parentheses).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procMem is a process's resident set now (VmRSS) and at its peak (VmHWM),
// in bytes, from /proc/PID/status.
func procMem(pid int) (rss, hwm uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v) // "123456 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %q", pid, k, v)
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	return rss, hwm, nil
}

// selfCPU is this process's user+system CPU time (getrusage).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startMeasure reads the nodes' CPU times at a window's start.
func startMeasure(nodes []Node) ([]time.Duration, error) {
	cpu0 := make([]time.Duration, len(nodes))
	for i, n := range nodes {
		if n.PID == 0 {
			continue
		}
		var err error
		if cpu0[i], err = procCPU(n.PID); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.API, err)
		}
	}
	return cpu0, nil
}

// finishMeasure fills in what each node spent since startMeasure, and its
// memory; a node killed during the window was measured then.
func finishMeasure(nodes []NodeResult, cpu0 []time.Duration) error {
	for i := range nodes {
		n := &nodes[i]
		if n.PID == 0 || n.Killed {
			continue
		}
		c, err := procCPU(n.PID)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.API, err)
		}
		n.CPU = c - cpu0[i]
		if n.RSS, n.HWM, err = procMem(n.PID); err != nil {
			return fmt.Errorf("node %s: %w", n.API, err)
		}
		n.MeasureOK = true
	}
	return nil
}
