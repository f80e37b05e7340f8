// Command mkdevices generates swtpm devices with manufacturer-style EK
// certificates: a test manufacturer CA in DIR/manufacturer (root.pem,
// issuercert.pem) and N TPM states in DIR/tpm-001 …. With -run it also
// starts them, writes their URIs to DIR/devices.txt, and stops them on
// SIGINT or SIGTERM. `make demo` uses it.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
)

func main() {
	dir := flag.String("dir", "", "output directory (required)")
	n := flag.Int("n", 3, "number of devices")
	run := flag.Bool("run", false, "start the devices and keep them running until SIGINT/SIGTERM")
	flag.Parse()
	if err := mkdevices(*dir, *n, *run); err != nil {
		fmt.Fprintln(os.Stderr, "mkdevices:", err)
		os.Exit(1)
	}
}

func mkdevices(dir string, n int, run bool) error {
	if dir == "" || n < 1 {
		return fmt.Errorf("usage: mkdevices -dir DIR [-n N] [-run]")
	}
	if err := swtpm.Check(); err != nil {
		return err
	}
	m, err := swtpm.NewManufacturer(filepath.Join(dir, "manufacturer"), "Gatehouse Demo TPM Vendor")
	if err != nil {
		return fmt.Errorf("manufacturer CA: %w", err)
	}
	devs, err := m.NewDevices(dir, n)
	if err != nil {
		return err
	}
	fmt.Printf("created %d TPM states under %s; EK roots in %s\n", n, dir, m.Dir)
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
	for _, d := range devs {
		p, err := d.Start()
		if err != nil {
			return err
		}
		procs = append(procs, p)
		uris = append(uris, p.URI())
	}
	list := filepath.Join(dir, "devices.txt")
	if err := os.WriteFile(list+".tmp", []byte(strings.Join(uris, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(list+".tmp", list); err != nil {
		return err
	}
	for _, u := range uris {
		fmt.Println(u)
	}
	s := <-sig
	fmt.Printf("%v: stopping %d swtpm processes\n", s, len(procs))
	return nil
}
