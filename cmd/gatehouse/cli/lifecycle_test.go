package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// An operator's and an auditor's session through the CLI: admin
// certificates, labels, configuration, revocation, audit export and
// offline verification of a clean and of damaged exports.
func TestOperatorAndAuditorCommands(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, who := range []struct{ role, name string }{{"operator", "olga"}, {"auditor", "audrey"}} {
		out, err := run(t, "admin", "issue-cert", "--role", who.role, "--name", who.name, "--out", filepath.Join(dir, who.name), "--data-dir", e.Dir)
		if err != nil || !strings.Contains(out, "--admin-config") {
			t.Fatalf("issue-cert %s: %v %s", who.role, err, out)
		}
		if st, err := os.Stat(filepath.Join(dir, who.name, who.name+".key")); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("key file: %v %v", st, err)
		}
	}
	op := []string{"--admin-config", filepath.Join(dir, "olga", "admin.json")}
	aud := []string{"--admin-config", filepath.Join(dir, "audrey", "admin.json")}
	remote := func(who []string, args ...string) (string, error) { return run(t, append(args, who...)...) }

	out, err := remote(op, "devices", "label", id.DeviceID, "site=lyon", "rack=4")
	if err != nil || !strings.Contains(out, "rack=4,site=lyon") {
		t.Fatalf("devices label: %v %s", err, out)
	}
	if out, err = remote(op, "devices", "label", id.DeviceID, "--remove", "rack"); err != nil || !strings.Contains(out, "labels: site=lyon") {
		t.Fatalf("devices label --remove: %v %s", err, out)
	}
	if _, err = remote(aud, "devices", "label", id.DeviceID, "x=y"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("auditor labelled a device: %v", err)
	}

	group := filepath.Join(dir, "group.json")
	override := filepath.Join(dir, "device.json")
	os.WriteFile(group, []byte(`{"ntp":"pool.ntp.org","log":{"level":"info","remote":"syslog.example"}}`), 0o644)
	os.WriteFile(override, []byte(`{"log":{"level":"debug","remote":null}}`), 0o644)
	if out, err = remote(op, "config", "set", "--group", "default", group); err != nil || !strings.Contains(out, "policy v1") {
		t.Fatalf("config set --group: %v %s", err, out)
	}
	if out, err = remote(op, "config", "set", "--device", id.DeviceID, override); err != nil || !strings.Contains(out, "override v1") {
		t.Fatalf("config set --device: %v %s", err, out)
	}
	out, err = remote(aud, "config", "show", "--device", id.DeviceID, "-o", "json")
	var dc server.DeviceConfig
	if err != nil || json.Unmarshal([]byte(out), &dc) != nil {
		t.Fatalf("config show: %v %s", err, out)
	}
	var compact bytes.Buffer
	json.Compact(&compact, dc.Effective.Configuration)
	if got := compact.String(); got != `{"log":{"level":"debug"},"ntp":"pool.ntp.org"}` {
		t.Fatalf("effective configuration %s", got)
	}
	// The device sees the same over mTLS.
	cfg, err := e.Client.Config(ctx, d.TPM, id)
	if err != nil || string(cfg.Configuration) != compact.String() || cfg.PolicyVersion != 1 || cfg.DeviceVersion != 1 {
		t.Fatalf("GET /v1/config: %+v %v", cfg, err)
	}

	if out, err = remote(op, "devices", "revoke", id.DeviceID, "--reason", "returned to vendor"); err != nil || !strings.Contains(out, "is now revoked") {
		t.Fatalf("devices revoke: %v %s", err, out)
	}
	if out, err = remote(aud, "devices", "show", id.DeviceID); err != nil || !strings.Contains(out, "revoke: active → revoked by admin:olga(operator): returned to vendor") {
		t.Fatalf("devices show: %v %s", err, out)
	}

	// The auditor exports and verifies offline against the root.
	root := filepath.Join(dir, "audrey", "root.crt")
	for _, format := range []string{"jsonl", "csv"} {
		file := filepath.Join(dir, "audit."+format)
		if _, err := remote(aud, "audit", "export", "--format", format, "--out", file); err != nil {
			t.Fatalf("audit export: %v", err)
		}
		args := []string{"audit", "verify", file, "--root", root}
		if format == "csv" {
			key := filepath.Join(dir, "audit-key.pem")
			out, err := remote(aud, "audit", "key")
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(key, []byte(out), 0o644)
			args = append(args, "--key-cert", key)
		}
		out, err := run(t, args...)
		if err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "), "result: OK") {
			t.Fatalf("audit verify %s: %v\n%s", format, err, out)
		}
		for _, want := range []string{cluster.AuditEnrollmentAccepted, cluster.AuditDeviceLabels, cluster.AuditPolicyApplied, cluster.AuditDeviceConfig, cluster.AuditDeviceState, cluster.AuditAdminDenied} {
			if b, _ := os.ReadFile(file); !strings.Contains(string(b), want) {
				t.Fatalf("%s export lacks %s", format, want)
			}
		}
		// Damage: flip one byte in line 3, delete line 5, swap lines 7 and 8.
		b, _ := os.ReadFile(file)
		lines := strings.SplitAfter(string(b), "\n")
		// The first entry a device caused (the cluster's seed entries come first).
		flip := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "device:") })
		damage := map[string]func([]string) []string{
			"flip": func(l []string) []string {
				l[flip] = strings.Replace(l[flip], "device:", "devicf:", 1)
				return l
			},
			"delete": func(l []string) []string { return append(l[:4], l[5:]...) },
			"swap": func(l []string) []string {
				l[6], l[7] = l[7], l[6]
				return l
			},
			// Drop the first three entries; cut the last entry and the signed range.
			"headcut": func(l []string) []string { return append(l[:1], l[4:]...) },
			"tailcut": func(l []string) []string { return l[:len(l)-3] },
		}
		wantProblem := map[string]string{"flip": fmt.Sprintf("line %d (seq %d): modified", flip+1, flip), "delete": "line 5 (seq 5): removed", "swap": "line 8 (seq 6): reordered",
			"headcut": "(seq 4): truncated_head", "tailcut": "truncated_tail"}
		for name, fn := range damage {
			bad := filepath.Join(dir, name+"."+format)
			os.WriteFile(bad, []byte(strings.Join(fn(append([]string(nil), lines...)), "")), 0o644)
			out, err := run(t, append([]string{"audit", "verify", bad}, args[3:]...)...)
			if err == nil || !strings.Contains(out, wantProblem[name]) || !strings.Contains(out, "FAILED") {
				t.Fatalf("%s %s: %v\n%s", format, name, err, out)
			}
		}
	}
	// The auditor keeps the live signed head; an export that ends before a
	// head kept later is reported.
	headFile := filepath.Join(dir, "head.json")
	out, err = remote(aud, "audit", "head", "-o", "json")
	if err != nil {
		t.Fatalf("audit head: %v", err)
	}
	os.WriteFile(headFile, []byte(out), 0o644)
	verifyArgs := []string{"audit", "verify", filepath.Join(dir, "audit.jsonl"), "--root", root, "--expect-head", headFile}
	if out, err := run(t, verifyArgs...); err != nil || !strings.Contains(out, "1 of 1 compared") {
		t.Fatalf("export against the head seen at export time: %v\n%s", err, out)
	}
	if _, err := remote(op, "devices", "label", id.DeviceID, "after=export"); err != nil {
		t.Fatal(err)
	}
	if out, err = remote(aud, "audit", "head"); err != nil || !strings.Contains(out, "signature:") {
		t.Fatalf("audit head: %v %s", err, out)
	}
	out, _ = remote(aud, "audit", "head", "-o", "json")
	os.WriteFile(headFile, []byte(out), 0o644)
	if out, err := run(t, verifyArgs...); err == nil || !strings.Contains(out, "truncated_tail") {
		t.Fatalf("export against a later head: %v\n%s", err, out)
	}

	// A root the auditor does not trust does not certify the key.
	other := servertest.New(t)
	if _, err := run(t, "audit", "verify", filepath.Join(dir, "audit.jsonl"), "--root", filepath.Join(other.Dir, "ca", "root.crt")); err == nil {
		t.Fatal("verified under a foreign root")
	}
}

