// Command packaging builds the .deb packages of the appliance (gatehouse:
// binary, hardened systemd unit, service user, /etc/gatehouse) and of the
// device agent (gatehouse-agent: binary and its units), with nfpm as a
// library. `make package` runs it on bin/ and writes build/packages/.
//
// It is its own module so that nfpm and its dependencies never enter the
// appliance's module graph, and its own binary so that none of it is linked
// into gatehouse.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	src := flag.String("src", "..", "repository root (units and scripts are read from there)")
	bin := flag.String("bin", "../bin", "directory holding the gatehouse and gatehouse-agent binaries")
	out := flag.String("out", "../build/packages", "output directory")
	version := flag.String("version", "", "package version (default: from the binary's build info, else git describe)")
	flag.Parse()
	if err := run(*src, *bin, *out, *version); err != nil {
		fmt.Fprintln(os.Stderr, "package:", err)
		os.Exit(1)
	}
}

func run(src, bin, out, version string) error {
	if version == "" {
		v, err := Version(filepath.Join(bin, "gatehouse"), src)
		if err != nil {
			return err
		}
		version = v
	}
	for _, b := range []string{"gatehouse", "gatehouse-agent"} {
		if err := Static(filepath.Join(bin, b)); err != nil {
			return err
		}
	}
	arch, err := Arch(filepath.Join(bin, "gatehouse"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, p := range Packages(src, bin, version, arch) {
		path, err := Build(p, out)
		if err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
		fmt.Println(path)
	}
	return nil
}
