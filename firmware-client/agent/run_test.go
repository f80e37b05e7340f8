package agent

import (
	"bufio"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The daemon enrolls at first boot, then renews again and again with fresh
// attestation, each time a new certificate for the same TPM key, until it
// is stopped.
func TestDaemonEnrollsThenRenews(t *testing.T) {
	e := servertest.New(t)
	p := swtpm.StartTest(t, e.Mfr)
	tpm, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	dir := t.TempDir()
	ids := e.RunDaemon(t, tpm, dir, 100*time.Millisecond, 3)
	for i := 1; i < len(ids); i++ {
		if ids[i].DeviceID != ids[0].DeviceID || ids[i].Certificate.SerialNumber.Cmp(ids[i-1].Certificate.SerialNumber) == 0 ||
			string(ids[i].Certificate.RawSubjectPublicKeyInfo) != string(ids[0].Certificate.RawSubjectPublicKeyInfo) {
			t.Fatalf("identity %d is not a renewal of the same key", i)
		}
	}
	saved, err := fwclient.LoadIdentity(dir)
	if err != nil || saved.Certificate.SerialNumber.Cmp(ids[len(ids)-1].Certificate.SerialNumber) != 0 {
		t.Fatalf("saved identity is not the newest: %v", err)
	}
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: ids[0].DeviceID})
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]int{}
	for _, r := range recs {
		stages[r.Stage+"/"+r.Outcome]++
	}
	if stages["complete/accepted"] != 1 || stages["renew/accepted"] < 2 {
		t.Fatalf("attestation records %v", stages)
	}
}

// RenewalDelay lands within a twelfth of two thirds of the lifetime.
func TestRenewalDelay(t *testing.T) {
	now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: now, NotAfter: now.Add(30 * 24 * time.Hour)}
	lo, hi := 20*24*time.Hour-60*time.Hour, 20*24*time.Hour+60*time.Hour
	seen := map[time.Duration]bool{}
	for i := 0; i < 200; i++ {
		d := fwclient.RenewalDelay(cert, now)
		if d < lo || d > hi {
			t.Fatalf("delay %v outside [%v, %v]", d, lo, hi)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct delays: no jitter", len(seen))
	}
	if d := fwclient.RenewalDelay(cert, now.Add(29*24*time.Hour)); d != 0 {
		t.Fatalf("overdue renewal waits %v", d)
	}
}

// The shipped systemd units run commands and flags the agent has.
func TestSystemdUnitsMatchTheAgent(t *testing.T) {
	units, _ := filepath.Glob("../systemd/*.service")
	if len(units) != 2 {
		t.Fatalf("units %v", units)
	}
	for _, u := range units {
		f, err := os.Open(u)
		if err != nil {
			t.Fatal(err)
		}
		var exec string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
				exec = v
			}
		}
		f.Close()
		args := strings.Fields(strings.ReplaceAll(exec, "${GATEHOUSE_SERVER}", "https://gatehouse.example:8443"))
		if len(args) < 2 || filepath.Base(args[0]) != "gatehouse-agent" {
			t.Fatalf("%s: ExecStart %q", u, exec)
		}
		root := newRoot()
		cmd, rest, err := root.Find(args[1:])
		if err != nil || cmd == root {
			t.Fatalf("%s: no command %q: %v", u, args[1], err)
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if err := cmd.ValidateRequiredFlags(); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
	}
}