// Import a CSV of EK certificates and hashes: valid rows become individual
// enrollments (an EK with no chaining certificate then enrolls into its
// group with its labels); every refused row is reported with why.
func TestEnrollmentsImport(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	if _, err := server.NewAdminClient(e.Dir).ApplyPolicy(ctx, "test", []byte(`{"groups":[{"name":"floor","mode":"auto","match":{"models":["never"]}},{"name":"default","mode":"auto"}]}`)); err != nil {
		t.Fatal(err)
	}
	d := servertest.NewDevice(t, e.Mfr)
	ekHash, err := attest.PublicKeySHA256(d.EK.Public)
	if err != nil {
		t.Fatal(err)
	}
	other := servertest.NewDevice(t, e.Mfr)
	csv := fmt.Sprintf("ek_public_sha256,ek_certificate,group,labels\n"+
		"%s,,floor,site=lyon;rack=4\n"+ // line 2: valid
		"%s,,floor,\n"+ // line 3: duplicate of line 2
		"abc,,floor,\n"+ // line 4: bad hash
		",,floor,\n"+ // line 5: nothing
		"%s,,nogroup,\n"+ // line 6: unknown group
		",%s,default,\n", // line 7: a certificate (base64 DER)
		ekHash, ekHash, strings.Repeat("1", 64), base64.StdEncoding.EncodeToString(other.EK.Certificate.Raw))
	file := filepath.Join(t.TempDir(), "eks.csv")
	os.WriteFile(file, []byte(csv), 0o644)
	out, err := run(t, "enrollments", "import", file, "--data-dir", e.Dir, "--batch", "4")
	if err == nil || !strings.Contains(err.Error(), "4 of 6 rows refused") {
		t.Fatalf("an import with refused rows: %v", err)
	}
	norm := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"rows: 6", "accepted: 2", "refused: 4", "row 3: the same EK as row 2", "row 4: ek_public_sha256 \"abc\"", "row 5: neither", "row 6: policy v1 has no group \"nogroup\""} {
		if !strings.Contains(norm, want) {
			t.Fatalf("summary lacks %q:\n%s", want, out)
		}
	}
	list, err := server.NewAdminClient(e.Dir).IndividualEnrollments(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("individual enrollments %+v %v", list, err)
	}
	// The imported EK enrolls into floor (its match would never select it)
	// with the imported labels.
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := e.App.Node().Device(id.DeviceID)
	if dev.Group != "floor" || dev.Labels["site"] != "lyon" || dev.Labels["rack"] != "4" {
		t.Fatalf("device %+v", dev)
	}
}

