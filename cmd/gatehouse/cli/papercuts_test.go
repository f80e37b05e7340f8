package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// runAll is run with stderr too.
func runAll(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out, &errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func hashN(i int) string { return fmt.Sprintf("%064x", i+1) }

// enrollmentsCSV writes an import file of n rows in group default.
func enrollmentsCSV(t *testing.T, n int) string {
	t.Helper()
	var csv strings.Builder
	csv.WriteString("ek_public_sha256,group\n")
	for i := range n {
		csv.WriteString(hashN(i) + ",default\n")
	}
	return writeFile(t, "eks.csv", csv.String())
}

// Typos fail the command, naming what is wrong, instead of answering
// something plausible: an empty list for a misspelt state, "removed" for
// a node that never was a member.
func TestTyposAreErrors(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()

	_, err := run(t, "devices", "list", "--state", "activ", "--data-dir", e.Dir)
	if !errors.Is(err, cluster.ErrUnknownState) || !strings.Contains(err.Error(), "pending, active, disabled, quarantined, revoked, deleted") {
		t.Fatalf("devices list --state activ: %v", err)
	}
	// The server refuses it too, for clients other than this CLI.
	var p *api.Problem
	if _, err := server.NewAdminClient(e.Dir).Devices(ctx, "activ"); !errors.As(err, &p) || p.Status != 400 || !strings.Contains(p.Detail, "quarantined") {
		t.Fatalf("GET devices?state=activ: %v", err)
	}

	out, err := run(t, "cluster", "remove", "node-9", "--data-dir", e.Dir)
	if !errors.As(err, &p) || p.Status != 404 || p.Code != api.CodeNotFound || !strings.Contains(p.Detail, "node-9") || out != "" {
		t.Fatalf("cluster remove node-9: %v %q", err, out)
	}
	if Run([]string{"cluster", "remove", "node-9", "--data-dir", e.Dir}) == 0 {
		t.Fatal("cluster remove node-9 exited 0")
	}
	if _, err := run(t, "devices", "label", "some-device", "site"); err == nil || !strings.Contains(err.Error(), "not KEY=VALUE") {
		t.Fatalf("devices label without '=': %v", err)
	}

	// An import row with a label without '=' is refused, naming the label,
	// and the command fails.
	file := writeFile(t, "eks.csv", "ek_public_sha256,group,labels\n"+hashN(1)+",default,site=lyon;rack\n"+hashN(2)+",default,site=lyon\n")
	out, err = run(t, "enrollments", "import", file, "--data-dir", e.Dir)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 rows refused") || !strings.Contains(out, `row 2:`) || !strings.Contains(out, `label "rack" is not KEY=VALUE`) {
		t.Fatalf("import with a bad label: %v\n%s", err, out)
	}
	if Run([]string{"enrollments", "import", file, "--data-dir", e.Dir}) == 0 {
		t.Fatal("an import with a refused row exited 0")
	}
}

// An unterminated quote refuses the row it opens in, naming the line, and
// the rows after it are read on their own rather than swallowed.
func TestImportCSVUnterminatedQuote(t *testing.T) {
	csv := "ek_public_sha256,group\n" +
		hashN(1) + ",default\n" + // line 2
		"\"" + hashN(2) + ",default\n" + // line 3: quote never closed
		hashN(3) + ",default\n" + // line 4
		hashN(4) + ",\"default\"x\n" + // line 5: junk after a closing quote
		hashN(5) + ",default\n" // line 6
	rows, err := server.ParseImportFile(strings.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]server.ImportRow{}
	for _, r := range rows {
		got[r.Row] = r
	}
	if len(rows) != 5 {
		t.Fatalf("%d rows, want 5 (lines 2-6): %+v", len(rows), rows)
	}
	for line, hash := range map[int]string{2: hashN(1), 4: hashN(3), 6: hashN(5)} {
		if r := got[line]; r.ParseError != "" || r.EKPublicSHA256 != hash || r.Group != "default" {
			t.Errorf("line %d: %+v", line, r)
		}
	}
	for _, line := range []int{3, 5} {
		if r := got[line]; !strings.Contains(r.ParseError, fmt.Sprintf("line %d:", line)) {
			t.Errorf("line %d not refused with its line: %+v", line, r)
		}
	}
}

