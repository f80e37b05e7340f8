package cli

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The shipped appliance unit runs `gatehouse serve` with flags serve has,
// on the state directory systemd creates and the password credential
// systemd hands over (%d is the credentials directory).
func TestSystemdUnitMatchesServe(t *testing.T) {
	const unit = "../../../packaging/gatehouse/gatehouse.service"
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var exec, cred, state string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "ExecStart":
			exec = v
		case "LoadCredential":
			cred = v
		case "StateDirectory":
			state = v
		}
	}
	args := strings.Fields(exec)
	if len(args) < 2 || args[0] != "/usr/bin/gatehouse" || args[1] != "serve" {
		t.Fatalf("ExecStart %q", exec)
	}
	root := newRoot(io.Discard, io.Discard)
	cmd, rest, err := root.Find(args[1:])
	if err != nil || cmd.Name() != "serve" {
		t.Fatalf("no serve command: %v", err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatal(err)
	}
	if err := cmd.ValidateRequiredFlags(); err != nil {
		t.Fatal(err)
	}
	if d, _ := cmd.Flags().GetString("data-dir"); d != "/var/lib/"+state {
		t.Fatalf("--data-dir %q is not the StateDirectory %q", d, state)
	}
	name, _, _ := strings.Cut(cred, ":")
	if pw := cmd.Flags().Lookup("password-file").Value.String(); pw != filepath.Join("%d", name) {
		t.Fatalf("--password-file %q is not the credential %q", pw, name)
	}
}
