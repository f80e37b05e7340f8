package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
)

// `make cluster` (cluster.sh up), tried as its user would: the commands it
// prints work as printed, and the device it tells how to make enrolls (it
// was refused ek_untrusted when mkdevices minted a new manufacturer); a
// second `make cluster` says "already running" and leaves the nodes alone;
// `make cluster-stop` keeps the data, and the next `make cluster` restarts
// the same cluster, the device still in it. `make cluster-clean` deletes
// the cluster but keeps, beside the backups, the CA password that opens
// them: a kept backup must still restore.
func TestClusterRecipe(t *testing.T) {
	swtpm.Require(t)
	bin, dir, backups := t.TempDir(), t.TempDir(), t.TempDir()
	for _, pkg := range []string{"cmd/gatehouse", "cmd/gatehouse-agent", "testvectors/mkdevices"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(bin, filepath.Base(pkg)), "../../"+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sh := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "bash", args...)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "BIN="+bin, "BACKUPS="+backups)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	D := filepath.Join(dir, "cluster")
	t.Cleanup(func() { sh("cluster.sh", "stop", D) })
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{"node-1.log", "node-2.log", "node-3.log", "more.log"} {
			l, _ := os.ReadFile(filepath.Join(D, f))
			b.WriteString("--- " + f + "\n" + string(l))
		}
		return b.String()
	}

	out, err := sh("cluster.sh", "up", D)
	if err != nil || !strings.Contains(out, "Three nodes are running") {
		t.Fatalf("up: %v\n%s\n%s", err, out, logs())
	}
	// Every indented line it printed, in order, as a user pastes them.
	var recipe []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "  ") {
			recipe = append(recipe, strings.TrimSpace(l))
		}
	}
	if len(recipe) != 6 || !strings.HasPrefix(recipe[3], bin+"/mkdevices -manufacturer ") {
		t.Fatalf("recipe %q", recipe)
	}
	script := "set -e\n" + strings.Join(recipe, "\n") + "\nkill %1\nwait\n"
	out, err = sh("-c", script)
	if err != nil || !strings.Contains(out, "enrolled device ") || !strings.Contains(out, "wrote "+backups+"/cluster.tar") {
		t.Fatalf("recipe: %v\n%s\n%s", err, out, logs())
	}
	id := strings.Fields(out[strings.Index(out, "enrolled device ")+len("enrolled device "):])[0]

	pids, err := os.ReadFile(filepath.Join(D, "pids"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := sh("cluster.sh", "up", D); err != nil || !strings.Contains(out, "already running") {
		t.Fatalf("second up: %v\n%s", err, out)
	}
	if again, _ := os.ReadFile(filepath.Join(D, "pids")); string(again) != string(pids) {
		t.Fatalf("second up replaced the nodes: %q, was %q", again, pids)
	}

	if out, err := sh("cluster.sh", "stop", D); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if _, err := sh("cluster.sh", "running", D); err == nil {
		t.Fatal("running after stop")
	}
	if _, err := os.Stat(filepath.Join(D, "node-1", "config.json")); err != nil {
		t.Fatalf("stop deleted the data: %v", err)
	}
	out, err = sh("cluster.sh", "up", D)
	if err != nil || !strings.Contains(out, "restarting the stopped cluster") {
		t.Fatalf("up after stop: %v\n%s\n%s", err, out, logs())
	}
	list, err := exec.CommandContext(ctx, filepath.Join(bin, "gatehouse"), "devices", "list", "--data-dir", filepath.Join(D, "node-2"), "-o", "json").CombinedOutput()
	if err != nil || !strings.Contains(string(list), id) {
		t.Fatalf("device %s not in the restarted cluster: %v\n%s", id, err, list)
	}

	rootPEM, err := os.ReadFile(filepath.Join(D, "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(rootPEM)
	if block == nil {
		t.Fatalf("%s/root.crt is not PEM", D)
	}
	sum := sha256.Sum256(block.Bytes)
	kept := filepath.Join(backups, "ca-password-"+hex.EncodeToString(sum[:8]))
	out, err = sh("cluster.sh", "clean", D)
	if err != nil || !strings.Contains(out, kept) {
		t.Fatalf("clean: %v\n%s", err, out)
	}
	if _, err := os.Stat(D); !os.IsNotExist(err) {
		t.Fatalf("clean left %s: %v", D, err)
	}
	restored := filepath.Join(t.TempDir(), "restored")
	initOut, err := exec.CommandContext(ctx, filepath.Join(bin, "gatehouse"), "init", "--from-backup", filepath.Join(backups, "cluster.tar"),
		"--data-dir", restored, "--password-file", kept).CombinedOutput()
	if err != nil || !strings.Contains(string(initOut), "initialized "+restored+" from ") {
		t.Fatalf("init --from-backup with the kept password: %v\n%s", err, initOut)
	}
}