// --dry-run judges every row and writes nothing; the exit code says
// whether any row would be refused.
func TestImportDryRun(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	ac := server.NewAdminClient(e.Dir)
	good := writeFile(t, "good.csv", "ek_public_sha256,group\n"+hashN(1)+",default\n"+hashN(2)+",default\n")
	bad := writeFile(t, "bad.csv", "ek_public_sha256,group\n"+hashN(1)+",default\nabc,default\n")
	if _, err := ac.IndividualEnrollments(ctx); err != nil { // a linearized read: its once-per-term barrier is behind us
		t.Fatal(err)
	}
	before := e.App.Node().Stats()["last_log_index"]

	out, err := run(t, "enrollments", "import", good, "--dry-run", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "nothing written") || !regexp.MustCompile(`would accept:\s+2`).MatchString(out) {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = run(t, "enrollments", "import", bad, "--dry-run", "--data-dir", e.Dir, "-o", "json")
	var res server.ImportResult
	if err == nil || json.Unmarshal([]byte(out), &res) != nil || len(res.Accepted) != 1 || len(res.Refused) != 1 || res.Refused[0].Row != 3 {
		t.Fatalf("dry run with a bad row: %v\n%s", err, out)
	}
	if after := e.App.Node().Stats()["last_log_index"]; after != before {
		t.Fatalf("a dry run wrote to the Raft log: index %s → %s", before, after)
	}
	if list, err := ac.IndividualEnrollments(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after dry runs: %v %v", list, err)
	}
	if _, err := run(t, "enrollments", "import", good, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	if list, err := ac.IndividualEnrollments(ctx); err != nil || len(list) != 2 {
		t.Fatalf("after the import: %v %v", list, err)
	}
}

// enrollments delete removes one EK's enrollment through Raft, audited;
// an EK not listed is an error; an auditor may not delete.
func TestEnrollmentsDelete(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	file := writeFile(t, "eks.csv", "ek_public_sha256,group\n"+hashN(1)+",default\n"+hashN(2)+",default\n")
	if _, err := run(t, "enrollments", "import", file, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := run(t, "admin", "issue-cert", "--role", "auditor", "--name", "audrey", "--out", dir, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "enrollments", "delete", hashN(1), "--reason", "x", "--admin-config", filepath.Join(dir, "admin.json")); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("auditor deleted an enrollment: %v", err)
	}
	if _, err := run(t, "enrollments", "delete", hashN(1), "--data-dir", e.Dir); err == nil || !strings.Contains(err.Error(), "--reason") {
		t.Fatalf("delete without a reason: %v", err)
	}
	out, err := run(t, "enrollments", "delete", strings.ToUpper(hashN(1)), "--reason", "returned to vendor", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, hashN(1)+" deleted") {
		t.Fatalf("delete: %v %s", err, out)
	}
	list, err := server.NewAdminClient(e.Dir).IndividualEnrollments(ctx)
	if err != nil || len(list) != 1 || list[0].EKPublicSHA256 != hashN(2) {
		t.Fatalf("after delete: %+v %v", list, err)
	}
	head, err := e.App.Node().AuditHead()
	if err != nil || head.Type != cluster.AuditEnrollmentDelete || !strings.Contains(head.Detail, "returned to vendor") || !strings.Contains(head.Detail, hashN(1)) {
		t.Fatalf("audit head %+v %v", head, err)
	}
	var p *api.Problem
	if _, err := run(t, "enrollments", "delete", hashN(1), "--reason", "again", "--data-dir", e.Dir); !errors.As(err, &p) || p.Code != api.CodeNotFound {
		t.Fatalf("deleting it twice: %v", err)
	}
	if _, err := run(t, "enrollments", "delete", "not-a-hash", "--reason", "x", "--data-dir", e.Dir); !errors.As(err, &p) || p.Code != api.CodeMalformed {
		t.Fatalf("deleting a non-hash: %v", err)
	}
	if after, _ := e.App.Node().AuditHead(); after.Seq != head.Seq {
		t.Fatalf("a refused delete was audited: %+v", after)
	}
}

func TestAdminListCerts(t *testing.T) {
	e := servertest.New(t)
	dir := t.TempDir()
	for _, who := range []struct{ role, name string }{{"operator", "olga"}, {"auditor", "audrey"}} {
		if _, err := run(t, "admin", "issue-cert", "--role", who.role, "--name", who.name, "--out", filepath.Join(dir, who.name), "--data-dir", e.Dir); err != nil {
			t.Fatal(err)
		}
	}
	aud := filepath.Join(dir, "audrey", "admin.json")
	out, err := run(t, "admin", "list-certs", "-o", "json", "--admin-config", aud)
	var certs []ca.AdminCertificate
	if err != nil || json.Unmarshal([]byte(out), &certs) != nil || len(certs) != 2 {
		t.Fatalf("list-certs: %v %s", err, out)
	}
	byName := map[string]ca.AdminCertificate{}
	for _, c := range certs {
		byName[c.Name] = c
	}
	olga, audrey := byName["olga"], byName["audrey"]
	if olga.Role != ca.RoleOperator || audrey.Role != ca.RoleAuditor || olga.Revoked || audrey.Revoked || olga.NotAfter.IsZero() || olga.Serial == "" {
		t.Fatalf("certificates %+v", certs)
	}
	if _, err := run(t, "admin", "revoke-cert", olga.Serial, "--reason", "left", "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "admin", "list-certs", "--admin-config", aud)
	if err != nil || !regexp.MustCompile(olga.Serial+`\s+olga\s+operator\s+\S+\s+true`).MatchString(out) || !regexp.MustCompile(audrey.Serial+`\s+audrey\s+auditor\s+\S+\s+false`).MatchString(out) {
		t.Fatalf("list-certs after revoking olga's: %v\n%s", err, out)
	}
}

func TestBackupInspect(t *testing.T) {
	e := servertest.New(t)
	backup := filepath.Join(t.TempDir(), "b.tar")
	if _, err := run(t, "cluster", "backup", backup, "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	// Offline: the data directory names no running node.
	out, err := run(t, "cluster", "backup", "inspect", backup, "-o", "json", "--data-dir", t.TempDir())
	var in server.BackupInspection
	if err != nil || json.Unmarshal([]byte(out), &in) != nil {
		t.Fatalf("inspect: %v %s", err, out)
	}
	if !in.Valid || in.Meta.NodeID != "node-1" || in.Meta.TrustDomain != servertest.TrustDomain || in.Meta.RaftIndex == 0 || len(in.Meta.RootSHA256) != 64 {
		t.Fatalf("inspection %+v", in)
	}
	sizes := map[string]int64{}
	for _, f := range in.Files {
		sizes[f.Name] = f.Size
	}
	if sizes["state.db"] == 0 || sizes["meta.json"] == 0 || len(in.Files) != 8 {
		t.Fatalf("files %+v", in.Files)
	}
	out, err = run(t, "cluster", "backup", "inspect", backup)
	if err != nil || !regexp.MustCompile(`signature:\s+valid`).MatchString(out) || !strings.Contains(out, in.Meta.RootSHA256) {
		t.Fatalf("inspect table: %v\n%s", err, out)
	}
	// A changed byte: still described, reported invalid, exit non-zero.
	raw, _ := os.ReadFile(backup)
	i := bytes.Index(raw, []byte("-----BEGIN CERTIFICATE-----")) + 40
	raw[i] ^= 1
	bad := writeFile(t, "bad.tar", string(raw))
	out, err = run(t, "cluster", "backup", "inspect", bad, "-o", "json")
	if err == nil || json.Unmarshal([]byte(out), &in) != nil || in.Valid || in.Error == "" || in.Meta.NodeID != "node-1" {
		t.Fatalf("inspect a damaged backup: %v %s", err, out)
	}
	if _, err := run(t, "cluster", "backup", "inspect", writeFile(t, "x.tar", "not a tar")); !errors.Is(err, server.ErrBadBackup) {
		t.Fatalf("inspect a non-archive: %v", err)
	}
}

// policy show -o json prints the document policy apply takes: applying
// it again gives a version with the same content hash, from a file or
// piped (policy show -o json | policy apply -).
func TestPolicyShowRoundTrip(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	doc := `{"groups":[{"name":"floor","mode":"auto","match":{"models":["m<1>&2"]}},{"name":"default","mode":"approve"}]}`
	if _, err := run(t, "policy", "apply", writeFile(t, "p.json", doc), "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "policy", "show", "-o", "json", "--data-dir", e.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.ParsePolicy([]byte(out)); err != nil {
		t.Fatalf("policy show -o json is not a policy document: %v\n%s", err, out)
	}
	if _, err := run(t, "policy", "apply", writeFile(t, "shown.json", out), "--data-dir", e.Dir); err != nil {
		t.Fatal(err)
	}
	v1, err1 := server.NewAdminClient(e.Dir).Policy(ctx, 1)
	v2, err2 := server.NewAdminClient(e.Dir).Policy(ctx, 2)
	if err1 != nil || err2 != nil || v1.SHA256 != v2.SHA256 || !bytes.Equal(v1.Document, v2.Document) {
		t.Fatalf("round trip changed the policy: v1 %s %s, v2 %s %s (%v %v)", v1.SHA256, v1.Document, v2.SHA256, v2.Document, err1, err2)
	}
	for _, sub := range []string{"test", "apply"} {
		var stdout, stderr bytes.Buffer
		root := newRoot(&stdout, &stderr)
		root.SetIn(strings.NewReader(out))
		root.SetArgs([]string{"policy", sub, "-", "--data-dir", e.Dir})
		if err := root.Execute(); err != nil {
			t.Fatalf("policy %s - (stdin): %v %s", sub, err, stderr.String())
		}
	}
	v3, err := server.NewAdminClient(e.Dir).Policy(ctx, 3)
	if err != nil || v3.SHA256 != v1.SHA256 {
		t.Fatalf("policy apply - (stdin): v3 %+v, %v; want the hash of v1 %s", v3, err, v1.SHA256)
	}
}

// Every list command prints [] for nothing, never null.
func TestEmptyListsJSON(t *testing.T) {
	e := servertest.New(t)
	for _, args := range [][]string{
		{"devices", "list"},
		{"devices", "list", "--state", "revoked"},
		{"attestations", "list"},
		{"enrollments", "list"},
		{"policy", "history"},
		{"admin", "list-certs"},
	} {
		out, err := run(t, append(args, "-o", "json", "--data-dir", e.Dir)...)
		if err != nil || strings.TrimSpace(out) != "[]" {
			t.Errorf("%s -o json on an empty registry: %v %q", strings.Join(args, " "), err, out)
		}
	}
	// The admin API answers [] too, for clients other than this CLI.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(e.Dir, "admin.sock"))
	}}}
	for _, path := range []string{"/admin/v1/devices", "/admin/v1/attestations", "/admin/v1/enrollments", "/admin/v1/policy/history", "/admin/v1/admin-certs"} {
		resp, err := hc.Get("http://gatehouse" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "[]" {
			t.Errorf("GET %s on an empty registry: %d %q", path, resp.StatusCode, body)
		}
	}
}

// pflag takes a `backticked` word of a flag's usage as its value
// placeholder: every placeholder must be one word, so a quoted command
// line can never again turn into "--admin-config admin issue-cert".
func TestFlagPlaceholders(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				n++
				name, usage := pflag.UnquoteUsage(f)
				if strings.ContainsAny(name, " \t") || strings.Contains(usage, "`") {
					t.Errorf("%s --%s: placeholder %q, usage %q", c.CommandPath(), f.Name, name, usage)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	walk(root)
	if n < 50 {
		t.Fatalf("walked only %d flags", n)
	}
	var help bytes.Buffer
	root.SetOut(&help)
	root.SetArgs([]string{"devices", "list", "--help"})
	if err := root.Execute(); err != nil || !strings.Contains(help.String(), "--admin-config FILE") {
		t.Fatalf("help: %v\n%s", err, help.String())
	}
}

// Progress goes to a terminal only: into buffers and pipes, an import
// writes its summary and not one progress byte.
func TestNoProgressWhenNotATerminal(t *testing.T) {
	e := servertest.New(t)
	file := enrollmentsCSV(t, 30)
	out, errOut, err := runAll(t, "enrollments", "import", file, "--batch", "5", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "accepted:") || errOut != "" || strings.ContainsAny(out, "\r[") {
		t.Fatalf("import into buffers: %v stdout %q stderr %q", err, out, errOut)
	}
	// Real pipes (files, but not terminals).
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	root := newRoot(pw, pw)
	root.SetArgs([]string{"cluster", "backup", filepath.Join(t.TempDir(), "b.tar"), "--data-dir", e.Dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var got bytes.Buffer
	got.ReadFrom(pr)
	if strings.ContainsAny(got.String(), "\r[") || !strings.HasPrefix(got.String(), "wrote ") {
		t.Fatalf("backup into a pipe wrote %q", got.String())
	}
	if isTerminal(pw) || isTerminal(&got) {
		t.Fatal("a pipe or a buffer counted as a terminal")
	}
}
