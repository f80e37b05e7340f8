// Command mkdevices generates swtpm devices with manufacturer-style EK
// certificates: a test manufacturer CA in DIR/manufacturer (root.pem,
// issuercert.pem) and N TPM states in DIR/tpm-001 …. With -manufacturer
// it reuses an earlier run's manufacturer instead, so that a cluster which
// already trusts that manufacturer accepts the new devices. With -run it also
// starts them, writes their URIs to DIR/devices.txt, and stops them on
// SIGINT or SIGTERM; with -boot-log it first "boots" each device by
// extending a real event log into its PCRs. `make demo` uses it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

func main() {
	dir := flag.String("dir", "", "output directory (required)")
	n := flag.Int("n", 3, "number of devices")
	run := flag.Bool("run", false, "start the devices and keep them running until SIGINT/SIGTERM")
	bootLog := flag.String("boot-log", "", "with -run: extend this TCG event log into every device's PCRs, as firmware would, and write each device's log to DIR/device-N.eventlog")
	tamperLast := flag.Bool("tamper-last", false, "with -boot-log: the last device boots a log whose first EFI boot application measurement differs")
	mfr := flag.String("manufacturer", "", "use the manufacturer CA in this directory (an earlier run's DIR/manufacturer) instead of minting a new one")
	flag.Parse()
	if err := mkdevices(*dir, *mfr, *n, *run, *bootLog, *tamperLast); err != nil {
		fmt.Fprintln(os.Stderr, "mkdevices:", err)
		os.Exit(1)
	}
}

func mkdevices(dir, mfrDir string, n int, run bool, bootLog string, tamperLast bool) error {
	if dir == "" || n < 1 || (bootLog != "" && !run) || (tamperLast && bootLog == "") {
		return fmt.Errorf("usage: mkdevices -dir DIR [-manufacturer DIR] [-n N] [-run [-boot-log FILE [-tamper-last]]]")
	}
	var logs [][]byte
	if bootLog != "" {
		b, err := os.ReadFile(bootLog)
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			logs = append(logs, b)
		}
		if tamperLast {
			l, err := attest.ParseEventLog(b)
			if err != nil {
				return err
			}
			if len(l.Facts.BootApps) == 0 {
				return fmt.Errorf("%s has no EFI boot application to tamper with", bootLog)
			}
			if logs[n-1], err = testvectors.FlipDigest(b, l.Facts.BootApps[0].Digests["sha256"]); err != nil {
				return err
			}
		}
	}
	if err := swtpm.Check(); err != nil {
		return err
	}
	var m *swtpm.Manufacturer
	var err error
	if mfrDir != "" {
		m, err = swtpm.LoadManufacturer(mfrDir)
	} else {
		m, err = swtpm.NewManufacturer(filepath.Join(dir, "manufacturer"), "Gatehouse Demo TPM Vendor")
	}
	if err != nil {
		return fmt.Errorf("manufacturer CA: %w", err)
	}
	// A list from an earlier run names processes that are gone.
	if err := os.Remove(filepath.Join(dir, "devices.txt")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	devs, err := existingDevices(dir, n)
	if err != nil {
		return err
	}
	if devs != nil {
		fmt.Printf("reusing %d TPM states under %s\n", n, dir)
	} else {
		if devs, err = m.NewDevices(dir, n); err != nil {
			return err
		}
		fmt.Printf("created %d TPM states under %s; EK roots in %s\n", n, dir, m.Dir)
	}
	if !run {
		return nil
	}
	// Catch signals before starting anything, so nothing is left behind.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	var procs []*swtpm.Process
	defer func() {
		for _, p := range procs {
			p.Stop()
		}
	}()
	var uris []string
	for i, d := range devs {
		p, err := d.Start()
		if err != nil {
			return err
		}
		procs = append(procs, p)
		uris = append(uris, p.URI())
		if logs != nil {
			if err := p.Boot(logs[i]); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("device-%d.eventlog", i+1)), logs[i], 0o644); err != nil {
				return err
			}
		}
	}
	list := filepath.Join(dir, "devices.txt")
	if err := os.WriteFile(list+".tmp", []byte(strings.Join(uris, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(list+".tmp", list); err != nil {
		return err
	}
	// Once they stop, the list names nothing: a script waiting for the
	// next run's list must not read this one.
	defer os.Remove(list)
	for _, u := range uris {
		fmt.Println(u)
	}
	s := <-sig
	fmt.Printf("%v: stopping %d swtpm processes\n", s, len(procs))
	return nil
}

// existingDevices returns the n TPM states an earlier run left in dir, so
// that running the same command again starts the same devices; nil when
// there are none, an error when only some are there.
func existingDevices(dir string, n int) ([]*swtpm.Device, error) {
	var devs []*swtpm.Device
	for i := 1; i <= n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("tpm-%03d", i))
		if _, err := os.Stat(filepath.Join(d, "tpm2-00.permall")); err == nil {
			devs = append(devs, &swtpm.Device{StateDir: d})
		}
	}
	switch len(devs) {
	case 0:
		return nil, nil
	case n:
		return devs, nil
	}
	return nil, fmt.Errorf("%s holds %d of the %d TPM states asked for: use another -dir", dir, len(devs), n)
}
