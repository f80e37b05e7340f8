package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// units are the systemd units the packages ship.
var units = []string{
	"gatehouse/gatehouse.service",
	"../firmware-client/systemd/gatehouse-enroll.service",
	"../firmware-client/systemd/gatehouse-agent.service",
}

// The appliance unit keeps its hardening: a regression here widens what a
// compromised node process can reach.
func TestApplianceUnitHardening(t *testing.T) {
	want := map[string]string{
		"User":                    "gatehouse",
		"Group":                   "gatehouse",
		"StateDirectory":          "gatehouse",
		"StateDirectoryMode":      "0700",
		"UMask":                   "0077",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"RestrictSUIDSGID":        "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"LoadCredential":          "ca-password:/etc/gatehouse/ca-password",
	}
	got := unitKeys(t, "gatehouse/gatehouse.service")
	for k, v := range want {
		vs, ok := got[k]
		if !ok || vs[len(vs)-1] != v {
			t.Errorf("%s=%q, want %q", k, vs, v)
		}
	}
	if fs := got["SystemCallFilter"]; strings.Join(fs, " ") != "@system-service ~@privileged" {
		t.Errorf("SystemCallFilter %q", fs)
	}
	for _, k := range []string{"DynamicUser", "ReadWritePaths", "PrivateNetwork"} {
		if vs := got[k]; len(vs) > 0 && vs[len(vs)-1] != "" {
			t.Errorf("%s=%q widens the sandbox", k, vs)
		}
	}
}

// unitKeys reads a unit's Key=Value lines (every value of a repeated key).
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = append(m[k], v)
		}
	}
	return m
}

// systemd itself accepts every shipped unit without a warning (unknown
// keys and unparsable values are only warnings to systemd, so any output
// fails), and rates the appliance's exposure at most 2.0 of 10.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze is not installed (Debian package systemd; `make deps` installs it): the units cannot be verified")
	}
	dir := t.TempDir()
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// verify wants the ExecStart binaries to exist: stand-ins here.
		for _, name := range []string{"gatehouse", "gatehouse-agent"} {
			stand := filepath.Join(dir, name)
			if err := os.WriteFile(stand, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			b = bytes.ReplaceAll(b, []byte("/usr/bin/"+name+" "), []byte(stand+" "))
		}
		unit := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(unit, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", "--man=no", unit).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		}
		if filepath.Base(u) == "gatehouse.service" {
			out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", unit).CombinedOutput()
			if err != nil {
				t.Errorf("systemd-analyze security %s: %v\n%s", u, err, out)
			}
		}
	}
}

func TestDebVersion(t *testing.T) {
	at := time.Date(2026, 11, 29, 13, 25, 19, 0, time.FixedZone("", 3600))
	for in, want := range map[string]string{
		"v1.2.3":                             "1.2.3",
		"1.2.3":                              "1.2.3",
		"v1.2.3-rc.1":                        "1.2.3~rc.1",
		"v1.2.3-4-g8cfbb88":                  "1.2.3+4.g8cfbb88",
		"v1.2.3-rc1-4-g8cfbb88-dirty":        "1.2.3~rc1+4.g8cfbb88+dirty",
		"8cfbb88":                            "0.0~git20261129122519.8cfbb88",
		"8cfbb88-dirty":                      "0.0~git20261129122519.8cfbb88+dirty",
		"v0.0.0-20261129122519-8cfbb88abcde": "0.0~git20261129122519.8cfbb88abcde",
		"v0.0.0-20261129122519-8cfbb88abcde+dirty": "0.0~git20261129122519.8cfbb88abcde+dirty",
	} {
		got, err := DebVersion(in, at)
		if err != nil || got != want {
			t.Errorf("DebVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "(devel)", "main", "v1.2", "1.2.3; rm -rf /"} {
		if got, err := DebVersion(in, at); !errors.Is(err, ErrVersion) {
			t.Errorf("DebVersion(%q) = %q, %v; want ErrVersion", in, got, err)
		}
	}
	if got, err := DebVersion("8cfbb88", time.Time{}); !errors.Is(err, ErrVersion) {
		t.Errorf("a revision without a time: %q, %v", got, err)
	}
}

// The version of a binary built from an untagged tree comes from git.
func TestVersionFromGit(t *testing.T) {
	bin := t.TempDir()
	fakeBin(t, bin, "gatehouse")
	v, err := Version(filepath.Join(bin, "gatehouse"), "..")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := exec.Command("git", "-C", "..", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(v, strings.TrimSpace(string(rev))) {
		t.Fatalf("version %q does not name HEAD %s", v, rev)
	}
}
