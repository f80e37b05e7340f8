package server

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
)

// notRefusals are sentinels that never answer an HTTP request through the
// problem tables, and why.
var notRefusals = map[string]string{
	"server.ErrNotInitialized":        "startup (serve, init) error, not an HTTP answer",
	"server.ErrAlreadyInitialized":    "init error, not an HTTP answer",
	"server.ErrBadBackup":             "restore answers backup_invalid itself (admin.go); also a CLI error",
	"server.ErrAuditSink":             "startup error: a bad audit_sink stops the node",
	"server.ErrOtherCluster":          "startup and join error: the data directory or token is another cluster's",
	"server.ErrUnknownConfigKey":      "startup error: config.json names a key Gatehouse does not know",
	"server.ErrAuditExportUnreadable": "offline audit verification (CLI, console) error, not an HTTP answer",
	"server.ErrNoAuditKeyCert":        "offline audit verification (CLI, console) error, not an HTTP answer",
	"cluster.ErrAddrInUse":            "startup error: the Raft address is taken",
	"cluster.ErrCorruptState":         "startup error: raft.db or fsm.db is unreadable",
	"server.ErrNodeRunning":           "offline CLI error (cluster rebuild on a running node), not an HTTP answer",
	"cluster.ErrAuditRange":           "offline audit verification finding, not an HTTP answer",
	"cluster.ErrIndexMismatch":        "a registry fault (Node.VerifyIndexes, or a query meeting one): an internal error, logged",
	"server.errACMEDevice":            "answered as an RFC 8555 problem (unauthorized) by step-ca's ACME handlers, not through the problem tables",
	"cluster.ErrCloseTimeout":         "shutdown error (Node.Close), logged; not an HTTP answer",
	"cluster.ErrSnapshotFormat":       "snapshot install error inside Raft (the node refuses the snapshot, changing nothing); not an HTTP answer",
	"cluster.ErrCertificateValidity":  "the server built an inconsistent accept (validity it decided itself): an internal error, logged",
	"server.errBuildTooOld":           "answered 409 build_too_old by handleJoin itself (a joiner's build, not a device or admin refusal)",
	"cluster.ErrNotSent":              "always wrapped with ErrNotLeader (503 unavailable); tells Node.submit a command may be sent again",
	"cluster.ErrCatchingUp":           "a Raft RPC answer (a rebuilt node refusing a vote), between nodes; not an HTTP answer",
}

// sentinels returns every package-level `var X = errors.New(...)` of the
// package in dir, as "pkg.X"; of another package, only the exported ones
// (the only ones the server can see, let alone map).
func sentinels(t *testing.T, dir, pkg string) []string {
	t.Helper()
	var out []string
	for _, f := range parseDir(t, dir) {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, v := range vs.Values {
					if call, ok := v.(*ast.CallExpr); ok && exprString(call.Fun) == "errors.New" && (pkg == "server" || vs.Names[i].IsExported()) {
						out = append(out, pkg+"."+vs.Names[i].Name)
					}
				}
			}
		}
	}
	return out
}

func parseDir(t *testing.T, dir string) []*ast.File {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

func exprString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return exprString(e.X) + "." + e.Sel.Name
	}
	return fmt.Sprintf("%T", e)
}

// tableEntries returns the error of every row of the package-level
// composite literal named table in this package's source, as "pkg.X".
func tableEntries(t *testing.T, table string) []string {
	t.Helper()
	var out []string
	for _, f := range parseDir(t, ".") {
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok || len(vs.Names) != 1 || vs.Names[0].Name != table || len(vs.Values) != 1 {
				return true
			}
			for _, row := range vs.Values[0].(*ast.CompositeLit).Elts {
				name := exprString(row.(*ast.CompositeLit).Elts[0])
				if !strings.Contains(name, ".") {
					name = "server." + name
				}
				out = append(out, name)
			}
			return false
		})
	}
	if len(out) == 0 {
		t.Fatalf("no rows found in %s", table)
	}
	return out
}

// Every refusal has a code: every sentinel error of server, attest and
// cluster is in a problem table (or listed in notRefusals with why), and
// every row of the tables maps its error, wrapped, to its own non-internal
// code with a refusal status.
func TestEverySentinelHasAProblemCode(t *testing.T) {
	mapped := map[string]bool{}
	for _, table := range []string{"problemTable", "clusterErrors"} {
		for _, n := range tableEntries(t, table) {
			mapped[n] = true
		}
	}
	var all []string
	all = append(all, sentinels(t, ".", "server")...)
	all = append(all, sentinels(t, "../attest", "attest")...)
	all = append(all, sentinels(t, "../cluster", "cluster")...)
	all = append(all, sentinels(t, "../acme", "acme")...)
	if len(all) < 20 {
		t.Fatalf("found only %d sentinels: %v", len(all), all)
	}
	var missing []string
	for _, n := range all {
		if !mapped[n] && notRefusals[n] == "" {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("sentinels with no problem code (add them to problemTable or clusterErrors): %v", missing)
	}

	check := func(table string, err error, status int, code string, got *api.Problem) {
		t.Helper()
		if code == "" || code == api.CodeInternal || !(status >= 400 && status < 500 || status == http.StatusServiceUnavailable) {
			t.Errorf("%s: %v maps to %d %q", table, err, status, code)
		}
		if got.Code != code || got.Status != status {
			t.Errorf("%s: wrapped %v answers %d %s, its row says %d %s", table, err, got.Status, got.Code, status, code)
		}
	}
	for _, m := range problemTable {
		check("problemTable", m.err, m.status, m.code, problemFor(fmt.Errorf("context: %w", m.err)))
	}
	a := &Appliance{}
	for _, m := range clusterErrors {
		check("clusterErrors", m.err, m.status, m.code, a.clusterProblem(fmt.Errorf("context: %w", m.err)))
	}
	// Distinct refusals keep distinct codes in the device-facing table.
	seen := map[string]error{}
	for _, m := range problemTable {
		if prev, dup := seen[m.code]; dup && !errors.Is(m.err, prev) && !errors.Is(prev, m.err) {
			t.Errorf("code %s names both %v and %v", m.code, prev, m.err)
		}
		seen[m.code] = m.err
	}
}
