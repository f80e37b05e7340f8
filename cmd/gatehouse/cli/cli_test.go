package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestInitCreatesPasswordAndRefusesTwice(t *testing.T) {
	m := servertest.New(t).Mfr
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(roots, servertest.EKRoots(m), 0o644); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "pw")
	data := filepath.Join(dir, "data")
	args := []string{"init", "--data-dir", data, "--password-file", pw, "--ek-roots", roots, "--trust-domain", "fleet.example.com"}
	out, err := run(t, args...)
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	if !strings.Contains(out, "wrote a new CA key password") {
		t.Fatalf("init output %q", out)
	}
	st, err := os.Stat(pw)
	if err != nil || st.Mode().Perm() != 0o600 || st.Size() < 32 {
		t.Fatalf("password file %v %v", st, err)
	}
	if _, err := run(t, args...); err == nil || !strings.Contains(err.Error(), "already initialized") {
		t.Fatalf("second init: %v", err)
	}
	// Without --ek-roots the shipped vendor bundle alone is trusted.
	if _, err := run(t, "init", "--data-dir", filepath.Join(dir, "d2"), "--password-file", pw); err != nil {
		t.Fatalf("init with the shipped bundle: %v", err)
	}
	shipped, err := attest.LoadCertificates(filepath.Join(dir, "d2", "ek-roots.pem"))
	if err != nil || len(shipped) < 100 {
		t.Fatalf("shipped bundle: %d certificates, %v", len(shipped), err)
	}
	added, err := attest.LoadCertificates(filepath.Join(data, "ek-roots.pem"))
	if err != nil || len(added) != len(shipped)+2 {
		t.Fatalf("bundle plus the test manufacturer's CAs: %d certificates, want %d: %v", len(added), len(shipped)+2, err)
	}
	if _, err := run(t, "init", "--data-dir", filepath.Join(dir, "d4"), "--password-file", pw, "--replace-ek-roots"); err == nil {
		t.Fatal("--replace-ek-roots without --ek-roots succeeded")
	}
	if _, err := run(t, "init", "--data-dir", filepath.Join(dir, "d5"), "--password-file", pw, "--ek-roots", roots, "--replace-ek-roots"); err != nil {
		t.Fatal(err)
	}
	if only, _ := attest.LoadCertificates(filepath.Join(dir, "d5", "ek-roots.pem")); len(only) != 2 {
		t.Fatalf("replaced bundle has %d certificates, want 2", len(only))
	}
	if _, err := run(t, "init", "--data-dir", filepath.Join(dir, "d3"), "--password-file", pw, "--ek-roots", roots, "--trust-domain", "Not A Domain"); err == nil {
		t.Fatal("init accepted a bad trust domain")
	}
}