// An auditor saves an attestation's evidence and re-checks it offline.
func TestAttestationsVerify(t *testing.T) {
	e := servertest.New(t)
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	os.WriteFile(roots, servertest.EKRoots(e.Mfr), 0o644)
	bundle := filepath.Join(dir, "evidence.json")
	att := fmt.Sprint(id.AttestationID)
	if _, err := run(t, "attestations", "evidence", att, "--out", bundle, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "attestations", "verify", "--bundle", bundle, "--ek-roots", roots)
	if err != nil || !strings.Contains(out, "reproduced from the evidence") || !strings.Contains(out, "credential_activation") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	// Offline without the test manufacturer's CA the EK chain no longer verifies.
	out, err = run(t, "attestations", "verify", "--bundle", bundle)
	if err == nil || !strings.Contains(out, "NOT REPRODUCED") {
		t.Fatalf("verify offline without the EK roots: %v\n%s", err, out)
	}
	// Online, an auditor with no shell on the node re-checks against the
	// cluster's served set, which holds the CA given at init.
	if out, err := run(t, "admin", "issue-cert", "--role", "auditor", "--name", "audrey", "--out", filepath.Join(dir, "audrey"), "--data-dir", e.Dir); err != nil {
		t.Fatalf("issue-cert: %v %s", err, out)
	}
	out, err = run(t, "attestations", "verify", att, "--admin-config", filepath.Join(dir, "audrey", "admin.json"))
	if err != nil || !strings.Contains(out, "reproduced from the evidence") {
		t.Fatalf("verify online: %v\n%s", err, out)
	}
}

