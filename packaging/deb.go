package main

import (
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

const (
	maintainer = "Gatehouse maintainers <gatehouse@example.com>"
	homepage   = "https://github.com/gatehouse-dev/gatehouse"
	license    = "Apache-2.0"
)

// Packages describes the two packages: where each file comes from in the
// repository (src) and the binaries directory (bin), and where it goes.
//
// gatehouse and gatehouse-agent conflict: both keep their state in
// /var/lib/gatehouse and their settings in /etc/gatehouse.
func Packages(src, bin, version, arch string) []*nfpm.Info {
	file := func(from, to string, mode os.FileMode) *files.Content {
		return &files.Content{Source: from, Destination: to, FileInfo: &files.ContentFileInfo{Mode: mode, Owner: "root", Group: "root"}}
	}
	conf := func(from, to string) *files.Content {
		c := file(from, to, 0o644)
		c.Type = files.TypeConfig
		return c
	}
	dir := func(to string, mode os.FileMode) *files.Content {
		return &files.Content{Destination: to, Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: mode, Owner: "root", Group: "root"}}
	}
	p := func(s ...string) string { return filepath.Join(append([]string{src}, s...)...) }
	info := func(name, desc string, contents files.Contents, scripts nfpm.Scripts, conflicts ...string) *nfpm.Info {
		return &nfpm.Info{
			Name: name, Arch: arch, Platform: "linux", Version: version, VersionSchema: "none",
			Section: "admin", Maintainer: maintainer, Homepage: homepage, License: license,
			Description: desc,
			Overridables: nfpm.Overridables{
				Contents: contents, Scripts: scripts, Conflicts: conflicts,
				Deb: nfpm.Deb{Compression: "gzip"},
			},
		}
	}
	return []*nfpm.Info{
		info("gatehouse", "TPM-backed zero-touch provisioning appliance\n"+
			" One node of a Gatehouse cluster: verifies TPM attestation, records devices\n"+
			" in a Raft-replicated registry and issues device certificates from an\n"+
			" embedded step-ca. Runs as the gatehouse user under a hardened unit.",
			files.Contents{
				file(filepath.Join(bin, "gatehouse"), "/usr/bin/gatehouse", 0o755),
				file(p("packaging", "gatehouse", "gatehouse.service"), "/usr/lib/systemd/system/gatehouse.service", 0o644),
				file(p("packaging", "gatehouse", "sysusers.conf"), "/usr/lib/sysusers.d/gatehouse.conf", 0o644),
				dir("/etc/gatehouse", 0o755),
				conf(p("packaging", "gatehouse", "gatehouse.env"), "/etc/gatehouse/gatehouse.env"),
			},
			nfpm.Scripts{PostInstall: p("packaging", "gatehouse", "postinst.sh"), PreRemove: p("packaging", "gatehouse", "prerm.sh")},
			"gatehouse-agent"),
		info("gatehouse-agent", "Gatehouse device agent (TPM enrollment and renewal)\n"+
			" Enrolls this device with a Gatehouse appliance at first boot by TPM\n"+
			" attestation and keeps its certificate renewed.",
			files.Contents{
				file(filepath.Join(bin, "gatehouse-agent"), "/usr/bin/gatehouse-agent", 0o755),
				file(p("firmware-client", "systemd", "gatehouse-enroll.service"), "/usr/lib/systemd/system/gatehouse-enroll.service", 0o644),
				file(p("firmware-client", "systemd", "gatehouse-agent.service"), "/usr/lib/systemd/system/gatehouse-agent.service", 0o644),
				dir("/etc/gatehouse", 0o755),
				conf(p("firmware-client", "systemd", "agent.env.example"), "/etc/gatehouse/agent.env"),
			},
			nfpm.Scripts{PostInstall: p("packaging", "agent", "postinst.sh"), PreRemove: p("packaging", "agent", "prerm.sh")},
			"gatehouse"),
	}
}

// Build writes info's .deb into dir and returns its path.
func Build(info *nfpm.Info, dir string) (string, error) {
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return "", err
	}
	path := filepath.Join(dir, deb.Default.ConventionalFileName(info))
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(f.Name(), path)
}