// The registry commands read a running node through its admin socket.
func TestRegistryCommands(t *testing.T) {
	e := servertest.New(t)
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}

	out, err := run(t, "devices", "list", "--data-dir", e.Dir, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var devs []cluster.Device
	if err := json.Unmarshal([]byte(out), &devs); err != nil || len(devs) != 1 || devs[0].ID != id.DeviceID {
		t.Fatalf("devices list -o json: %v %s", err, out)
	}
	out, err = run(t, "devices", "list", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, id.DeviceID) || !strings.Contains(out, "active") {
		t.Fatalf("devices list: %v %s", err, out)
	}
	out, err = run(t, "devices", "show", id.DeviceID, "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, id.Certificate.SerialNumber.Text(16)) {
		t.Fatalf("devices show: %v %s", err, out)
	}
	if _, err := run(t, "devices", "show", "nope", "--data-dir", e.Dir); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("devices show unknown: %v", err)
	}

	out, err = run(t, "attestations", "show", strconv.FormatUint(id.AttestationID, 10), "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "ACCEPTED") || !strings.Contains(out, "credential_activation") || !strings.Contains(out, "PCR sha256[0-16,23]") {
		t.Fatalf("attestations show: %v\n%s", err, out)
	}
	out, err = run(t, "attestations", "list", "--data-dir", e.Dir, "--device", id.DeviceID, "-o", "json")
	var recs []cluster.AttestationRecord
	if err != nil || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || recs[0].ID != id.AttestationID {
		t.Fatalf("attestations list: %v %s", err, out)
	}
	out, err = run(t, "status", "--data-dir", e.Dir, "-o", "json")
	if err != nil || !strings.Contains(out, `"leader": true`) || !strings.Contains(out, `"certificates_issued": 1`) {
		t.Fatalf("status: %v %s", err, out)
	}
	if _, err := run(t, "devices", "quarantine", id.DeviceID, "--data-dir", e.Dir); err == nil || !strings.Contains(err.Error(), "--reason") {
		t.Fatalf("quarantine without a reason: %v", err)
	}
	out, err = run(t, "devices", "quarantine", id.DeviceID, "--reason", "odd PCR 7", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "is now quarantined") {
		t.Fatalf("devices quarantine: %v %s", err, out)
	}
	out, err = run(t, "devices", "list", "--state", "quarantined", "--data-dir", e.Dir, "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &devs) != nil || len(devs) != 1 {
		t.Fatalf("devices list --state quarantined: %v %s", err, out)
	}
	if out, err = run(t, "devices", "list", "--state", "active", "--data-dir", e.Dir, "-o", "json"); err != nil || json.Unmarshal([]byte(out), &devs) != nil || len(devs) != 0 {
		t.Fatalf("devices list --state active: %v %s", err, out)
	}
	out, err = run(t, "devices", "show", id.DeviceID, "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "quarantine: active → quarantined by local:") || !strings.Contains(out, "odd PCR 7") {
		t.Fatalf("devices show history: %v %s", err, out)
	}
	if _, err := run(t, "devices", "approve", id.DeviceID, "--reason", "x", "--data-dir", e.Dir); err == nil || !strings.Contains(err.Error(), "illegal_transition") {
		t.Fatalf("approve of a quarantined device: %v", err)
	}
	if _, err := run(t, "devices", "list", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "is gatehouse serve running") {
		t.Fatalf("devices list without a node: %v", err)
	}
}

func TestClusterCommands(t *testing.T) {
	e := servertest.New(t)
	out, err := run(t, "cluster", "token", "create", "--data-dir", e.Dir, "--ttl", "1m")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.ParseJoinToken(out); err != nil {
		t.Fatalf("token %q: %v", out, err)
	}
	out, err = run(t, "cluster", "members", "--data-dir", e.Dir, "-o", "json")
	var ms []cluster.Member
	if err != nil || json.Unmarshal([]byte(out), &ms) != nil || len(ms) != 1 || !ms[0].Leader || !ms[0].Voter {
		t.Fatalf("members: %v %s", err, out)
	}
	backup := filepath.Join(t.TempDir(), "b.tar")
	if _, err := run(t, "cluster", "backup", backup, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(backup); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "cluster", "transfer-leadership", "--data-dir", e.Dir); err == nil {
		t.Fatal("a single node transferred leadership to nobody")
	}
	if out, err := run(t, "cluster", "status", "--data-dir", e.Dir); err != nil || !regexp.MustCompile(`health:\s+ok`).MatchString(out) {
		t.Fatalf("status: %v %s", err, out)
	}
	// A cluster this build created is at its feature version; the node
	// table says what each member's build applies.
	if out, err := run(t, "cluster", "status", "--data-dir", e.Dir); err != nil ||
		!regexp.MustCompile(fmt.Sprintf(`feature version:\s+%d \(this build applies up to %d\)`, cluster.FeatureVersion, cluster.FeatureVersion)).MatchString(out) ||
		!regexp.MustCompile(fmt.Sprintf(`(?m)^node-1\s+leader\s+.*\s%d$`, cluster.FeatureVersion)).MatchString(out) {
		t.Fatalf("status: %v %s", err, out)
	}

	// serve --join on a member with a token for another cluster stops
	// before starting anything (the token pins another root).
	tmp := t.TempDir()
	pw, tokFile := filepath.Join(tmp, "pw"), filepath.Join(tmp, "token")
	foreign := server.JoinToken{ID: strings.Repeat("a", 16), Secret: bytes.Repeat([]byte{1}, 32), RootHash: strings.Repeat("0", 64)}
	if os.WriteFile(pw, servertest.Password, 0o600) != nil || os.WriteFile(tokFile, []byte(foreign.String()), 0o600) != nil {
		t.Fatal("write files")
	}
	if _, err := run(t, "serve", "--data-dir", e.Dir, "--password-file", pw, "--join", "127.0.0.1:1", "--token-file", tokFile); !errors.Is(err, server.ErrOtherCluster) {
		t.Fatalf("serve --join with another cluster's token: %v", err)
	}
}