// ekroots and settings through the CLI: list (-o json), add a PEM and a
// DER file, refuse a leaf, remove by fingerprint; settings show and set.
func TestEKRootsAndSettingsCommands(t *testing.T) {
	e := servertest.New(t)
	dir := t.TempDir()
	list := func() []server.EKRootInfo {
		t.Helper()
		out, err := run(t, "ekroots", "list", "-o", "json", "--data-dir", e.Dir)
		var roots []server.EKRootInfo
		if err != nil || json.Unmarshal([]byte(out), &roots) != nil {
			t.Fatalf("ekroots list: %v\n%s", err, out)
		}
		return roots
	}
	if roots := list(); len(roots) != 2 {
		t.Fatalf("%d roots after init, want the two given", len(roots))
	}
	m2 := servertest.New(t).Mfr
	pemFile, derFile, garbageFile := filepath.Join(dir, "m2.pem"), filepath.Join(dir, "m2-root.der"), filepath.Join(dir, "garbage.pem")
	os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m2.Intermediate.Raw}), 0o644)
	os.WriteFile(derFile, m2.Root.Raw, 0o644)
	for _, f := range []string{pemFile, derFile} {
		if out, err := run(t, "ekroots", "add", f, "--data-dir", e.Dir); err != nil || !strings.Contains(out, "1 written") || !strings.Contains(out, actor()) {
			t.Fatalf("ekroots add %s: %v\n%s", f, err, out)
		}
	}
	if out, err := run(t, "ekroots", "add", pemFile, "--data-dir", e.Dir); err != nil || !strings.Contains(out, "0 of 1 written") {
		t.Fatalf("ekroots add again: %v\n%s", err, out)
	}
	os.WriteFile(garbageFile, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"), 0o644)
	if out, err := run(t, "ekroots", "add", garbageFile, "--data-dir", e.Dir); err == nil || !strings.Contains(err.Error(), "does not parse") {
		t.Fatalf("ekroots add garbage: %v\n%s", err, out)
	}
	roots := list()
	fp := ""
	for _, r := range roots {
		if strings.Contains(r.Subject, attest.Name(m2.Intermediate.Subject)) {
			fp = r.SHA256
		}
	}
	if len(roots) != 4 || fp == "" {
		t.Fatalf("after adds: %+v", roots)
	}
	if out, err := run(t, "ekroots", "list", "--data-dir", e.Dir); err != nil || !strings.Contains(out, attest.Name(m2.Root.Subject)) {
		t.Fatalf("ekroots list table: %v\n%s", err, out)
	}
	if out, err := run(t, "ekroots", "remove", fp, "--data-dir", e.Dir); err != nil || !strings.Contains(out, fp) {
		t.Fatalf("ekroots remove: %v\n%s", err, out)
	}
	if out, err := run(t, "ekroots", "remove", fp, "--data-dir", e.Dir); err == nil {
		t.Fatalf("ekroots remove twice: %s", out)
	}
	if roots := list(); len(roots) != 3 {
		t.Fatalf("%d roots after remove", len(roots))
	}

	out, err := run(t, "settings", "set", "approval_retry=5s", "retain_refused=0s", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "approval_retry:") || !strings.Contains(out, "5s") {
		t.Fatalf("settings set: %v\n%s", err, out)
	}
	out, err = run(t, "settings", "show", "-o", "json", "--data-dir", e.Dir)
	var v server.SettingsView
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Settings.ApprovalRetry.Duration.String() != "5s" || v.Settings.RetainRefused.Duration != 0 || v.Version != 2 {
		t.Fatalf("settings show: %v\n%s", err, out)
	}
	for _, bad := range [][]string{{"approval_retry"}, {"approval_retry=5s", "approval_retry=6s"}, {"no_such_setting=1s"}} {
		if out, err := run(t, append(append([]string{"settings", "set"}, bad...), "--data-dir", e.Dir)...); err == nil {
			t.Fatalf("settings set %v: %s", bad, out)
		}
	}
}