// ErrDynamic: a binary that needs a dynamic loader and shared libraries,
// which would need Depends the packager does not compute.
var ErrDynamic = errors.New("dynamically linked (build with CGO_ENABLED=0)")

// Static checks that binary is a statically linked ELF executable.
func Static(binary string) error {
	f, err := elf.Open(binary)
	if err != nil {
		return fmt.Errorf("%s: %w", binary, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("%s: %w", binary, ErrDynamic)
		}
	}
	return nil
}

// Arch is the Debian architecture of a Go binary (its GOARCH: Debian and Go
// spell amd64, arm64 and riscv64 alike; nfpm maps the others).
func Arch(binary string) (string, error) {
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		return "", fmt.Errorf("%s: %w", binary, err)
	}
	for _, s := range bi.Settings {
		if s.Key == "GOARCH" {
			return s.Value, nil
		}
	}
	return "", fmt.Errorf("%s: no GOARCH in its build info", binary)
}

// Version is the package version of a binary: its module version when it
// was built from a tagged module, else the VCS revision it records, else
// what `git describe` says of the repository at src.
func Version(binary, src string) (string, error) {
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		return "", fmt.Errorf("%s: %w", binary, err)
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return DebVersion(v, time.Time{})
	}
	var rev, modified string
	var at time.Time
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at, _ = time.Parse(time.RFC3339, s.Value)
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if modified == "true" {
			rev += "-dirty"
		}
		return DebVersion(rev, at)
	}
	out, err := exec.Command("git", "-C", src, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "", fmt.Errorf("no version in %s's build info, and git describe: %w", binary, err)
	}
	t, err := exec.Command("git", "-C", src, "log", "-1", "--format=%cI").Output()
	if err != nil {
		return "", fmt.Errorf("git log: %w", err)
	}
	at, err = time.Parse(time.RFC3339, strings.TrimSpace(string(t)))
	if err != nil {
		return "", fmt.Errorf("git log: %w", err)
	}
	return DebVersion(strings.TrimSpace(string(out)), at)
}

var (
	tagged   = regexp.MustCompile(`^v?([0-9]+\.[0-9]+\.[0-9]+)(?:-([0-9A-Za-z.]+?))??(?:-([0-9]+)-g([0-9a-f]+))?(-dirty)?$`)
	revision = regexp.MustCompile(`^([0-9a-f]{7,40})(-dirty)?$`)
	// A Go pseudo-version, as the go command stamps an untagged main module.
	pseudo = regexp.MustCompile(`^v0\.0\.0-([0-9]{14})-([0-9a-f]{12})(\+dirty)?$`)
	// ErrVersion: a version that maps to no Debian version.
	ErrVersion = errors.New("not a version")
)

// DebVersion maps a Go module version or git describe output to a Debian
// version that sorts as the releases do: v1.2.3 is 1.2.3, v1.2.3-rc1 is
// 1.2.3~rc1 (before 1.2.3), 4 commits after v1.2.3 is 1.2.3+4.gHASH, and an
// untagged revision is 0.0~gitYYYYMMDDhhmmss.HASH (ordered by commit time).
// A dirty tree adds +dirty.
func DebVersion(v string, at time.Time) (string, error) {
	if m := pseudo.FindStringSubmatch(v); m != nil {
		return "0.0~git" + m[1] + "." + m[2] + m[3], nil
	}
	if m := tagged.FindStringSubmatch(v); m != nil {
		s := m[1]
		if m[2] != "" {
			s += "~" + m[2]
		}
		if m[3] != "" {
			s += "+" + m[3] + ".g" + m[4]
		}
		if m[5] != "" {
			s += "+dirty"
		}
		return s, nil
	}
	if m := revision.FindStringSubmatch(v); m != nil {
		if at.IsZero() {
			return "", fmt.Errorf("%w: revision %s without a commit time", ErrVersion, v)
		}
		s := "0.0~git" + at.UTC().Format("20060102150405") + "." + m[1]
		if m[2] != "" {
			s += "+dirty"
		}
		return s, nil
	}
	return "", fmt.Errorf("%w: %q", ErrVersion, v)
}
